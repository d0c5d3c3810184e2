"""Read safety: readers never error and never see a partial shard while runs write; ``adv2 sql`` is
read-only and confined to the results root (exit code 2 and one line for everything it refuses).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import subprocess
import threading
import time

import pytest
from typer.testing import CliRunner

from adv2cli.main import app
from adv2core.store import ResultStore, ShardUnit, run_sql
from adv2core.store.layout import manifest_path, table_path
from flows.benchmark import run_benchmark
from reliability_support import (
    ADV2,
    all_units,
    baseline,
    check_files,
    counts,
    expected_counts,
    tiny_config,
    unit_count,
)

#: One row per stored unit as a reader sees it: rows and distinct keys per (table, unit).
UNIT_VIEW = """
SELECT 'samples' AS t, config_hash, model, interpreter, attack, shard, count(*) AS n,
       count(DISTINCT image_id) AS d
FROM samples GROUP BY ALL
UNION ALL
SELECT 'transfer', config_hash, model, source_interpreter, attack, shard, count(*),
       count(DISTINCT (eval_interpreter, image_id))
FROM transfer GROUP BY ALL
"""


def _check_snapshot(rows: list[dict], per_unit: dict[str, int]) -> None:
    for r in rows:
        assert r["n"] == r["d"] == per_unit[r["t"]], f"partial or duplicated shard seen: {r}"


@pytest.mark.slow
def test_readers_during_a_run_never_error_or_see_a_partial_shard(tmp_path):
    """``run_sql`` in a tight loop (a thread) and ``adv2 sql`` (new processes) while a run writes (in a
    thread of this process): every answer holds whole shards only (2 sample rows / 4 transfer rows per
    unit) and nothing errors."""
    root = tmp_path / "results"
    rc = tiny_config(root, "data.shard_size=2", "seed=3")
    per_unit = {"samples": rc.bench.data.shard_size,
                "transfer": rc.bench.data.shard_size * len(rc.bench.interpreters.names)}
    root.mkdir()
    outcome: dict = {}

    def writer() -> None:
        try:
            outcome["summary"] = run_benchmark(rc, engine="inline")
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    errors: list[str] = []
    seen: list[int] = []  # units visible at each read
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                rows = run_sql(root, UNIT_VIEW).to_pylist()
                _check_snapshot(rows, per_unit)
                seen.append(len(rows))
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.005)

    w = threading.Thread(target=writer, daemon=True)
    t = threading.Thread(target=reader, daemon=True)
    w.start()
    t.start()
    cli_reads = 0
    try:
        while w.is_alive() and cli_reads < 3:  # each `adv2 sql` is a new process: a few suffice
            if unit_count(root, rc.config_hash) == 0:
                time.sleep(0.05)
                continue
            out = subprocess.run([ADV2, "sql", UNIT_VIEW, "--results", str(root), "--format", "json"],
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            _check_snapshot(json.loads(out.stdout)["rows"], per_unit)
            cli_reads += 1
    finally:
        w.join(timeout=300)
        stop.set()
        t.join(timeout=60)
    assert "error" not in outcome and outcome["summary"]["status"] == "completed", outcome
    assert errors == []
    total = len(all_units(rc))
    assert any(0 < n < total for n in seen), "the reader never overlapped the run"
    assert cli_reads >= 1
    assert counts(root, rc.config_hash) == expected_counts(rc)
    check_files(root)


# ---------------------------------------------------------------------------------------- rewrites
def _rewriter(root: str, seconds: float) -> int:
    """Keep rewriting units as a resume or a rolled-back write does: manifest dropped, files deleted,
    written again. Returns how many rewrites it did."""
    from adv2core.store import ResultStore

    store = ResultStore(root)
    units = [u for u in _units()]
    rows = {u: _rows(u) for u in units}
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        u = units[i % len(units)]
        store.write_shard(u, {"samples": rows[u]})  # drops the old manifest first
        ResultStore._rollback([table_path(store.root, u), manifest_path(store.root, u)])
        store.write_shard(u, {"samples": rows[u]})
        i += 1
    return i


def _units() -> list[ShardUnit]:
    return [ShardUnit("feedc0de", "attack", "m", "grad", "pgd", s, 4) for s in range(4)]


def _rows(u: ShardUnit, n: int = 3) -> list[dict]:
    return [dict(run_id="r1", config_hash=u.config_hash, code_version="v", seed=0, dataset="embedded",
                 image_id=f"img-{u.shard}-{j}", shard=u.shard, num_shards=u.num_shards, model=u.model,
                 interpreter=u.interpreter, attack=u.attack, status="ok", success=True, l1=0.5)
            for j in range(n)]


@pytest.mark.heavy  # ~20 s on 2 cores: three runs under concurrent readers
def test_readers_survive_units_being_rewritten_or_rolled_back(tmp_path):
    """A unit rewritten by a resume or removed by a failed write (ENOSPC rollback) deletes files that a
    reader's glob may just have listed; the reader must still answer (with whole shards)."""
    store = ResultStore(tmp_path)
    for u in _units():
        store.write_shard(u, {"samples": _rows(u)})
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        job = pool.apply_async(_rewriter, (str(tmp_path), 2.5))
        errors, reads = [], 0
        while not job.ready():
            try:
                for r in run_sql(tmp_path, "SELECT shard, count(*) AS n FROM samples GROUP BY shard").to_pylist():
                    assert r["n"] == 3, r
                run_sql(tmp_path, "SELECT count(*) FROM shards")
                reads += 1
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{type(exc).__name__}: {exc}")
        assert job.get() > 10
    assert reads >= 3 and errors == [], errors[:3]


