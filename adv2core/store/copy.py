"""Copy-forward: a complete unit stored under one config hash, rewritten as the same unit of another.

A unit's manifest holds its *unit key* (:mod:`adv2core.config.unitkeys`: the hash of exactly the config
subset its rows depend on). When a new config needs a unit whose key matches a complete unit of another
config, :func:`copy_unit` writes it under the new config hash instead of recomputing it:

* its Parquet rows are read, their ``config_hash`` and ``run_id`` columns set to the new config and the
  copying run (so every row of a config hash belongs to one of its runs), everything else kept as
  computed (metrics, ``seconds``, ``code_version``); the file is written to the new unit's Hive path;
* its ``.npz`` arrays (no config column in them) are hard-linked to the new path (copied where the
  filesystem refuses links); the stores writes files by atomic replacement, never in place, so a link
  never changes under its reader;
* its manifest is written last, atomically, with the unit key and ``copied_from`` (source config hash)
  and ``copied_from_run`` (the run id in the source manifest): the lineage stays queryable in ``shards``.

A unit whose manifest records refused interpreters (``refused``: a transfer unit written under
``gates.on_refused: skip`` has no rows under them, and no unit key covers refusals) is never a source.

Same protocol as :meth:`ResultStore.write_shard`: old manifest dropped first, manifest last, files
removed on failure, so a unit is complete exactly when its manifest is.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from adv2core.errors import one_line
from adv2core.store import layout
from adv2core.store.errors import StoreError
from adv2core.store.layout import ShardUnit
from adv2core.store.schemas import conform_table, table_from_rows
from adv2core.store.writer import _UNIT_FIELDS, ResultStore, _fsync_dir, atomic_write_bytes, manifest_rows, parquet_bytes

__all__ = ["copy_unit", "keyed_units"]



def keyed_units(store: ResultStore, keys: set[str], exclude_config: str) -> dict[str, list[dict[str, Any]]]:
    """Manifest rows of other configs whose unit key is in ``keys``: key -> rows (completeness is
    checked by :func:`copy_unit`). One DuckDB read over every manifest of the store."""
    d = layout.table_dir(store.root, "shards")
    if not keys or not d.is_dir() or next(d.glob("config_hash=*/*.parquet"), None) is None:
        return {}
    import duckdb

    try:
        rows = manifest_rows(d / "config_hash=*" / "*.parquet", "unit_key")
    except duckdb.Error:  # a damaged manifest somewhere: no copy-forward this time (recompute)
        return {}
    # a unit written while interpreters were refused (``refused``) lacks their rows: never a source
    rows = [r for r in rows if r.get("refused") is None]
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["unit_key"] in keys and r["config_hash"] != exclude_config:
            out.setdefault(r["unit_key"], []).append(r)
    for lst in out.values():  # originals first, then the most recent
        lst.sort(key=lambda r: (r.get("copied_from") is not None, -r["completed_at"].timestamp()))
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to (or else a copy of) ``src``, atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}{layout.TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dst.parent)


def copy_unit(store: ResultStore, source: dict[str, Any], dst: ShardUnit, run_id: str) -> bool:
    """Write ``dst`` from the complete unit of manifest row ``source`` (same unit key); False when the
    source is no longer complete (nothing written). StoreError (one line) on a failed write."""
    try:
        src = ShardUnit(**{k: source[k] for k in _UNIT_FIELDS})
    except (KeyError, ValueError, TypeError):
        return False
    if (src.stage, src.model, src.interpreter, src.attack, src.shard, src.num_shards) != \
            (dst.stage, dst.model, dst.interpreter, dst.attack, dst.shard, dst.num_shards):
        raise StoreError(f"unit key of {dst} matched a different unit {src}")
    if not store.is_complete(src):
        return False
    files = {f["path"]: f for f in json.loads(source["files"])}
    src_table = layout.table_path(store.root, src).relative_to(store.root).as_posix()
    src_arrays = layout.arrays_path(store.root, src).relative_to(store.root).as_posix()
    if set(files) - {src_table, src_arrays} or src_table not in files:
        return False  # an unexpected layout: recompute rather than guess
    table_dst = layout.table_path(store.root, dst)
    arrays_dst = layout.arrays_path(store.root, dst)
    manifest = layout.manifest_path(store.root, dst)
    targets = [table_dst, arrays_dst]
    try:
        store._check_num_shards_consistent(dst)
        manifest.unlink(missing_ok=True)
        table = pq.ParquetFile(store.root / src_table).read()
        table = table.set_column(table.schema.get_field_index("config_hash"), "config_hash",
                                 pa.array([dst.config_hash] * table.num_rows, pa.string()))
        table = table.set_column(table.schema.get_field_index("run_id"), "run_id",
                                 pa.array([run_id] * table.num_rows, pa.string()))
        table = conform_table(dst.table, table)
        store._check_rows_match_unit(dst, table)
        data = parquet_bytes(table)
        out = []
        if src_arrays in files:
            _link_or_copy(store.root / src_arrays, arrays_dst)
            out.append({**files[src_arrays], "path": arrays_dst.relative_to(store.root).as_posix()})
        else:  # readers look for a unit's arrays by path: none may be left from an earlier write
            arrays_dst.unlink(missing_ok=True)
        atomic_write_bytes(table_dst, data)
        out.insert(0, {"path": table_dst.relative_to(store.root).as_posix(),
                       "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": table.num_rows})
        row = {k: getattr(dst, k) for k in _UNIT_FIELDS}
        row.update(run_id=run_id, rows=table.num_rows, files=json.dumps(out, sort_keys=True),
                   seconds=source.get("seconds"), completed_at=datetime.now(timezone.utc),
                   unit_key=source["unit_key"], copied_from=src.config_hash, copied_from_run=source.get("run_id"))
        atomic_write_bytes(manifest, parquet_bytes(table_from_rows("shards", [row])))
    except StoreError:
        store._rollback(targets)
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        store._rollback(targets)
        raise StoreError(f"copying {src.shard_name} of {dst.model}/{dst.interpreter}/{dst.attack} from config "
                         f"{src.config_hash} failed: {one_line(exc, typed=False)}") from None
    return True
