"""Concurrency: two ``adv2 run`` processes writing into the same results root at the same time (different
seeds, so different config hashes and run ids) both complete, and their results stay separate and exact.
"""

from __future__ import annotations

import json

import pytest

from adv2core.store import run_sql
from reliability_support import (
    all_units,
    check_committed_units,
    check_files,
    counts,
    duplicate_keys,
    expected_counts,
    manifests,
    output,
    run_args,
    start_cli,
    tiny_config,
)

pytestmark = pytest.mark.slow


@pytest.mark.heavy  # ~25 s on 2 cores: two CLI runs at once (make test stays under 10 minutes)
def test_two_runs_into_one_root_at_once_stay_separate(tmp_path):
    root = tmp_path / "results"
    root.mkdir()
    logs = tmp_path / "logs"
    seeds = (11, 12)
    extra = {s: ("data.num_images=2", f"seed={s}") for s in seeds}
    rcs = {s: tiny_config(root, *extra[s]) for s in seeds}
    assert rcs[11].config_hash != rcs[12].config_hash
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    # both processes pause before their first manifest until the other one got there too: they provably
    # write into the root at the same time, however long their start-up takes
    procs = {s: start_cli(run_args(root, *extra[s]), logs, barrier=f"{barrier}:2") for s in seeds}
    codes = {s: p.wait(timeout=600) for s, p in procs.items()}
    outs = {s: output(logs, i) for i, s in enumerate(seeds)}
    assert codes == {11: 0, 12: 0}, outs
    summaries = {s: json.loads(outs[s][0]) for s in seeds}
    assert summaries[11]["run_id"] != summaries[12]["run_id"]

    runs = {r["run_id"]: r for r in run_sql(root, "SELECT * FROM runs").to_pylist()}
    assert set(runs) == {summaries[s]["run_id"] for s in seeds}
    first, second = sorted(runs.values(), key=lambda r: r["started_at"])
    assert second["started_at"] < first["ended_at"], "the two runs did not overlap"
    assert len(list(barrier.iterdir())) == 2
    for s in seeds:
        rc, summ = rcs[s], summaries[s]
        assert summ["status"] == "completed" and summ["config_hash"] == rc.config_hash
        assert runs[summ["run_id"]]["status"] == "completed" and runs[summ["run_id"]]["config_hash"] == rc.config_hash
        assert counts(root, rc.config_hash) == expected_counts(rc)
        # every unit of this config was written by this run, and this run wrote nothing else
        m = manifests(root, rc.config_hash)
        assert set(m) == all_units(rc) and {v[0] for v in m.values()} == {summ["run_id"]}
        got = run_sql(root, "SELECT DISTINCT run_id, seed FROM samples WHERE config_hash = ?", [rc.config_hash])
        assert got.to_pylist() == [{"run_id": summ["run_id"], "seed": s}]
        check_committed_units(root, rc.config_hash)
    assert duplicate_keys(root) == {}
    total = run_sql(root, "SELECT count(*) AS n FROM samples").to_pylist()[0]["n"]
    assert total == sum(expected_counts(rc)["samples"] for rc in rcs.values())
    assert check_files(root) == []
