"""Helpers shared by the reliability tests (``tests/test_reliability_*.py``).

Why a shared module: every reliability test compares a disturbed run (killed, concurrent, fed bad
input) with what an undisturbed run of the same config stores. The undisturbed *baseline* is computed
once per test session (in-process, inline engine) and reused, and the checks (exact counts, duplicate
keys, files DuckDB would read) are written once, against the store's public surface only.

The run size is the smallest smoke run that still touches every stage: one model, Grad + CAM, PGD +
ADV², cross-evaluation on, 4 images in 4 shards, 2 steps per stage, one torch thread (so rows are
bit-identical across processes).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import duckdb
import pyarrow.parquet as pq

from adv2core.config import ResolvedConfig, load_config
from adv2core.store import ResultStore, ShardUnit, run_sql
from adv2core.store.layout import TEMP_MARKER, TABLE_DIRS, is_temp_name, manifest_dir

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ADV2 = str(Path(sys.executable).parent / "adv2")

#: Overrides of the smoke preset used by the reliability tests (pipeline.* keys are not hashed).
TINY: tuple[str, ...] = (
    "data.num_images=4", "data.shard_size=1", "attacks.step_cap=2",
    "pipeline.torch_threads=1", "pipeline.report=false", "pipeline.retries=0",
)

#: The key of one row per table (what "a duplicate" means).
KEYS = {
    "samples": "config_hash, model, interpreter, attack, image_id",
    "examples": "config_hash, model, attack, image_id",
    "benign": "config_hash, model, interpreter, image_id",
    "transfer": "config_hash, model, attack, source_interpreter, eval_interpreter, image_id",
    "shards": "config_hash, stage, model, interpreter, attack, shard",
}
#: Columns that legitimately differ between two runs computing the same rows.
VOLATILE = {"run_id", "seconds", "code_version", "completed_at", "files"}

UnitKey = tuple[str, str, str, str, int]  # (stage, model, interpreter, attack, shard)


# ---------------------------------------------------------------------------------------- configs
def tiny_config(root: Path, *extra: str) -> ResolvedConfig:
    return load_config("smoke", overrides=[*TINY, f"pipeline.results={root}", *extra]).resolve()


def run_args(root: Path, *extra: str, engine: str = "inline") -> list[str]:
    """``adv2 run`` arguments for the tiny config into ``root`` (one JSON summary on stdout)."""
    args = ["run", "--preset", "smoke", "--results", str(root), "--json", "--no-progress", "--engine", engine]
    for o in (*TINY, *extra):
        args += ["--set", o]
    return args


def expected_counts(rc: ResolvedConfig) -> dict[str, int]:
    """Rows and units a complete run must store, computed from the config alone."""
    b = rc.bench
    m, i, a, s = len(b.models.names), len(b.interpreters.names), len(b.attacks.names), rc.num_shards
    x = len(rc.cross_eval_attacks)
    f = len(_free(rc))
    n = b.data.num_images
    return {"samples": m * i * a * n, "transfer": m * x * i * i * n, "examples": m * f * n,
            "examples_units": m * f * s, "benign_units": m * i * s, "attack_units": m * i * a * s, "transfer_units": m * x * i * s}


def _free(rc: ResolvedConfig) -> list[str]:
    """Attacks that ignore the interpreter: one ``examples`` unit per (model, shard)."""
    return [a for a in rc.bench.attacks.names if a in ("pgd", "stadv")]


def all_units(rc: ResolvedConfig) -> set[UnitKey]:
    b = rc.bench
    out: set[UnitKey] = set()
    for m in b.models.names:
        for s in range(rc.num_shards):
            out |= {("examples", m, "none", a, s) for a in _free(rc)}
            out |= {("benign", m, i, "none", s) for i in b.interpreters.names}
            for i in b.interpreters.names:
                out |= {("attack", m, i, a, s) for a in b.attacks.names}
                out |= {("transfer", m, i, a, s) for a in rc.cross_eval_attacks}
    return out


def tasks_for(missing: Iterable[UnitKey]) -> int:
    """Shard tasks a resume must run for these missing units: one per attack unit, one per (model, shard)
    with a missing transfer unit (the transfer task writes all missing units of its shard)."""
    missing = list(missing)
    return (sum(1 for u in missing if u[0] in ("benign", "examples", "attack"))
            + len({(u[1], u[4]) for u in missing if u[0] == "transfer"}))


# ---------------------------------------------------------------------------------------- store checks
def counts(root: Path, config_hash: str) -> dict[str, int]:
    q = ("SELECT (SELECT count(*) FROM samples WHERE config_hash = $h) AS samples, "
         "(SELECT count(*) FROM transfer WHERE config_hash = $h) AS transfer, "
         "(SELECT count(*) FROM examples WHERE config_hash = $h) AS examples, "
         "(SELECT count(*) FROM shards WHERE config_hash = $h AND stage = 'examples') AS examples_units, "
         "(SELECT count(*) FROM shards WHERE config_hash = $h AND stage = 'benign') AS benign_units, "
         "(SELECT count(*) FROM shards WHERE config_hash = $h AND stage = 'attack') AS attack_units, "
         "(SELECT count(*) FROM shards WHERE config_hash = $h AND stage = 'transfer') AS transfer_units")
    return run_sql(root, q, {"h": config_hash}).to_pylist()[0]


def duplicate_keys(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Rows whose key occurs more than once, per table (``GROUP BY key HAVING count(*) > 1``)."""
    out = {}
    for table, key in KEYS.items():
        out[table] = run_sql(root, f"SELECT {key}, count(*) AS n FROM {table} GROUP BY {key} "
                                   f"HAVING count(*) > 1").to_pylist()
    return {t: rows for t, rows in out.items() if rows}


