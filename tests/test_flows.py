"""The real CLI under Prefect: ``adv2 run`` twice, then ``adv2 runs``, ``adv2 sql`` and ``adv2 report``.

One private Prefect server is shared with the other flow tests (flows.testing); the CLI runs in
subprocesses exactly as a user types it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adv2core.config import load_config

ADV2 = str(Path(sys.executable).parent / "adv2")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_env():
    from flows.testing import shared_prefect_server

    url = shared_prefect_server(os.environ["PREFECT_HOME"])
    return {**os.environ, "PREFECT_API_URL": url}


def _adv2(env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([ADV2, *args], env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, f"adv2 {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


# The CLI path does not depend on the interpreter: CAM only keeps the two runs cheap.
CHEAP = ["--set", "interpreters.names=[cam]", "--set", "attacks.step_cap=2"]


@pytest.mark.heavy  # ~65 s: a private Prefect server and four CLI processes
def test_cli_run_resume_runs_sql_report(prefect_env, tmp_path):
    res = tmp_path / "results"
    rc = load_config("smoke", overrides=["interpreters.names=[cam]", "attacks.step_cap=2"]).resolve()
    b = rc.bench
    free = sum(1 for a in b.attacks.names if a in ("pgd", "stadv"))  # examples once per (model, shard)
    # per (model, shard): benign maps per interpreter, examples per free attack, attack units, cross-evaluation
    tasks = len(b.models.names) * rc.num_shards * (len(b.interpreters.names) * (len(b.attacks.names) + 1) + free + 1)

    first = json.loads(_adv2(prefect_env, "run", "--preset", "smoke", *CHEAP, "--results", str(res), "--json",
                             "--no-progress").stdout)
    assert first["status"] == "completed" and first["config_hash"] == rc.config_hash
    assert first["computed"] == tasks and first["skipped"] == 0
    assert first["prefect"]["state"] == "Completed" and first["prefect"]["mode"] == "server"
    report1 = Path(first["report"]["report"])
    assert report1.is_file()

    second = _adv2(prefect_env, "run", "--preset", "smoke", *CHEAP, "--results", str(res))  # human output + bar
    assert "shard" in second.stderr and f"{tasks}/{tasks}" in second.stderr
    assert "0 shard task(s) computed" in second.stdout and f"{tasks} skipped" in second.stdout
    assert "report: " in second.stdout
    report2 = Path(second.stdout.split("report: ")[-1].split()[0])
    assert report2 != report1 and report2.is_file()
    for table in report1.parent.glob("table*.csv"):  # same numbers, recomputed from the same rows
        assert (report2.parent / table.name).read_text() == table.read_text()

    runs = json.loads(_adv2(prefect_env, "runs", "--results", str(res), "--json").stdout)["runs"]
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert {r["config_hash"] for r in runs} == {rc.config_hash}
    units = len(b.models.names) * rc.num_shards * (len(b.interpreters.names) * (len(b.attacks.names) + 1 +
                                                                                len(rc.cross_eval_attacks)) + free)
    assert [r["shards_written"] for r in runs] == [units, 0]

    q = "select model, interpreter, attack, avg(l1) as l1 from samples group by all"
    out = json.loads(_adv2(prefect_env, "sql", q, "--results", str(res), "--format", "json").stdout)
    assert out["row_count"] == len(b.models.names) * len(b.interpreters.names) * len(b.attacks.names)
    csv_out = _adv2(prefect_env, "sql", "select count(*) as n from samples", "--results", str(res),
                    "--format", "csv").stdout.splitlines()
    assert csv_out[0] == "n" and int(csv_out[1]) == len(b.models.names) * len(b.interpreters.names) * \
        len(b.attacks.names) * b.data.num_images
    refused = _adv2(prefect_env, "sql", "delete from samples", "--results", str(res), check=False)
    assert refused.returncode == 2 and refused.stderr.startswith("error:") and refused.stderr.count("\n") == 1

    rep = json.loads(_adv2(prefect_env, "report", "--run", "latest", "--results", str(res), "--out",
                           str(tmp_path / "rep"), "--json").stdout)
    assert rep["run_id"] == runs[-1]["run_id"] and Path(rep["report"]).is_file()
    missing = _adv2(prefect_env, "report", "--run", "nope", "--results", str(res), check=False)
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_a_signal_carried_by_a_task_future_interrupts_the_run():
    """When SIGTERM lands while a shard task runs, Prefect stores TerminationSignal in its future. That is
    the run being interrupted (exit 130, status `interrupted`), not a failed shard (exit 1): the engine
    re-raises it, while an ordinary task exception is returned as a failure."""
    from prefect.exceptions import TerminationSignal

    from flows.benchmark import PrefectEngine

    class Fut:
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def result(self):
            raise self.exc

    engine = PrefectEngine.__new__(PrefectEngine)
    ok, exc = engine.outcome(Fut(RuntimeError("boom")))
    assert not ok and isinstance(exc, RuntimeError)
    for signal_exc in (TerminationSignal(signal=15), KeyboardInterrupt()):
        with pytest.raises(type(signal_exc)):
            engine.outcome(Fut(signal_exc))
