"""Read-only SQL over the results store (DuckDB views over the Parquet shards).

``connect(root)`` gives an in-memory DuckDB connection with views over the stored tables ``runs``,
``evaluations``, ``examples``, ``benign``, ``detections`` (the defence stage's scores and flags) and ``shards``,
plus ``samples`` and ``transfer`` (projections of ``evaluations``), then locks it down: file access only below the (resolved) results root
(``allowed_directories`` + ``enable_external_access=false``), no spill directory, no extension
install/load, and ``lock_configuration=true`` so user SQL cannot undo any of it. ``run_sql`` also
refuses every statement that is not a read, using DuckDB's own parser (statement types and the
``json_serialize_sql`` syntax tree), not regexes over the SQL text.

This module imports only duckdb/pyarrow (never torch or prefect) so ``adv2 sql`` starts fast.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import pyarrow as pa

from adv2core.errors import ReportError
from adv2core.store.errors import QueryError, SqlRefused, StoreError
from adv2core.store.layout import TABLE_DIRS
from adv2core.store.schemas import SCHEMAS, VIEW_STAGE

VIEWS = (*TABLE_DIRS, *VIEW_STAGE)  # the stored tables, then samples and transfer (views over evaluations)

# Table functions a user query may call. Anything else (including functions added by a DuckDB upgrade)
# is refused until someone classifies it; tests/test_store.py checks every installed one is classified.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "read_parquet", "parquet_scan", "read_single_parquet_file",
        "parquet_metadata", "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata",
        "parquet_full_metadata", "parquet_page_index", "parquet_bloom_probe",
        "read_csv", "read_csv_auto", "read_single_csv_file", "sniff_csv",
        "read_json", "read_json_auto", "read_json_objects", "read_json_objects_auto", "read_ndjson",
        "read_ndjson_auto", "read_ndjson_objects", "read_single_json_file", "json_each", "json_tree",
        "read_text", "read_blob", "read_duckdb", "glob",
        "range", "generate_series", "unnest", "repeat", "repeat_row", "summary", "query_table", "seq_scan",
        "pragma_collations", "pragma_database_size", "pragma_metadata_info", "pragma_platform",
        "pragma_show", "pragma_storage_info", "pragma_table_info", "pragma_user_agent", "pragma_version",
        "icu_calendar_names", "pg_timezone_names", "which_secret", "test_all_types", "test_vector_types",
    }
)
ALLOWED_TABLE_FUNCTION_PREFIXES = ("duckdb_",)  # read-only catalog introspection
# Known and refused: state changes, SQL given as a string (invisible to the check), raw pointers.
DENIED_TABLE_FUNCTIONS = frozenset(
    {
        "checkpoint", "force_checkpoint", "enable_logging", "disable_logging", "enable_profiling",
        "disable_profiling", "truncate_duckdb_logs", "query", "json_execute_serialized_sql",
        "arrow_scan", "arrow_scan_dumb", "pandas_scan", "python_arrow_scan", "python_map_function",
        "add_grammar_extension", "remove_grammar_extension", "create_external_resource",
        "deregister_external_resource", "destroy_external_resource", "register_external_resource",
        "register_external_resource_type",
    }
)
DENIED_SCALAR_FUNCTIONS = frozenset({"write_log", "setval", "nextval"})
READ_ONLY_PRAGMAS = frozenset(
    {
        "version", "show_tables", "show_tables_expanded", "table_info", "show", "database_size",
        "storage_info", "functions", "collations", "platform", "user_agent", "metadata_info",
        "database_list",
    }
)

_ARROW_TO_DUCK = {
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
}

_EXPLAIN = re.compile(r"\s*explain\s+(?:analyze\s+)?(.*)", re.IGNORECASE | re.DOTALL)
_PRAGMA = re.compile(r"\s*pragma\s+([a-z_][a-z0-9_]*)", re.IGNORECASE)
_MISSING_TABLE = re.compile(r"Table with name (\S+) does not exist")
_CALL = re.compile(r"\s*call\s+([a-z_][a-z0-9_]*)\s*\(", re.IGNORECASE)


def _lit(s: str) -> str:
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _resolve_root(root: str | Path) -> Path:
    p = Path(root).expanduser()
    if not p.is_dir():
        raise StoreError(f"results root {p} does not exist or is not a directory")
    p = p.resolve()  # DuckDB checks allowed_directories against resolved (symlink-free) paths
    if any(c in p.as_posix() for c in "*?[]'"):
        raise StoreError(f"results root {p} contains a character DuckDB would read as a glob or quote")
    return p


def _view_source(root: Path, table: str) -> str:
    """``read_parquet`` over the table's folder, or a typed empty relation while it has no files."""
    d = root / table
    if d.is_dir() and next(d.rglob("*.parquet"), None) is not None:
        glob = _lit(f"{d.as_posix()}/**/*.parquet")
        # hive_types_autocast=false: a model named '77' or an all-digit config hash stays VARCHAR.
        opts = "hive_partitioning=true, hive_types_autocast=false, union_by_name=true"
        return f"SELECT * FROM read_parquet({glob}, {opts})"
    cols = ", ".join(f"CAST(NULL AS {_ARROW_TO_DUCK[f.type]}) AS {f.name}" for f in SCHEMAS[table])
    return f"SELECT {cols} WHERE false"


