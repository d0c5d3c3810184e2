"""Config safety: stored shards are keyed by the config hash, so a changed parameter never reuses a
result it changes.

A rerun with a changed attack parameter gets a new hash: it recomputes every unit that depends on the
parameter, copies the others forward from the old config (same unit key, adv2core.config.unitkeys),
leaves the old config's units untouched, and both configs stay separately queryable with exact counts.
Execution settings (workers, results folder, retries, report) keep the hash, so they resume instead.
"""

from __future__ import annotations

import shutil

import pytest

from adv2core.store import run_sql
from flows.benchmark import run_benchmark
from reliability_support import (
    all_units,
    baseline,
    counts,
    duplicate_keys,
    expected_counts,
    manifests,
    tasks_for,
    tiny_config,
)

NEW_EPS = 0.004  # below one PGD step (alpha = 2/255), so the stored rows show which eps was used


@pytest.mark.parametrize("change", [
    "attacks.overrides.pgd.eps=0.05",
    "attacks.overrides.pgd.alpha=0.01",
    "attacks.overrides.adv2.grad.lambdas=[0.01, 0.05, 0.1, 0.5]",
    "attacks.overrides.adv2.cam.stage2_steps=1",  # (values above step_cap are capped: same hash)
    "attacks.step_cap=3",
    "attacks.names=[pgd]",
    "interpreters.names=[grad]",
    "seed=1",
    "data.num_images=3",
    "data.shard_size=2",
])
def test_result_settings_change_the_hash(tmp_path, change):
    assert tiny_config(tmp_path, change).config_hash != tiny_config(tmp_path).config_hash


@pytest.mark.parametrize("change", [
    "pipeline.max_workers=4", "pipeline.retries=5", "pipeline.report=true", "pipeline.torch_threads=2",
    "pipeline.device=cpu", "pipeline.shard_budget_s=100", "description=another",
])
def test_execution_settings_keep_the_hash(tmp_path, change):
    assert tiny_config(tmp_path / "elsewhere", change).config_hash == tiny_config(tmp_path).config_hash


@pytest.mark.heavy  # ~20 s on 2 cores: two tiny runs (other stage-key tests stay in make test)
def test_changed_attack_parameter_recomputes_what_depends_on_it(tmp_path):
    rc0, base_root, _ = baseline()
    root = tmp_path / "results"
    shutil.copytree(base_root, root)
    old = manifests(root, rc0.config_hash)
    assert len(old) == len(all_units(rc0))

    rc1 = tiny_config(root, f"attacks.overrides.pgd.eps={NEW_EPS}")
    assert rc1.config_hash != rc0.config_hash
    s1 = run_benchmark(rc1, engine="inline")
    assert s1["status"] == "completed"
    pgd = {u for u in all_units(rc1) if u[3] == "pgd"}  # PGD's examples, attack and cross-evaluation units
    assert s1["computed"] == tasks_for(pgd)  # nothing that depends on PGD is reused ...
    assert s1["copied"] == len(all_units(rc1)) - len(pgd)  # ... and everything else is copied forward
    copied = {(r["stage"], r["model"], r["interpreter"], r["attack"], r["shard"]) for r in run_sql_rows(
        root, "SELECT * FROM shards WHERE config_hash = ? AND copied_from IS NOT NULL", [rc1.config_hash])}
    assert copied == all_units(rc1) - pgd
    assert {v[0] for v in manifests(root, rc1.config_hash).values()} == {s1["run_id"]}
    assert manifests(root, rc0.config_hash) == old  # the old config's units are untouched

    # both configs are queryable separately, each complete and exact, and nothing is double-counted
    assert counts(root, rc0.config_hash) == expected_counts(rc0)
    assert counts(root, rc1.config_hash) == expected_counts(rc1)
    total = run_sql_count(root, "SELECT count(*) AS n FROM samples")
    assert total == expected_counts(rc0)["samples"] + expected_counts(rc1)["samples"]
    assert duplicate_keys(root) == {}
    # the new rows were computed with the new eps (independent check: the stored L-inf distance)
    linf = {r["config_hash"]: r["m"] for r in run_sql_rows(
        root, "SELECT config_hash, max(linf) AS m FROM samples WHERE attack = 'pgd' AND status = 'ok' GROUP BY ALL")}
    assert linf[rc1.config_hash] <= NEW_EPS + 0.5 / 255 + 1e-6 < linf[rc0.config_hash]
    runs = {r["run_id"]: r["config_hash"] for r in run_sql_rows(root, "SELECT run_id, config_hash FROM runs")}
    assert runs[s1["run_id"]] == rc1.config_hash and rc0.config_hash in runs.values()

    # going back to the old config resumes it: every unit is skipped
    s0 = run_benchmark(tiny_config(root), engine="inline")
    assert s0["computed"] == 0 and s0["skipped"] == tasks_for(all_units(rc0))
    assert manifests(root, rc0.config_hash) == old


def run_sql_rows(root, sql, params=None):
    return run_sql(root, sql, params).to_pylist()


def run_sql_count(root, sql) -> int:
    return run_sql_rows(root, sql)[0]["n"]
