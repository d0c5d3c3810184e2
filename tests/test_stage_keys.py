"""Per-stage unit keys and copy-forward (issue #12): a changed setting recomputes only what depends on it.

Config A is the reliability tests' tiny run with Grad + MASK (2 images in 2 shards, 2 steps per loop,
gates off); B changes one MASK setting, C one PGD setting. The plan of B/C copies every unit whose
unit key (adv2core.config.unitkeys) a unit of A holds, and computes the rest; the copied rows equal A's.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from adv2core.config.unitkeys import unit_keys
from adv2core.store import ResultStore, ShardUnit, arrays_path, run_sql
from flows.benchmark import run_benchmark
from reliability_support import (
    KEYS,
    VOLATILE,
    check_committed_units,
    counts,
    duplicate_keys,
    expected_counts,
    tiny_config,
)

BASE = ("data.num_images=2", "interpreters.names=[grad,mask]", "interpreters.step_cap=2", "gates.enabled=false")
MASK_CHANGE = "interpreters.overrides.mask.iterations=1"
PGD_CHANGE = "attacks.overrides.pgd.eps=0.004"


def _units(rc):
    from tasks.benign import benign_units
    from tasks.examples import examples_units
    from tasks.transfer import transfer_units

    b = rc.bench
    attack = [ShardUnit(rc.config_hash, "attack", m, i, a, s, rc.num_shards) for m in b.models.names
              for i in b.interpreters.names for a in b.attacks.names for s in range(rc.num_shards)]
    transfer = [t for m in b.models.names for s in range(rc.num_shards) for t in transfer_units(rc, m, s)]
    return [*benign_units(rc), *examples_units(rc), *attack, *transfer]


def _keys(rc):
    """(stage, interpreter, attack, shard) -> unit key."""
    return {(u.stage, u.interpreter, u.attack, u.shard): k for u, k in unit_keys(rc, _units(rc)).items()}


def _changed(a, b):
    ka, kb = _keys(a), _keys(b)
    assert ka.keys() == kb.keys()
    return {(st, i, at) for (st, i, at, _s), k in ka.items() if kb[(st, i, at, _s)] != k}


def test_unit_keys_follow_the_dependencies(tmp_path):
    a = tiny_config(tmp_path, *BASE)
    assert _changed(a, tiny_config(tmp_path, *BASE, MASK_CHANGE)) == {
        ("benign", "mask", "none"), ("attack", "mask", "pgd"), ("attack", "mask", "adv2"),
        *{("transfer", i, at) for i in ("grad", "mask") for at in ("pgd", "adv2")}}  # every evaluator re-explains
    assert _changed(a, tiny_config(tmp_path, *BASE, PGD_CHANGE)) == {
        ("examples", "none", "pgd"), ("attack", "grad", "pgd"), ("attack", "mask", "pgd"),
        ("transfer", "grad", "pgd"), ("transfer", "mask", "pgd")}
    assert _changed(a, tiny_config(tmp_path, *BASE, "attacks.overrides.adv2.grad.lambdas=[0.01, 0.05, 0.1, 0.5]")) \
        == {("attack", "grad", "adv2"), ("transfer", "grad", "adv2")}
    everything = set((st, i, at) for st, i, at, _s in _keys(a))
    for change in ("seed=1", "attacks.batch_size=2", "data.population=all", "models.train.lr=0.04"):
        assert _changed(a, tiny_config(tmp_path, *BASE, change)) == everything, change
    for change in ("pipeline.max_workers=4", "gates.enabled=true", "interpreters.preset=quick"):
        assert _changed(a, tiny_config(tmp_path / "x", *BASE, change)) == set(), change


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    root = tmp_path_factory.mktemp("stagekeys") / "results"
    rc = tiny_config(root, *BASE)
    s = run_benchmark(rc, engine="inline")
    assert s["status"] == "completed" and s["copied"] == 0
    return rc, root


def _copy_of(run_a, tmp_path):
    rc_a, base = run_a
    root = tmp_path / "results"
    shutil.copytree(base, root)
    return rc_a, root


def _rows(root, table, config_hash, where=""):
    cols = [c for c in run_sql(root, f"SELECT * FROM {table} LIMIT 0").column_names
            if c not in VOLATILE | {"config_hash"}]
    return run_sql(root, f"SELECT {', '.join(cols)} FROM {table} WHERE config_hash = ? {where} "
                         f"ORDER BY {KEYS[table]}", [config_hash]).to_pylist()


def _lineage(root, config_hash):
    """(stage, interpreter, attack) -> set of copied_from of its units."""
    out: dict = {}
    for r in run_sql(root, "SELECT stage, interpreter, attack, copied_from FROM shards WHERE config_hash = ?",
                     [config_hash]).to_pylist():
        out.setdefault((r["stage"], r["interpreter"], r["attack"]), set()).add(r["copied_from"])
    return out


def _check_store(root, rc):
    assert counts(root, rc.config_hash) == {k: v for k, v in expected_counts(rc).items()}
    assert duplicate_keys(root) == {}
    check_committed_units(root, rc.config_hash)  # copied units are complete byte for byte


@pytest.mark.slow
def test_changed_interpreter_setting_recomputes_only_its_units(run_a, tmp_path):
    rc_a, root = _copy_of(run_a, tmp_path)
    rc_b = tiny_config(root, *BASE, MASK_CHANGE, "pipeline.report=true", f"pipeline.reports={tmp_path / 'rep'}")
    assert rc_b.config_hash != rc_a.config_hash
    s = run_benchmark(rc_b, engine="inline")
    assert s["status"] == "completed" and not s.get("report_error") and s["report"]["report"]
    # copied: Grad's benign maps (2 shards), the PGD examples (2), Grad's PGD and ADV² units (4)
    assert s["plan"]["copied"] == {"benign": 2, "examples": 2, "attack": 4}
    # computed: MASK's benign maps (2), MASK's PGD and ADV² units (4), both cross-evaluation groups (2)
    assert s["computed"] == 8 and s["plan"]["pending_benign"] == 2 and s["plan"]["pending_attack"] == 4
    _check_store(root, rc_b)
    lin = _lineage(root, rc_b.config_hash)
    assert lin[("benign", "grad", "none")] == lin[("attack", "grad", "pgd")] == {rc_a.config_hash}
    assert lin[("benign", "mask", "none")] == lin[("transfer", "grad", "adv2")] == {None}
    # the copied rows are A's rows (all but config hash, run ids and timings)
    for table, where in (("samples", "AND interpreter = 'grad'"), ("benign", "AND interpreter = 'grad'"),
                         ("examples", "")):
        got = _rows(root, table, rc_b.config_hash, where)
        assert got and got == _rows(root, table, rc_a.config_hash, where), table
    runs = {r["config_hash"] for r in run_sql(root, "SELECT DISTINCT config_hash FROM samples WHERE run_id = ?",
                                              [s["run_id"]]).to_pylist()}
    assert runs == {rc_b.config_hash}  # copied rows belong to the copying run of the new config
    unit = lambda rc: ShardUnit(rc.config_hash, "attack", "resnet-mini", "grad", "adv2", 1, rc.num_shards)  # noqa: E731
    for key in ("perturbation", "adv_maps"):
        with np.load(arrays_path(root, unit(rc_a))) as za, np.load(arrays_path(root, unit(rc_b))) as zb:
            assert np.array_equal(za[key], zb[key])


@pytest.mark.slow
def test_changed_pgd_setting_keeps_benign_maps_and_adv2(run_a, tmp_path):
    rc_a, root = _copy_of(run_a, tmp_path)
    rc_c = tiny_config(root, *BASE, PGD_CHANGE)
    s = run_benchmark(rc_c, engine="inline")
    assert s["status"] == "completed"
    # copied: every benign map (4), the ADV² units (4) and their cross-evaluation (4); nothing of PGD
    assert s["plan"]["copied"] == {"benign": 4, "attack": 4, "transfer": 4}
    assert s["plan"]["pending_benign"] == 0 and s["plan"]["pending_examples"] == 2
    # computed: PGD examples (2), PGD under Grad and MASK (4), the cross-evaluation groups (2)
    assert s["computed"] == 8
    _check_store(root, rc_c)
    assert _rows(root, "samples", rc_c.config_hash, "AND attack = 'adv2'") == \
        _rows(root, "samples", rc_a.config_hash, "AND attack = 'adv2'")
    assert _rows(root, "transfer", rc_c.config_hash, "AND attack = 'adv2'") == \
        _rows(root, "transfer", rc_a.config_hash, "AND attack = 'adv2'")
    linf = run_sql(root, "SELECT max(linf) AS m FROM samples WHERE config_hash = ? AND attack = 'pgd' "
                         "AND status = 'ok'", [rc_c.config_hash]).to_pylist()[0]["m"]
    assert linf is None or linf <= 0.004 + 0.5 / 255 + 1e-6  # PGD really ran with the new eps

    # rerunning C resumes it; going back to A copies nothing (A is complete)
    assert run_benchmark(rc_c, engine="inline")["computed"] == 0
    again = run_benchmark(tiny_config(root, *BASE), engine="inline")
    assert again["computed"] == 0 and again["copied"] == 0


def test_stores_without_unit_keys_are_never_copied(tmp_path):
    """A manifest without a unit key (older store) is no copy source; a keyed one whose files are gone is
    skipped too (the unit is computed instead)."""
    from adv2core.store.copy import keyed_units

    store = ResultStore(tmp_path)
    rows = [{"run_id": "r1", "config_hash": "aaaa", "code_version": "x", "seed": 0, "dataset": "embedded",
             "image_id": "0", "shard": 0, "num_shards": 1, "model": "m", "interpreter": "none", "true_class": 1}]
    u = ShardUnit("aaaa", "benign", "m", "grad", "none", 0, 1)
    rows[0]["interpreter"] = "grad"
    store.write_shard(u, {"benign": rows}, run_id="r1")
    assert keyed_units(store, {"k"}, "bbbb") == {}
    u2 = ShardUnit("cccc", "benign", "m", "grad", "none", 0, 1)
    store.write_shard(u2, {"benign": [{**rows[0], "config_hash": "cccc"}]}, run_id="r1", unit_key="k")
    found = keyed_units(store, {"k"}, "bbbb")
    assert [r["config_hash"] for r in found["k"]] == ["cccc"]
    from adv2core.store.copy import copy_unit

    dst = ShardUnit("bbbb", "benign", "m", "grad", "none", 0, 1)
    assert copy_unit(store, found["k"][0], dst, "r2") and store.is_complete(dst, full=True)
    assert run_sql(tmp_path, "SELECT run_id, config_hash FROM benign WHERE config_hash = 'bbbb'").to_pylist() == \
        [{"run_id": "r2", "config_hash": "bbbb"}]
    (tmp_path / found["k"][0]["files"].split('"path": "')[1].split('"')[0]).unlink()  # source loses its rows
    dst2 = ShardUnit("dddd", "benign", "m", "grad", "none", 0, 1)
    assert not copy_unit(store, found["k"][0], dst2, "r3") and not store.is_complete(dst2)


REFUSED = ("data.num_images=2", "gates.enabled=false", "gates.on_refused=skip")


def _eval_pairs(root, config_hash):
    """(source, evaluator, attack) of the stored transfer rows of a config."""
    return {(r["s"], r["e"], r["a"]) for r in run_sql(
        root, "SELECT DISTINCT source_interpreter AS s, eval_interpreter AS e, attack AS a FROM transfer "
              "WHERE config_hash = ?", [config_hash]).to_pylist()}


@pytest.mark.heavy  # ~15 s on 2 cores: three tiny runs
def test_transfer_units_written_under_a_refusal_are_not_reused_without_it(tmp_path, monkeypatch):
    """``gates.on_refused: skip``: a transfer unit written while CAM was refused has no rows with CAM as
    evaluator, and no unit key covers refusals (decided at preparation, after the plan copies). Such a unit
    records the refusal in its manifest: it is never copied forward (config C, same ADV² transfer keys,
    CAM not refused, computes them), and its own config rerun without the refusal rewrites it."""
    import adv2core.interpreters.registry as registry
    from adv2core.gates import GateError
    from tasks import worker

    real = registry.build_interpreter

    def build(spec, model, **kw):
        if spec.name == "cam":
            raise GateError("RTS-like masker for CAM missed its quality bar (patched)")
        return real(spec, model, **kw)

    root = tmp_path / "results"
    worker.clear_caches()
    monkeypatch.setattr(registry, "build_interpreter", build)
    rc_a = tiny_config(root, *REFUSED)
    a = run_benchmark(rc_a, engine="inline")
    assert a["status"] == "completed" and [r["interpreter"] for r in a["refused"]] == ["cam"]
    assert _eval_pairs(root, rc_a.config_hash) == {("grad", "grad", at) for at in ("pgd", "adv2")}
    recorded = ResultStore(root).recorded_refusals(rc_a.config_hash)
    assert len(recorded) == 4 and {u.stage for u in recorded} == {"transfer"}
    assert set(recorded.values()) == {frozenset({"cam"})}

    monkeypatch.setattr(registry, "build_interpreter", real)  # CAM builds again: nothing refused
    worker.clear_caches()
    rc_c = tiny_config(root, *REFUSED, PGD_CHANGE)
    c = run_benchmark(rc_c, engine="inline")
    assert c["status"] == "completed" and not c["failures"] and "refused" not in c
    # Grad's benign maps and ADV² units are copied; its ADV² transfer units (same unit key) are not
    assert c["plan"]["copied"] == {"benign": 2, "attack": 2}
    full = {(s, e, at) for s in ("grad", "cam") for e in ("grad", "cam") for at in ("pgd", "adv2")}
    assert _eval_pairs(root, rc_c.config_hash) == full
    assert ResultStore(root).recorded_refusals(rc_c.config_hash) == {}

    # config A again, CAM not refused: the units written under the refusal are not complete for it
    again = run_benchmark(rc_a, engine="inline")
    assert again["status"] == "completed" and not again["failures"] and again["plan"]["pending_transfer"] == 2
    assert _eval_pairs(root, rc_a.config_hash) == full
    assert ResultStore(root).recorded_refusals(rc_a.config_hash) == {}
    assert counts(root, rc_a.config_hash) == expected_counts(rc_a) and duplicate_keys(root) == {}
