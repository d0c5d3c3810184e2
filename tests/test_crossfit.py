"""Cross-fitted calibration (adv2core.defences.crossfit) on synthetic scores: every flag comes from a
threshold (or fit) that never saw the flagged image, the folds partition the evaluated images, scores are
computed once, and the report's pooled evaluation equals the per-fold one it sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adv2core.defences.calibrate import FoldData, evaluate_detector, evaluate_folds, threshold_at_fpr
from adv2core.defences.crossfit import fixed, fold_assignment, per_image, score_model_crossfit, take
from adv2core.defences.stage import InputSet, ShardInputs, Source
from adv2core.errors import ConfigError


def _shards(n_shards: int = 3, per: int = 5) -> list[ShardInputs]:
    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(n_shards):
        ids = [f"img{s}-{i}" for i in range(per)]
        x = torch.rand(per, 3, 4, 4, generator=g)
        benign = InputSet(ids, x, torch.arange(per) % 3, key=f"benign-{s}")
        ok = [0, 2, 3]  # "successful" examples of two sources; the PGD one is shared by both interpreters
        adv = InputSet([ids[i] for i in ok], (x[ok] + 0.5).clamp(0, 1), torch.full((3,), 7), key=f"pgd-{s}")
        out.append(ShardInputs(benign, [Source(interp, "pgd", adv, [int(v) for v in benign.cls[ok]])
                                        for interp in ("grad", "cam")]))
    return out


class CountingScorer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, s: InputSet) -> dict[str, torch.Tensor]:
        self.calls.append(s.key)
        return {"mean": s.x.mean(dim=(1, 2, 3))}


def test_fold_assignment_is_seeded_balanced_and_refuses_too_few_images():
    ids = [f"i{n}" for n in range(17)]
    a = fold_assignment(ids, 5, seed=0)
    assert a == fold_assignment(list(reversed(ids)), 5, seed=0)  # order of the input does not matter
    assert a != fold_assignment(ids, 5, seed=1)
    sizes = np.bincount(list(a.values()), minlength=5)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 17
    assert len(fold_assignment(ids[:6], 3, seed=0)) == 6  # folds of 2: each complement holds 4 images
    with pytest.raises(ConfigError, match="fewer than 4 calibration images per fold"):
        fold_assignment(ids[:7], 2, seed=0)  # folds of 4 and 3: the larger fold's complement is 3 images


def test_every_flag_comes_from_a_threshold_over_the_other_folds_only():
    shards = _shards()
    scorer = CountingScorer()
    rows = score_model_crossfit(fixed(scorer), shards, folds=3, fpr=0.05, seed=0)
    benign_ids = [i for sh in shards for i in sh.benign.ids]
    folds = fold_assignment(benign_ids, 3, seed=0)
    all_scores = {i: float(v) for sh in shards for i, v in zip(sh.benign.ids, sh.benign.x.mean(dim=(1, 2, 3)))}
    # each benign image is evaluated exactly once, in its own fold
    ev = [(r["image_id"], r["fold"]) for r in rows if r["role"] == "benign"]
    assert sorted(i for i, _ in ev) == sorted(benign_ids) and all(folds[i] == f for i, f in ev)
    for f in range(3):
        cal = {r["image_id"] for r in rows if r["role"] == "calibration" and r["fold"] == f}
        assert cal == {i for i in benign_ids if folds[i] != f}
        t = threshold_at_fpr(np.asarray([all_scores[i] for i in sorted(cal)], np.float32), 0.05)
        here = [r for r in rows if r["fold"] == f and r["role"] in ("benign", "adversarial")]
        assert here and all(r["threshold"] == t and folds[r["image_id"]] == f for r in here)
        assert all(r["flag"] == (np.float32(r["score"]) > t) for r in here)
    adv = [r for r in rows if r["role"] == "adversarial"]
    assert len(adv) == 3 * 3 * 2 and {r["interpreter"] for r in adv} == {"grad", "cam"}
    # scores computed once per set: the 15 benign images together, each shard's shared PGD examples once
    assert scorer.calls.count("benign-all") == 1 and len(scorer.calls) == 1 + 3


def test_a_fitted_detector_never_fits_or_thresholds_on_the_fold_it_flags():
    shards = _shards()
    seen: list[tuple[set, set]] = []
    made: list[str] = []
    examples = per_image(lambda s: (made.extend(s.ids), s.x + 0.1)[1])

    def make(benign: InputSet, train: np.ndarray):
        k = len(train) // 2
        fit = take(benign, train[:k])
        assert torch.equal(examples(fit), fit.x + 0.1)  # LID's PGD examples, made once per image
        seen.append((set(fit.ids), {benign.ids[i] for i in train[k:]}))
        shift = float(len(seen))  # a different "fitted" scorer per fold, picking its own k
        variant = f"k{len(seen) % 2 + 3}"
        scorer = lambda s: {variant: s.x.mean(dim=(1, 2, 3)) + shift}  # noqa: E731
        fit_rows = [{"variant": variant, "role": "fit", "attack": "none", "interpreter": "none", "image_id": i,
                     "true_class": 0, "target_class": None, "score": 0.0, "threshold": None, "flag": None}
                    for i in fit.ids]
        return scorer, fit_rows, train[k:]

    rows = score_model_crossfit(make, shards, folds=3, fpr=0.05, seed=0)
    folds = fold_assignment([i for sh in shards for i in sh.benign.ids], 3, seed=0)
    for f, (fit, cal) in enumerate(seen):
        assert fit and cal and not fit & cal
        assert all(folds[i] != f for i in fit | cal)
        assert {r["image_id"] for r in rows if r["fold"] == f and r["role"] == "fit"} == fit
    assert len(made) == len(set(made))  # no image attacked twice across folds
    # the folds picked k4, k3, k4: one variant for the report to pool, naming each fold's pick
    assert {r["variant"] for r in rows} == {"k4|k3|k4"}


def test_pooled_evaluation_sums_the_folds_and_one_fold_is_the_plain_evaluation():
    rng = np.random.default_rng(0)
    data = []
    for f in range(3):
        ids = [f"b{f}-{i}" for i in range(6)]
        data.append(FoldData(rng.normal(size=12).astype(np.float32), [f"c{f}-{i}" for i in range(12)],
                             rng.normal(size=6).astype(np.float32), ids,
                             (rng.normal(size=4) + 2).astype(np.float32), ids[:4]))
    one = evaluate_folds(data[:1])
    plain = evaluate_detector(data[0].calibration_scores, data[0].calibration_ids, data[0].benign_scores,
                              data[0].benign_ids, data[0].adv_scores, data[0].adv_ids)
    assert one == plain
    per = [evaluate_folds([d]) for d in data]
    pooled = evaluate_folds(data)
    assert pooled.n_detected == sum(p.n_detected for p in per) and pooled.n_adversarial == 12
    assert pooled.n_benign == 18 and pooled.n_calibration == 12
    assert pooled.benign_fpr == pytest.approx(sum(p.benign_fpr * p.n_benign for p in per) / 18)
    assert pooled.threshold == pytest.approx(float(np.median([p.threshold for p in per])))
    bad = FoldData(data[1].calibration_scores, data[1].benign_ids[:1] + list(data[1].calibration_ids[1:]),
                   data[1].benign_scores, data[1].benign_ids, data[1].adv_scores, data[1].adv_ids)
    with pytest.raises(ConfigError, match="overlap"):
        evaluate_folds([data[0], bad])