def _derived_view(view: str) -> str:
    """``samples`` / ``transfer``: the view's columns (in its schema's order) over the stored evaluations, then
    any column a newer writer added (``union_by_name`` keeps such files readable)."""
    cols = ", ".join("source_interpreter AS interpreter" if f.name == "interpreter" and view == "samples"
                     else f.name for f in SCHEMAS[view])
    known = ", ".join(SCHEMAS["evaluations"].names)
    return f"SELECT {cols}, * EXCLUDE ({known}) FROM evaluations WHERE stage = {_lit(VIEW_STAGE[view])}"


def connect(root: str | Path, *, locked: bool = True) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with the store's views; ``locked`` (default) restricts it to reading the root.

    ``locked=False`` is for trusted internal code (e.g. report writers that COPY elsewhere).
    """
    r = _resolve_root(root)
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        for table in TABLE_DIRS:
            con.execute(f"CREATE VIEW {table} AS {_view_source(r, table)}")
        for view in VIEW_STAGE:
            con.execute(f"CREATE VIEW {view} AS {_derived_view(view)}")
        if locked:
            con.execute("SET temp_directory = ''")  # otherwise '<cwd>/.tmp' is silently allowed too
            con.execute("SET autoinstall_known_extensions = false")
            con.execute("SET autoload_known_extensions = false")
            con.execute(f"SET allowed_directories = [{_lit(r.as_posix() + '/')}]")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


# ---------------------------------------------------------------------------- statement checks
def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _table_function_allowed(name: str) -> bool:
    return name in ALLOWED_TABLE_FUNCTIONS or name.startswith(ALLOWED_TABLE_FUNCTION_PREFIXES)


def _check_select(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Walk DuckDB's own syntax tree of a SELECT and refuse side-effecting functions."""
    raw = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [query]).fetchall()[0][0]
    tree = json.loads(raw)
    if tree.get("error"):
        raise SqlRefused(f"statement could not be checked: {tree.get('error_message', 'unknown error')}")
    for node in _walk(tree.get("statements", [])):
        if node.get("type") == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
            name = str(node["function"].get("function_name", "")).lower()
            if not _table_function_allowed(name):
                raise SqlRefused(f"table function {name}() is not allowed in read-only SQL")
        elif node.get("class") == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name in DENIED_SCALAR_FUNCTIONS or name in DENIED_TABLE_FUNCTIONS:
                raise SqlRefused(f"function {name}() is not allowed in read-only SQL")


def _check_statement(con: duckdb.DuckDBPyConnection, stmt: Any, depth: int = 0) -> None:
    kind = stmt.type
    text = stmt.query
    T = duckdb.StatementType
    if kind == T.SELECT:
        _check_select(con, text)
    elif kind == T.EXPLAIN and depth == 0:
        m = _EXPLAIN.match(text)
        inner = duckdb.extract_statements(m.group(1)) if m else []
        if len(inner) != 1:
            raise SqlRefused("only EXPLAIN [ANALYZE] of a single SELECT is allowed")
        if inner[0].type != T.SELECT:
            raise SqlRefused(f"only EXPLAIN of a SELECT is allowed, not of {inner[0].type.name}")
        _check_statement(con, inner[0], depth + 1)
    elif kind == T.PRAGMA:
        m = _PRAGMA.match(text)
        if not m or m.group(1).lower() not in READ_ONLY_PRAGMAS:
            raise SqlRefused("only read-only PRAGMAs (version, show_tables, table_info, ...) are allowed")
    elif kind == T.CALL:
        m = _CALL.match(text)
        if not m or not _table_function_allowed(m.group(1).lower()):
            raise SqlRefused("only CALL of read-only table functions is allowed")
    else:
        raise SqlRefused(f"{kind.name} statements are not allowed: the results store is read-only")


