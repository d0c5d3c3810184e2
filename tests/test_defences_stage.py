"""The defence stage inside a tiny inline flow: rows, calibration split, scores, resume, report table.

Detector separation is tested at library level (tests/test_defences.py); here the checks are about the
stage: which images are scored, with which maps and thresholds, and that the store and the report agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adv2core.config import load_config
from adv2core.errors import ConfigError
from adv2core.store import ResultStore, run_sql
from adv2core.store.arrays import apply_perturbation, read_arrays
from adv2core.store.layout import ShardUnit, arrays_path, manifest_path
from flows.benchmark import run_benchmark

pytestmark = pytest.mark.slow  # one tiny inline run (PGD, 2 shards of 2 images) shared by the module

DEFENCES = ["fs", "lid", "ensemble"]


def _cfg(root, *extra: str):
    # PGD only, 20 steps of 2/255 (the quick eps 16/255): cheap, and it succeeds, so there are examples to
    # score. Measured on the AMD EPYC host, 2026-12-01: 12 of the first 12 images with 1 and 2 threads; the
    # 2 steps of 8/255 used before reached 4 of 12 there (shard 1 had none, so test_ensemble_scores failed).
    # Two shards of 2 images (the stage streams shards); one squeezer and one k keep the detectors cheap.
    return load_config("smoke", overrides=[
        f"pipeline.results={root}", f"pipeline.reports={root / 'reports'}", "data.num_images=4", "data.shard_size=2",
        "attacks.names=[pgd]", "attacks.step_cap=20", "attacks.overrides.pgd.alpha=0.0078",
        f"defences=[{','.join(DEFENCES)}]", "defence_settings.calibration_images=12",
        "defence_settings.fs.combinations=[bit5]", "defence_settings.lid.ks=[3]", "defence_settings.lid.cv_folds=2",
        *extra]).resolve()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    rc = _cfg(root)
    return rc, root, run_benchmark(rc, engine="inline")


def _q(root, sql, params=()):
    return run_sql(root, sql, list(params)).to_pylist()


def test_stage_scores_every_attacked_image_and_every_successful_example(run):
    rc, root, summary = run
    assert summary["status"] == "completed" and not summary["failures"]
    assert summary["plan"]["defence_units"] == len(DEFENCES)
    attacked = {r["image_id"] for r in _q(root, "SELECT image_id FROM samples WHERE status IN ('ok', 'failed')")}
    success = _q(root, "SELECT interpreter, attack, list(image_id ORDER BY image_id) AS ids FROM samples "
                       "WHERE success GROUP BY ALL")
    assert sum(len(r["ids"]) for r in success) > 0, "no successful example: the test would check nothing"
    for det in DEFENCES:
        benign = {r["image_id"] for r in _q(root, "SELECT image_id FROM detections WHERE detector = ? AND "
                                                  "role = 'benign'", [det])}
        assert benign == attacked
        for s in success:
            ids = [r["image_id"] for r in _q(root, "SELECT image_id FROM detections WHERE detector = ? AND role = "
                                                   "'adversarial' AND interpreter = ? AND attack = ? ORDER BY image_id",
                                             [det, s["interpreter"], s["attack"]])]
            assert ids == list(s["ids"]), (det, s)
    # flag = score > threshold, and the threshold flags at most the target FPR of the calibration images
    bad = _q(root, "SELECT count(*) AS n FROM detections WHERE role <> 'fit' AND flag <> (score > threshold)")
    assert bad[0]["n"] == 0
    for r in _q(root, "SELECT detector, avg(flag::INT) AS f, any_value(target_fpr) AS t, count(*) AS n "
                      "FROM detections WHERE role = 'calibration' GROUP BY detector"):
        assert r["n"] >= 2 and r["f"] <= r["t"] + 1e-9


def test_calibration_images_follow_the_selection_and_are_disjoint(run):
    from tasks import worker

    rc, root, _ = run
    ds = worker.get_dataset(rc)
    n, c = rc.bench.data.num_images, rc.bench.defence_settings.calibration_images
    evaluated = {r["image_id"] for r in _q(root, "SELECT image_id FROM samples")}
    assert evaluated == set(ds.ids[:n])
    for det in DEFENCES:
        rows = _q(root, "SELECT role, list(image_id) AS ids FROM detections WHERE detector = ? AND role IN "
                        "('fit', 'calibration') GROUP BY role", [det])
        used = {r["role"]: set(r["ids"]) for r in rows}
        assert used["calibration"] and not (set().union(*used.values()) & evaluated)
        assert set().union(*used.values()) <= set(ds.ids[n:n + c])
        if det == "lid":  # fitted on some, thresholded on the others
            assert used["fit"] and not (used["fit"] & used["calibration"])
        else:
            assert "fit" not in used


def test_fs_scores_match_a_recomputation_from_the_stored_perturbation(run):
    from adv2core.defences import FeatureSqueezing
    from tasks import worker

    rc, root, _ = run
    model = worker.get_model(rc, "resnet-mini", "cpu")
    ds = worker.get_dataset(rc)
    unit = ShardUnit(rc.config_hash, "attack", "resnet-mini", "cam", "pgd", 0, rc.num_shards)
    arrs = read_arrays(arrays_path(root, unit))
    ok = np.flatnonzero(arrs["success"])
    assert ok.size
    x = ds.load(arrs["index"][ok].tolist()).images.numpy()
    x_adv = torch.from_numpy(apply_perturbation(x, arrs["perturbation"][ok]))  # numpy rebuild, not the stage's
    rows = {r["image_id"]: r for r in _q(root, "SELECT image_id, variant, score FROM detections WHERE detector = "
                                                "'fs' AND role = 'adversarial' AND interpreter = 'cam'")}
    variant = next(iter(rows.values()))["variant"]
    expected = FeatureSqueezing(model, variant, rc.bench.defence_settings.fs).score(x_adv).numpy()
    got = np.array([rows[str(i)]["score"] for i in arrs["image_id"][ok]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_ensemble_scores_come_from_the_stored_maps(run):
    """Cross-evaluation stores every interpreter's map of each example; its diagonal equals the attack stage's
    adversarial map, and the ensemble score of an example is the disagreement of exactly those maps."""
    from adv2core.defences import EnsembleDetector
    from tasks import worker

    rc, root, _ = run
    names = rc.bench.interpreters.names
    interps = worker.get_interpreters(rc, "resnet-mini", names, "cpu")
    src = ShardUnit(rc.config_hash, "attack", "resnet-mini", "grad", "pgd", 1, rc.num_shards)
    a = read_arrays(arrays_path(root, src))
    t = read_arrays(arrays_path(root, ShardUnit(rc.config_hash, "transfer", "resnet-mini", "grad", "pgd", 1,
                                                rc.num_shards)))
    assert list(t["image_id"]) == list(a["image_id"]) and {f"map_{n}" for n in names} <= set(t)
    assert a["adv_maps"].dtype == np.float32  # the attack stage keeps full precision; transfer stores float16
    np.testing.assert_array_equal(t["map_grad"], a["adv_maps"].astype(np.float16))
    ok = np.flatnonzero(a["success"])
    assert ok.size
    maps = {n: torch.from_numpy(t[f"map_{n}"][ok].astype(np.float32)) for n in names}
    expected = EnsembleDetector(interps, rc.bench.defence_settings.ensemble).score(maps).numpy()
    rows = {r["image_id"]: r["score"] for r in _q(root, "SELECT image_id, score FROM detections WHERE detector = "
                                                         "'ensemble' AND role = 'adversarial' AND interpreter = 'grad'")}
    np.testing.assert_allclose([rows[str(i)] for i in a["image_id"][ok]], expected, rtol=1e-6, atol=1e-6)


def test_report_has_the_detection_table_and_plots(run):
    import csv
    from pathlib import Path

    rc, root, summary = run
    out = Path(summary["report"]["out_dir"])
    recs = list(csv.DictReader((out / "table8_detection.csv").open()))
    cells = _q(root, "SELECT DISTINCT detector, variant, interpreter, attack FROM detections WHERE role = 'adversarial'")
    assert {c["interpreter"] for c in cells} == {"grad", "cam"}  # PGD's examples are stored per interpreter ...
    # ... but they are the same examples: one row per detector, interpreter 'none' (shown as a dash)
    assert sorted((r["detector"], r["variant"], r["interpreter"], r["attack"]) for r in recs) == \
        sorted({(c["detector"], c["variant"], "none", c["attack"]) for c in cells})
    assert "| PGD | – |" in (out / "report.md").read_text()
    for r in recs:
        assert float(r["detection_rate_lo"]) <= float(r["detection_rate"]) <= float(r["detection_rate_hi"])
        assert 0.0 <= float(r["auc"]) <= 1.0
    md = (out / "report.md").read_text()
    assert "Detection of adversarial examples" in md and "detection_roc.png" in md
    assert (out / "detection_rates.png").is_file() and (out / "detection_roc.png").is_file()


def test_rerun_skips_defence_units_and_recomputes_only_lost_or_changed_ones(run):
    rc, root, first = run
    rc = _cfg(root, "pipeline.report=false")  # same hashes; no report needed here
    again = run_benchmark(rc, engine="inline")
    assert again["computed"] == 0 and again["skipped"] == first["computed"]
    n_fs = _q(root, "SELECT count(*) AS n FROM detections WHERE detector = 'fs'")[0]["n"]
    lost = next(u for u in ResultStore(root).completed_units(rc.config_hash, stage="defence") if u.interpreter == "fs")
    manifest_path(root, lost).unlink()
    # ... and a changed ensemble setting: that detector gets a new settings hash; LID is untouched
    other = _cfg(root, "pipeline.report=false", "defence_settings.ensemble.ks=[10]")
    assert other.config_hash == rc.config_hash
    third = run_benchmark(other, engine="inline")
    assert third["computed"] == 2
    written = _q(root, "SELECT stage, interpreter FROM shards WHERE run_id = ? ORDER BY interpreter", [third["run_id"]])
    assert written == [{"stage": "defence", "interpreter": "ensemble"}, {"stage": "defence", "interpreter": "fs"}]
    assert _q(root, "SELECT count(*) AS n FROM detections WHERE detector = 'fs'")[0]["n"] == n_fs  # rewritten
    assert len(_q(root, "SELECT DISTINCT defence_hash FROM detections WHERE detector = 'ensemble'")) == 2


def test_defence_config_is_checked_and_not_hashed():
    quick = load_config("quick")
    with_def = load_config("quick", overrides=["defences=[ensemble,fs,lid]"])
    assert with_def.defences == ["ensemble", "fs", "lid"]
    assert with_def.resolve().config_hash == quick.resolve().config_hash  # adding detectors keeps the attacks
    for bad, msg in ((["defences=[fs,nope]"], "unknown defence 'nope'"),
                     (["defences=[ensemble]", "interpreters.names=[cam]"], "at least 2"),
                     (["defence_settings.calibration_images=1"], "calibration_images")):
        with pytest.raises(ConfigError, match=msg) as e:
            load_config("quick", overrides=bad)
        assert "\n" not in str(e.value)


def test_empty_and_populated_detection_views_have_the_same_types(run, tmp_path):
    from adv2core.store import connect

    _, root, _ = run
    empty, full = connect(ResultStore(tmp_path / "empty").root), connect(root)
    d1, d2 = empty.sql("DESCRIBE detections").fetchall(), full.sql("DESCRIBE detections").fetchall()
    assert [(r[0], r[1]) for r in d1] == [(r[0], r[1]) for r in d2]


def test_calibration_indices_follow_the_selection_and_shrink_at_the_end_of_the_split():
    from adv2core.defences.stage import calibration_indices, fit_split

    assert calibration_indices(32, 800, 100) == list(range(32, 132))
    assert calibration_indices(8, 20, 100) == list(range(8, 20))  # imagenet-samples: what is left
    with pytest.raises(ConfigError, match="calibration images"):
        calibration_indices(18, 20, 100)
    for n in (5, 6, 12, 100):
        k = fit_split(n, 0.5)
        assert 3 <= k <= n - 2


def test_cross_fitted_calibration_flags_each_image_against_the_other_folds(tmp_path):
    """defence_settings.cross_fit_folds: no images beyond the selection are drawn; each fold of the evaluated
    images is thresholded (LID: also fitted) on the other folds only, and the report pools the folds."""
    import csv
    from pathlib import Path

    root = tmp_path / "results"
    rc = load_config("smoke", overrides=[
            f"pipeline.results={root}", f"pipeline.reports={root / 'reports'}", "data.num_images=12",
            "data.shard_size=6", "attacks.names=[pgd]", "attacks.step_cap=20",
            "attacks.overrides.pgd.alpha=0.0078", f"defences=[{','.join(DEFENCES)}]",
            "defence_settings.cross_fit_folds=2", "defence_settings.fs.combinations=[bit5]",
            "defence_settings.lid.ks=[3]", "defence_settings.lid.cv_folds=2", "pipeline.report_plots=false"]).resolve()
    summary = run_benchmark(rc, engine="inline")
    assert summary["status"] == "completed" and not summary["failures"]
    evaluated = {r["image_id"] for r in _q(root, "SELECT image_id FROM samples WHERE status IN ('ok', 'failed')")}
    assert len(evaluated) >= 10
    for det in DEFENCES:
        rows = _q(root, "SELECT fold, role, image_id FROM detections WHERE detector = ?", [det])
        assert {r["fold"] for r in rows} == {0, 1}
        assert not {r["image_id"] for r in rows} - evaluated  # nothing beyond the run's selection is drawn
        fold_of = {r["image_id"]: r["fold"] for r in rows if r["role"] == "benign"}
        assert set(fold_of) == evaluated and len([r for r in rows if r["role"] == "benign"]) == len(evaluated)
        for f in (0, 1):
            used = {r["image_id"] for r in rows if r["fold"] == f and r["role"] in ("fit", "calibration")}
            flagged = {r["image_id"] for r in rows if r["fold"] == f and r["role"] in ("benign", "adversarial")}
            assert used == {i for i, g in fold_of.items() if g != f}  # LID: fitted on part, thresholded on the rest
            assert flagged and all(fold_of[i] == f for i in flagged) and not used & flagged
    out = Path(summary["report"]["out_dir"])
    recs = list(csv.DictReader((out / "table8_detection.csv").open()))
    assert recs and all(r["folds"] == "2" for r in recs)
    for r in recs:  # the table's counts are the stored flags of both folds together
        n = _q(root, "SELECT count(*) AS n, sum(flag::INT) AS k FROM detections WHERE detector = ? AND variant = ? "
                     "AND role = 'adversarial' AND attack = ? AND interpreter = 'grad'",
               [r["detector"], r["variant"], r["attack"]])[0]
        assert (int(r["n_adversarial"]), int(r["n_detected"])) == (n["n"], n["k"])
    assert "×2 folds" in (out / "report.md").read_text()


def test_detection_plots_give_lid_one_column_across_models_with_their_own_k():
    """LID's k is chosen per model: the plots put it in one column (each panel titled with its model's k), not
    one column per k with an empty 'no rows' panel for every other model (seen on the real preset: k7 / k5)."""
    from adv2core.report.detection import _groups, _panel

    recs = [{"model": m, "detector": d, "variant": v} for m, d, v in [
        ("a", "ensemble", "iou"), ("b", "ensemble", "iou"), ("a", "fs", "median2"), ("b", "fs", "median2"),
        ("a", "fs", "bit5"), ("a", "lid", "k7"), ("b", "lid", "k5")]]
    models, cols = _groups(recs)
    assert models == ["a", "b"]
    assert cols == [("ensemble", "iou"), ("fs", "bit5"), ("fs", "median2"), ("lid", "")]
    got_a, title_a = _panel(recs, "a", ("lid", ""))
    got_b, title_b = _panel(recs, "b", ("lid", ""))
    assert [r["variant"] for r in got_a] == ["k7"] and "k7" in title_a
    assert [r["variant"] for r in got_b] == ["k5"] and "k5" in title_b
    assert _panel(recs, "b", ("fs", "bit5"))[0] == []  # a variant only one model has stays its own column
