"""Two empty data roots on the same machine give byte-identical checkpoints and identical result rows.

The smoke preset trains its classifier from scratch in each root (nothing is shared between them), runs
the flow inline, and the ``samples`` rows must agree in every column except the run id and timings; the
``runs`` rows must record the same checkpoint sha256 and measured accuracy.
"""

from __future__ import annotations

import json

import pytest

from adv2core.config import load_config
from adv2core.store import run_sql
from flows.benchmark import run_benchmark

VOLATILE = {"run_id", "seconds", "code_version"}


def _run(root, monkeypatch):
    monkeypatch.setenv("ADV2_DATA", str(root))
    rc = load_config("smoke", overrides=[f"pipeline.data_root={root}", "attacks.step_cap=2"]).resolve()
    from tasks import worker

    worker.clear_caches()  # no model or dataset object may travel from one root to the other
    summary = run_benchmark(rc, engine="inline")
    rows = run_sql(rc.results_root, "SELECT * FROM samples ORDER BY model, interpreter, attack, image_id").to_pylist()
    runs = run_sql(rc.results_root, "SELECT preflight FROM runs").to_pylist()
    return summary, rows, json.loads(runs[0]["preflight"])


@pytest.mark.heavy
def test_two_fresh_data_roots_agree(tmp_path, monkeypatch):
    s1, rows1, pre1 = _run(tmp_path / "a", monkeypatch)
    s2, rows2, pre2 = _run(tmp_path / "b", monkeypatch)
    assert s1["status"] == s2["status"] == "completed"
    assert s1["config_hash"] == s2["config_hash"]
    assert len(rows1) == len(rows2) > 0
    strip = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows1]
    assert strip == [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows2]
    m1, m2 = pre1["models"]["resnet-mini"], pre2["models"]["resnet-mini"]
    assert m1["checkpoint_sha256"] and m1["checkpoint_sha256"] == m2["checkpoint_sha256"]
    assert m1["accuracy"] == m2["accuracy"] >= pre1["gates"]["accuracy_floor"]
    assert m1["interpreters"] == m2["interpreters"]