def check_sql(sql: str) -> list[str]:
    """Parse ``sql`` with DuckDB and return its statements if all are reads, else raise SqlRefused."""
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from None
    if not stmts:
        raise SqlRefused("empty SQL")
    con = duckdb.connect(":memory:")
    try:
        for s in stmts:
            _check_statement(con, s)
    finally:
        con.close()
    return [s.query for s in stmts]


#: A file listed by a view's glob vanished before DuckDB opened it: a unit was being rewritten (its old
#: manifest is dropped first) or rolled back after a failed write. Transient by construction.
_VANISHED = re.compile(r"No such file or directory|No files found that match the pattern")
#: Re-plans after a vanished file (each re-globs): the windows are milliseconds; the backoff sums to ~10 s
#: (6 retries, ~0.6 s, ran out twice in a row in the full suite on 2026-12-01 while a writer rewrote units
#: in a tight loop; the cause of the longer windows there is not established).
VANISHED_RETRIES = 10


def _vanished_under(root: Path, exc: BaseException) -> bool:
    text = str(exc)
    return bool(_VANISHED.search(text)) and root.as_posix() in text


def run_sql(root: str | Path, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pa.Table:
    """Run user SQL read-only against the store; returns the last statement's result as Arrow.

    Raises SqlRefused for writes, configuration changes or file access outside the root, QueryError
    for DuckDB errors (syntax, unknown column, ...). A read that loses a race with a writer replacing or
    removing a unit's file (DuckDB listed it, then it was gone) is re-planned on a fresh connection,
    so readers running during a run never see that as an error.
    """
    queries = check_sql(sql)
    if params is not None and len(queries) != 1:
        raise SqlRefused("parameters are only supported with a single statement")
    r = _resolve_root(root)
    for attempt in range(VANISHED_RETRIES + 1):
        try:
            return _run_once(r, queries, params)
        except duckdb.IOException as exc:
            if attempt < VANISHED_RETRIES and _vanished_under(r, exc):
                time.sleep(0.01 * 2 ** attempt)
                continue
            raise QueryError(_first_line(exc)) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _run_once(root: Path, queries: list[str], params: Sequence[Any] | dict[str, Any] | None) -> pa.Table:
    """One attempt on a fresh locked connection; duckdb.IOException is left to the caller's retry."""
    con = connect(root)
    try:
        result = pa.table({})
        for q in queries:
            rel = con.sql(q, params=params) if params is not None else con.sql(q)
            result = rel.to_arrow_table() if rel is not None else pa.table({})
        return result
    except duckdb.PermissionException as exc:
        why = _first_line(exc)
        raise SqlRefused(f"access refused: only files below the results root can be read ({why})") from None
    except duckdb.CatalogException as exc:
        # With external access off, DuckDB silently skips the file replacement scan for a path
        # outside the allowed folder ("FROM '/etc/passwd'") and reports a missing table instead.
        m = _MISSING_TABLE.search(str(exc))
        if m and ("/" in m.group(1) or "." in m.group(1)):
            raise SqlRefused(f"access refused: {m.group(1)} is not a view, and only files below the results "
                             f"root can be read") from None
        raise QueryError(_first_line(exc)) from None
    except duckdb.IOException:
        raise
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from None
    finally:
        con.close()


# ---------------------------------------------------------------------------------------- runs
def _run_rows(con: Any) -> list[dict[str, Any]]:
    cur = con.execute("SELECT * FROM runs ORDER BY started_at DESC, run_id DESC")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def resolve_run(root: str | Path, run_id: str, con: Any = None) -> dict[str, Any]:
    """The ``runs`` row of ``run_id`` in results root ``root``, or the most recently started run for
    ``'latest'``; :class:`~adv2core.errors.ReportError` (one line) when there is none. ``con``: an open
    :func:`connect` connection to ``root`` (default: a connection of its own)."""
    if con is None:
        own = connect(root)
        try:
            return resolve_run(root, run_id, own)
        finally:
            own.close()
    runs = _run_rows(con)
    if not runs:
        raise ReportError(f"no runs in results root {root}: start one with `adv2 run` or pass --results")
    if run_id == "latest":
        return runs[0]
    for r in runs:
        if r["run_id"] == run_id:
            return r
    known = ", ".join(r["run_id"] for r in runs[:5]) + (", ..." if len(runs) > 5 else "")
    raise ReportError(f"unknown run id {run_id!r} in {root} (recent: {known}; see `adv2 runs`)")