def comparable_rows(root: Path, table: str, config_hash: str) -> list[dict[str, Any]]:
    """Every row of a config in key order, without the columns that differ between runs by design."""
    cols = [c for c in run_sql(root, f"SELECT * FROM {table} LIMIT 0").column_names if c not in VOLATILE]
    return run_sql(root, f"SELECT {', '.join(cols)} FROM {table} WHERE config_hash = ? ORDER BY {KEYS[table]}",
                   [config_hash]).to_pylist()


def manifests(root: Path, config_hash: str) -> dict[UnitKey, tuple[str, Any]]:
    """(stage, model, interpreter, attack, shard) -> (run id that wrote it, completed_at), from the shards view."""
    if not manifest_dir(root, config_hash).is_dir():
        return {}
    rows = run_sql(root, "SELECT stage, model, interpreter, attack, shard, run_id, completed_at FROM shards "
                         "WHERE config_hash = ?", [config_hash]).to_pylist()
    return {(r["stage"], r["model"], r["interpreter"], r["attack"], r["shard"]): (r["run_id"], r["completed_at"])
            for r in rows}


def unit_count(root: Path, config_hash: str) -> int:
    """Manifest files present (cheap: a directory listing, for polling while a run is going)."""
    d = manifest_dir(root, config_hash)
    try:
        return sum(1 for n in os.listdir(d) if n.endswith(".parquet"))
    except FileNotFoundError:
        return 0


def duckdb_visible_files(root: Path) -> list[Path]:
    """Exactly the files the store's views read: DuckDB's own glob ``<root>/<table>/**/*.parquet``."""
    con = duckdb.connect()
    try:
        out: list[Path] = []
        for table in TABLE_DIRS:
            pattern = (Path(root).resolve() / table).as_posix() + "/**/*.parquet"
            out += [Path(r[0]) for r in con.execute("SELECT file FROM glob(?)", [pattern]).fetchall()]
        return out
    finally:
        con.close()


def check_files(root: Path) -> list[Path]:
    """Assert that every file DuckDB would read is a complete Parquet file with a final name; return the
    temp files left behind (allowed: crashed writers leave them, and no glob reads them)."""
    for p in duckdb_visible_files(root):
        assert TEMP_MARKER not in p.name, f"DuckDB would read a temp file: {p}"
        pq.read_metadata(p)  # raises on a truncated/partial file (no valid footer)
    leftovers = [p for p in Path(root).rglob("*") if is_temp_name(p.name)]
    assert not [p for p in leftovers if p.name.endswith((".parquet", ".npz"))]
    return leftovers


def check_committed_units(root: Path, config_hash: str) -> None:
    """Every unit with a manifest is complete, byte for byte (sha256), and holds the rows it claims."""
    store = ResultStore(root)
    listed = manifests(root, config_hash)
    complete = {(u.stage, u.model, u.interpreter, u.attack, u.shard)
                for u in store.completed_units(config_hash, full=True)}
    assert complete == set(listed), f"manifests without complete files: {sorted(set(listed) - complete)}"


def unit(rc: ResolvedConfig, key: UnitKey) -> ShardUnit:
    return ShardUnit(rc.config_hash, key[0], key[1], key[2], key[3], key[4], rc.num_shards)


# ---------------------------------------------------------------------------------------- baseline
_BASELINES: dict[tuple[str, ...], tuple[ResolvedConfig, Path, dict[str, Any]]] = {}


