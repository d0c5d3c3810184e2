"""Atomic, resumable writes of shard-units into the results store.

Protocol per unit (see docs/store.md):

1. drop the unit's old manifest (a rewrite makes the unit incomplete until it is finished again);
2. write each file as ``<final>.tmp-<pid>-<random>`` in the final folder, flush + fsync, ``os.replace``
   onto the final name, fsync the folder. Temp names never end in ``.parquet``/``.npz``, so DuckDB's
   ``**/*.parquet`` glob never sees a partial file;
3. write the one-row manifest (sha256, bytes and rows of every file) last, atomically as well.

A unit is complete iff its manifest exists and every listed file matches. On any failure the unit's
files are removed (it then has neither manifest nor rows), so nothing half-done carries a final name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from adv2core.errors import one_line
from adv2core.store import layout
from adv2core.store.arrays import npz_bytes
from adv2core.store.errors import StoreError
from adv2core.store.layout import ShardUnit
from adv2core.store.schemas import SCHEMA_VERSION, conform_table, table_from_rows, to_evaluations

COMPRESSION = "zstd"


def _fsync_dir(d: Path) -> None:
    """Persist a rename (best effort: some filesystems refuse fsync on a directory)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{layout.TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialise a table (zstd) in memory, so its sha256 is known before it touches the disk."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression=COMPRESSION)
    return buf.getvalue().to_pybytes()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ResultStore:
    """Writer for one results root; safe to use from several processes on different units at once."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not a writable directory")
            probe = self.root / f".write-probe{layout.TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"results root {self.root} is not writable ({one_line(exc, typed=False)})") from None
        self.root = self.root.resolve()

    # ------------------------------------------------------------------ shards
    def write_shard(
        self,
        unit: ShardUnit,
        tables: dict[str, pa.Table | list[dict[str, Any]]],
        arrays: dict[str, np.ndarray] | None = None,
        *,
        run_id: str | None = None,
        seconds: float | None = None,
        unit_key: str | None = None,
        refused: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Write one unit's rows (keyed by :attr:`ShardUnit.rows_table`: ``samples``/``transfer``/``detections``
        for stage attack/transfer/defence; an Arrow table or row dicts), its optional arrays, and finally its
        manifest row, which is returned. Rows of the attack and transfer stages are validated in their view's
        shape and stored as ``evaluations`` rows (:func:`~adv2core.store.schemas.to_evaluations`).

        ``run_id`` defaults to the single run id found in the rows; ``unit_key`` (the unit's dependency key,
        :mod:`adv2core.config.unitkeys`) goes into the manifest so a later config can copy it; ``refused`` (the
        interpreters refused for the unit's model at preparation, which its rows lack) too, as a JSON list. Raises StoreError (one line)
        on a bad table or a failed write; ValueError-type problems in the rows become StoreError too.
        """
        want = unit.rows_table
        if set(tables) != {want}:
            raise StoreError(f"stage {unit.stage!r} writes exactly the table {want!r}, got {sorted(tables)}")
        try:
            given = tables[want]
            table = table_from_rows(want, given) if isinstance(given, list) else conform_table(want, given)
            if want != unit.table:
                table = to_evaluations(want, table)
        except ValueError as exc:
            raise StoreError(f"{unit.shard_name} of {unit.model}/{unit.interpreter}/{unit.attack}: {exc}") from None
        self._check_rows_match_unit(unit, table)
        run_id = self._resolve_run_id(table, run_id)
        self._check_num_shards_consistent(unit)

        manifest = layout.manifest_path(self.root, unit)
        targets = [layout.table_path(self.root, unit)] + ([layout.arrays_path(self.root, unit)] if arrays else [])
        files: list[dict[str, Any]] = []
        try:
            manifest.unlink(missing_ok=True)
            payloads: list[tuple[Path, bytes, int | None]] = []
            if arrays:
                try:
                    data, n = npz_bytes(arrays)
                except ValueError as exc:
                    raise StoreError(f"arrays of {unit.shard_name}: {exc}") from None
                payloads.append((layout.arrays_path(self.root, unit), data, n))
            payloads.append((layout.table_path(self.root, unit), parquet_bytes(table), table.num_rows))
            for path, data, n in payloads:
                atomic_write_bytes(path, data)
                files.append(
                    {
                        "path": path.relative_to(self.root).as_posix(),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "bytes": len(data),
                        "rows": n,
                    }
                )
            row = {
                **{k: v for k, v in asdict(unit).items()},
                "run_id": run_id,
                "rows": table.num_rows,
                "files": json.dumps(files, sort_keys=True),
                "seconds": None if seconds is None else float(seconds),
                "completed_at": datetime.now(timezone.utc),
                "unit_key": unit_key,
                "refused": json.dumps(sorted(refused)) if refused else None,
            }
            atomic_write_bytes(manifest, parquet_bytes(table_from_rows("shards", [row])))
        except StoreError:
            self._rollback(targets)
            raise
        except (OSError, pa.ArrowException) as exc:
            self._rollback(targets)
            raise StoreError(f"writing {unit.shard_name} of {unit.model}/{unit.interpreter}/{unit.attack} "
                             f"failed: {one_line(exc, typed=False)}") from None
        return row

    @staticmethod
    def _rollback(paths: list[Path]) -> None:
        """Remove the unit's files (new or older versions): a unit without manifest has no data either."""
        for p in paths:
            try:
                p.unlink()
            except OSError:
                pass

    @staticmethod
    def _check_rows_match_unit(unit: ShardUnit, table: pa.Table) -> None:
        """Hive folder values override file columns in DuckDB, so rows must agree with the path."""
        expected: dict[str, Any] = {**unit.partition_values(), "shard": unit.shard, "num_shards": unit.num_shards}
        if unit.stage == "defence":  # one unit per (model, detector): its rows have no shard columns
            expected = unit.partition_values()
        for col, val in expected.items():
            seen = set(table.column(col).unique().to_pylist())
            if seen - {val}:
                raise StoreError(f"rows of {unit.shard_name} have {col}={sorted(map(str, seen))}, "
                                 f"but the unit says {val!r}")

    @staticmethod
    def _resolve_run_id(table: pa.Table, run_id: str | None) -> str:
        ids = set(table.column("run_id").unique().to_pylist())
        if run_id is None:
            if len(ids) > 1:
                raise StoreError(f"rows carry several run ids {sorted(ids)}; pass run_id=")
            run_id = ids.pop() if ids else ""
        elif ids - {run_id}:
            raise StoreError(f"rows carry run id(s) {sorted(ids)} but run_id={run_id!r} was given")
        return run_id

    def _check_num_shards_consistent(self, unit: ShardUnit) -> None:
        """Refuse mixing shard counts for one (config, stage, model, interp, attack): rows would double."""
        d = layout.manifest_dir(self.root, unit.config_hash)
        if not d.is_dir():
            return
        pattern = layout.manifest_glob(unit.stage, unit.model, unit.interpreter, unit.attack)
        suffix = f"-of-{unit.num_shards:05d}.parquet"
        for p in d.glob(pattern):
            if not p.name.endswith(suffix):
                raise StoreError(f"{unit.model}/{unit.interpreter}/{unit.attack} of config {unit.config_hash} "
                                 f"already has shards from another shard count ({p.name}); "
                                 f"keep num_shards or use a new results root")

    # ------------------------------------------------------------------ completeness
    def _files_ok(self, files_json: str, full: bool) -> bool:
        try:
            files = json.loads(files_json)
        except ValueError:
            return False
        for f in files:
            p = (self.root / f["path"]).resolve()
            if not p.is_relative_to(self.root):
                return False
            try:
                if p.stat().st_size != f["bytes"]:
                    return False
            except OSError:
                return False
            if full and sha256_file(p) != f["sha256"]:
                return False
        return True

    def is_complete(self, unit: ShardUnit, *, full: bool = False) -> bool:
        """Manifest row present and every listed file present with the recorded size (``full``: sha256)."""
        path = layout.manifest_path(self.root, unit)
        try:
            rows = pq.read_table(path).to_pylist()
        except (OSError, pa.ArrowException):
            return False
        if len(rows) != 1:
            return False
        row = rows[0]
        try:
            if ShardUnit(**{k: row[k] for k in ShardUnit.__dataclass_fields__}) != unit:
                return False
        except (KeyError, ValueError):
            return False
        return self._files_ok(row["files"], full)

    def completed_units(self, config_hash: str, *, stage: str | None = None, full: bool = False) -> set[ShardUnit]:
        """All complete units of a config, from one read of its manifest folder plus a file check."""
        d = layout.manifest_dir(self.root, config_hash)
        if not d.is_dir():
            return set()
        import duckdb  # deferred: writers that never ask need not pay the import

        glob = (d / "*.parquet").as_posix().replace("'", "''")
        con = duckdb.connect()
        try:
            rows = con.sql(
                f"SELECT config_hash, stage, model, interpreter, attack, shard, num_shards, files "
                f"FROM read_parquet('{glob}', union_by_name=true)"
            ).fetchall()
        except duckdb.IOException:  # folder exists but holds no manifest yet
            return set()
        except duckdb.Error:  # a damaged manifest file: fall back to checking each one on its own
            return self._completed_units_slow(d, config_hash, stage, full)
        finally:
            con.close()
        out = set()
        for config, stg, model, interp, attack, shard, n, files in rows:
            if stage is not None and stg != stage:
                continue
            try:
                unit = ShardUnit(config, stg, model, interp, attack, int(shard), int(n))
            except ValueError:
                continue
            if self._files_ok(files, full):
                out.add(unit)
        return out

    def recorded_refusals(self, config_hash: str) -> dict[ShardUnit, frozenset[str]]:
        """Units of a config whose manifest records refused interpreters (``refused``, see
        :meth:`write_shard`) -> those interpreters. One DuckDB read; completeness is not checked here."""
        d = layout.manifest_dir(self.root, config_hash)
        if not d.is_dir() or next(d.glob("*.parquet"), None) is None:
            return {}
        import duckdb

        try:
            rows = manifest_rows(d / "*.parquet", "refused")
        except duckdb.Error:  # a damaged manifest: the slow path reads each one
            rows = []
            for p in d.glob("*.parquet"):
                try:
                    rows.append(pq.read_table(p).to_pylist()[0])
                except (OSError, pa.ArrowException, IndexError):
                    continue
        out: dict[ShardUnit, frozenset[str]] = {}
        for r in rows:
            if not r.get("refused"):
                continue
            try:
                unit = ShardUnit(*(r[k] for k in _UNIT_FIELDS[:5]), int(r["shard"]), int(r["num_shards"]))
                names = frozenset(json.loads(r["refused"]))
            except (KeyError, ValueError, TypeError):
                continue
            if unit.config_hash == config_hash:
                out[unit] = names
        return out

    def _completed_units_slow(self, d: Path, config_hash: str, stage: str | None, full: bool) -> set[ShardUnit]:
        out = set()
        for p in d.glob("*.parquet"):
            try:
                row = pq.read_table(p).to_pylist()[0]
                unit = ShardUnit(**{k: row[k] for k in ShardUnit.__dataclass_fields__})
            except (OSError, pa.ArrowException, IndexError, KeyError, ValueError):
                continue
            if unit.config_hash == config_hash and (stage is None or unit.stage == stage) and \
                    self.is_complete(unit, full=full):
                out.add(unit)
        return out

    # ------------------------------------------------------------------ runs
    def write_run(self, row: dict[str, Any]) -> Path:
        """Write (or rewrite, e.g. with status/ended_at at the end) the one-row file of a run."""
        row = {"schema_version": SCHEMA_VERSION, "results_root": str(self.root), **row}
        try:
            table = table_from_rows("runs", [row])
            path = layout.run_path(self.root, row["run_id"])
        except ValueError as exc:
            raise StoreError(f"run row: {exc}") from None
        try:
            atomic_write_bytes(path, parquet_bytes(table))
        except OSError as exc:
            raise StoreError(f"writing run {row['run_id']} failed: {one_line(exc, typed=False)}") from None
        return path

    # ------------------------------------------------------------------ maintenance
    def cleanup_temp(self, older_than_s: float = 3600.0) -> list[Path]:
        """Remove temp files left by crashed writers, older than ``older_than_s`` (live writers are younger)."""
        cutoff = time.time() - older_than_s
        removed = []
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                if not layout.is_temp_name(name):
                    continue
                p = Path(dirpath) / name
                try:
                    if p.stat().st_mtime < cutoff:
                        p.unlink()
                        removed.append(p)
                except FileNotFoundError:
                    pass
        return removed


_UNIT_FIELDS = tuple(ShardUnit.__dataclass_fields__)


def manifest_rows(glob: str | Path, column: str) -> list[dict[str, Any]]:
    """Manifest rows (``shards`` files) matching ``glob`` whose ``column`` is set; none when no manifest has
    that column (all written before it existed). One DuckDB read; a damaged file raises ``duckdb.Error``."""
    import duckdb

    lit = Path(glob).as_posix().replace("'", "''")
    con = duckdb.connect()
    try:
        rel = con.sql(f"SELECT * FROM read_parquet('{lit}', union_by_name=true, hive_partitioning=false)")
        if column not in rel.columns:
            return []
        return rel.filter(f"{column} IS NOT NULL").fetch_arrow_table().to_pylist()
    finally:
        con.close()