# ---------------------------------------------------------------------------------------- adv2 sql
@pytest.fixture(scope="module")
def sql_root(tmp_path_factory):
    """A copy of a real run's results (with a Parquet file and a symlink outside it, to try to reach)."""
    _, base_root, _ = baseline()
    top = tmp_path_factory.mktemp("sql")
    root = top / "results"
    shutil.copytree(base_root, root)
    outside = top / "outside"
    outside.mkdir()
    some = next((root / "evaluations").rglob("*.parquet"))
    shutil.copy(some, outside / "secret.parquet")
    (outside / "secret.csv").write_text("a,b\n1,2\n")
    (root / "link.parquet").symlink_to(outside / "secret.parquet")
    return root, outside


REFUSED = [
    "INSERT INTO samples VALUES (1)",
    "UPDATE samples SET l1 = 0",
    "DELETE FROM samples",
    "COPY samples TO '{out}/dump.csv'",
    "COPY (SELECT 1 AS x) TO '{root}/samples/x.parquet'",
    "ATTACH '{out}/new.duckdb' AS x",
    "DETACH memory",
    "CREATE TABLE t AS SELECT 1",
    "CREATE VIEW v AS SELECT 1",
    "DROP VIEW samples",
    "ALTER VIEW samples RENAME TO s",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "EXPORT DATABASE '{out}/export'",
    "SELECT 1; DELETE FROM samples",
    "SELECT * FROM read_csv('{out}/secret.csv')",
    "SELECT * FROM read_parquet('{out}/secret.parquet')",
    "SELECT * FROM '{out}/secret.parquet'",
    "SELECT * FROM read_parquet('{root}/../outside/secret.parquet')",
    "SELECT * FROM read_parquet('{root}/link.parquet')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM query('DELETE FROM samples')",
    "CALL checkpoint()",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_adv2_sql_refuses_writes_and_outside_reads(sql_root, sql):
    root, outside = sql_root
    before = sorted(p.name for p in outside.iterdir())
    res = CliRunner().invoke(app, ["sql", sql.format(root=root, out=outside), "--results", str(root)])
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "secret" not in res.stdout and "root:" not in res.stdout
    assert sorted(p.name for p in outside.iterdir()) == before  # nothing written outside
    assert not (root / "samples" / "x.parquet").exists()
    assert counts(root, run_sql(root, "SELECT any_value(config_hash) AS h FROM samples").to_pylist()[0]["h"])


def test_adv2_sql_reads_inside_the_root(sql_root):
    root, _ = sql_root
    res = CliRunner().invoke(app, ["sql", "SELECT count(*) AS n FROM samples", "--results", str(root),
                                   "--format", "json"])
    assert res.exit_code == 0, res.stderr
    rc, base_root, _ = baseline()
    assert json.loads(res.stdout)["rows"] == [{"n": expected_counts(rc)["samples"]}]
    some = next((root / "evaluations").rglob("stage=transfer/*.parquet"))
    res = CliRunner().invoke(app, ["sql", f"SELECT count(*) AS n FROM read_parquet('{some}')", "--results",
                                   str(root), "--format", "csv"])
    assert res.exit_code == 0 and res.stdout.splitlines()[0] == "n", res.stderr


@pytest.mark.slow
def test_adv2_sql_command_refusals_are_one_line(sql_root):
    """The installed ``adv2`` command itself (a new process), not only the in-process app."""
    root, outside = sql_root
    for sql in (f"COPY samples TO '{outside}/dump.parquet'", "SELECT * FROM read_csv('/etc/passwd')"):
        out = subprocess.run([ADV2, "sql", sql, "--results", str(root)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out
        assert out.stdout == ""
    assert not (outside / "dump.parquet").exists()
    missing = subprocess.run([ADV2, "sql", "SELECT 1", "--results", str(root.parent / "nope")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no results" in missing.stderr and missing.stderr.count("\n") == 1