def baseline(*extra: str) -> tuple[ResolvedConfig, Path, dict[str, Any]]:
    """An uninterrupted inline run of the tiny config (plus ``extra``), computed once per session.

    Callers must treat its root as read-only (copy it before writing).
    """
    key = tuple(extra)
    if key not in _BASELINES:
        from flows.benchmark import run_benchmark

        root = Path(tempfile.mkdtemp(prefix="adv2-baseline-"))
        atexit.register(shutil.rmtree, root, True)
        rc = tiny_config(root, *extra)
        summary = run_benchmark(rc, engine="inline")
        assert summary["status"] == "completed", summary
        assert counts(root, rc.config_hash) == expected_counts(rc)
        _BASELINES[key] = (rc, root, summary)
    return _BASELINES[key]


# ---------------------------------------------------------------------------------------- processes
#: ``python -c`` bootstrap that runs the real CLI with test switches in the store writer (only the
#: writer module sees the ``os`` proxy):
#: * ADV2_TEST_KILL_AT_REPLACE=N: the N-th ``os.replace`` SIGKILLs the process just before (or, with
#:   ADV2_TEST_KILL_AFTER=1, just after) its rename;
#: * ADV2_TEST_BARRIER=DIR:K: before its first manifest rename the process registers in DIR and waits
#:   until K processes have, so K runs are provably writing at the same time.
TEST_HOOK = r"""
import os, signal, sys, time
import adv2core.store.writer as _w
_n = int(os.environ.get("ADV2_TEST_KILL_AT_REPLACE") or 0)
_after = os.environ.get("ADV2_TEST_KILL_AFTER") == "1"
_barrier = os.environ.get("ADV2_TEST_BARRIER")
class _OS:
    calls = 0
    waited = False
    def __getattr__(self, name):
        return getattr(os, name)
    def replace(self, src, dst):
        _OS.calls += 1
        if _barrier and not _OS.waited and "/shards/" in str(dst):
            _OS.waited = True
            d, k = _barrier.rsplit(":", 1)
            open(os.path.join(d, str(os.getpid())), "w").close()
            t0 = time.monotonic()
            while len(os.listdir(d)) < int(k) and time.monotonic() - t0 < 300:
                time.sleep(0.01)
        if _OS.calls == _n:
            if _after:
                os.replace(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)
        return os.replace(src, dst)
_w.os = _OS()
sys.argv[0] = "adv2"
from adv2cli.main import app
app()
"""


def start_cli(args: list[str], log_dir: Path, *, env: dict[str, str] | None = None,
              kill_at_replace: int | None = None, kill_after: bool = False, barrier: str | None = None,
              drop_env: Iterable[str] = ()) -> subprocess.Popen:
    """Start ``adv2 <args>`` in its own session (stdout/stderr to files: no pipe can fill up)."""
    e = {**os.environ, **(env or {})}
    for k in drop_env:
        e.pop(k, None)
    if kill_at_replace is not None or barrier is not None:
        e["ADV2_TEST_KILL_AT_REPLACE"] = str(kill_at_replace or 0)
        e["ADV2_TEST_KILL_AFTER"] = "1" if kill_after else "0"
        e["ADV2_TEST_BARRIER"] = barrier or ""
        cmd = [PY, "-c", TEST_HOOK, *args]
    else:
        cmd = [ADV2, *args]
    log_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(log_dir.glob("*.out")))
    out = open(log_dir / f"{n}.out", "w")
    err = open(log_dir / f"{n}.err", "w")
    try:
        return subprocess.Popen(cmd, env=e, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO,
                                start_new_session=True)
    finally:
        out.close()
        err.close()


def output(log_dir: Path, proc_index: int) -> tuple[str, str]:
    return (log_dir / f"{proc_index}.out").read_text(), (log_dir / f"{proc_index}.err").read_text()


def sigkill(proc: subprocess.Popen) -> int:
    """SIGKILL the run's process (only it: children must cope on their own), then reap it."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait(timeout=60)


def session_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process remains in process group ``pgid``.

    Zombies do not count: an orphan that died is reparented to init, which may reap it late.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - non-Linux: signal 0 (zombies count as alive)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def reap_session(pgid: int) -> None:
    """Clean up whatever is left of a test's process session (never anything else)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait_for_units(root: Path, config_hash: str, k: int, proc: subprocess.Popen, timeout: float = 240.0) -> int:
    """Poll the manifest folder until ``k`` units exist; returns the count (or -1 if the run exited)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        n = unit_count(root, config_hash)
        if n >= k:
            return n
        if proc.poll() is not None:
            return -1
        time.sleep(0.01)
    raise AssertionError(f"no {k} units after {timeout} s")
