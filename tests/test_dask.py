"""The same benchmark on a 2-worker process LocalCluster (GPU resources, prefect-dask) gives exactly the
rows of the serial run.

The workers are real processes (spawned, inheriting ADV2_DATA and PREFECT_API_URL from this process, as
remote workers would from their shell). Both runs use one torch thread so CPU float reductions match.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from adv2core.config import load_config
from adv2core.store import run_sql
from flows.benchmark import run_benchmark

pytestmark = [pytest.mark.dask, pytest.mark.slow, pytest.mark.heavy]

TIMING = {"run_id", "seconds"}  # differ between runs by construction


def _rows(root: Path, table: str, order: str) -> list[dict]:
    cols = [c for c in run_sql(root, f"SELECT * FROM {table} LIMIT 0").column_names if c not in TIMING]
    return run_sql(root, f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}").to_pylist()


def test_dask_run_matches_serial_run(tmp_path):
    from distributed import Client, LocalCluster

    from flows.testing import shared_prefect_server

    shared_prefect_server(os.environ["PREFECT_HOME"])
    # CAM only keeps it cheap; 2 shards x 2 attacks + 2 cross-evaluations = 6 tasks for 2 workers
    common = ["pipeline.torch_threads=1", "pipeline.report=false", "interpreters.names=[cam]", "attacks.step_cap=2"]
    serial = load_config("smoke", overrides=[*common, f"pipeline.results={tmp_path / 'serial'}"]).resolve()
    s = run_benchmark(serial, engine="inline")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, resources={"GPU": 1},
                      dashboard_address=None) as cluster:
        dask_cfg = load_config("smoke", overrides=[*common, f"pipeline.results={tmp_path / 'dask'}",
                                                   f"pipeline.dask_address={cluster.scheduler_address}"]).resolve()
        assert dask_cfg.config_hash == serial.config_hash  # execution settings are not hashed
        d = run_benchmark(dask_cfg)
        with Client(cluster.scheduler_address) as client:
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert d["status"] == "completed" and d["computed"] == s["computed"] > 0
    assert len([w for w, n in executed.items() if n > 0]) == 2, f"both workers should have run tasks: {executed}"
    a = _rows(tmp_path / "serial", "samples", "model, interpreter, attack, image_id")
    b = _rows(tmp_path / "dask", "samples", "model, interpreter, attack, image_id")
    assert len(a) == len(b) > 0 and a == b
    order = "model, attack, source_interpreter, eval_interpreter, image_id"
    assert _rows(tmp_path / "serial", "transfer", order) == _rows(tmp_path / "dask", "transfer", order)
