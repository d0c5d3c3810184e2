"""Thresholds at a target false-positive rate, detection rates with Wilson intervals, ROC AUC.

Convention: an input is *flagged* when ``score > threshold``. :func:`threshold_at_fpr` returns the
``1 - fpr`` quantile of the benign calibration scores with numpy's ``inverted_cdf`` rule (the smallest
calibration score t with at least ``(1 - fpr) n`` scores <= t), so at most ``fpr`` of the calibration
images are flagged (exactly ``fpr n`` without ties, e.g. 25 of 500: spec 3.4's 95th percentile).

Calibration images must be disjoint from the evaluated ones: :func:`check_disjoint` refuses any shared
image id (an adversarial example carries the id of the benign image it was made from).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from adv2core.defences.config import CalibrationConfig
from adv2core.errors import ConfigError
from adv2core.metrics.stats import to_numpy, wilson_interval


def check_disjoint(calibration_ids: Sequence[str], evaluation_ids: Sequence[str]) -> None:
    """Raise ConfigError when a calibration image is also evaluated."""
    shared = sorted(set(map(str, calibration_ids)) & set(map(str, evaluation_ids)))
    if shared:
        raise ConfigError(
            f"calibration and evaluation images overlap ({len(shared)} shared ids, e.g. {shared[0]!r}); "
            "thresholds must come from disjoint images"
        )


def _finite(scores: Any, what: str) -> np.ndarray:
    v = to_numpy(scores)
    if v.size == 0:
        raise ConfigError(f"{what}: no scores")
    if not np.isfinite(v).all():
        raise ConfigError(f"{what}: {int((~np.isfinite(v)).sum())} non-finite scores")
    return v


def threshold_at_fpr(benign_scores: Any, fpr: float = 0.05) -> float:
    """Threshold flagging at most ``fpr`` of ``benign_scores`` (flag = score > threshold)."""
    if not 0 < fpr < 1:
        raise ConfigError(f"target FPR must be in (0, 1), got {fpr}")
    v = _finite(benign_scores, "threshold_at_fpr")
    return float(np.quantile(v, 1 - fpr, method="inverted_cdf"))


def rate_with_ci(flags: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float, int, int]:
    """(rate, lo, hi, k, n) of a boolean array, Wilson interval."""
    n, k = int(flags.size), int(flags.sum())
    if n == 0:
        return (math.nan, math.nan, math.nan, 0, 0)
    lo, hi = wilson_interval(k, n, alpha)
    return (k / n, lo, hi, k, n)


def roc(benign_scores: Any, adv_scores: Any) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """(AUC, fpr, tpr, thresholds) of adversarial (positive) vs benign (negative) scores (scikit-learn)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    b, a = _finite(benign_scores, "roc benign"), _finite(adv_scores, "roc adversarial")
    y = np.r_[np.zeros(b.size), np.ones(a.size)]
    s = np.r_[b, a]
    fpr, tpr, thr = roc_curve(y, s)
    return float(roc_auc_score(y, s)), fpr, tpr, thr


@dataclass
class DetectionResult:
    threshold: float
    target_fpr: float
    n_calibration: int
    calibration_fpr: float
    benign_fpr: float
    benign_fpr_lo: float
    benign_fpr_hi: float
    n_benign: int
    detection_rate: float
    detection_rate_lo: float
    detection_rate_hi: float
    n_detected: int
    n_adversarial: int
    auc: float
    roc_fpr: list[float] = field(default_factory=list, repr=False)
    roc_tpr: list[float] = field(default_factory=list, repr=False)

    def as_row(self) -> dict[str, float | int]:
        """Scalars only (for a Parquet row); the ROC points stay in ``roc_fpr`` / ``roc_tpr``."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("roc_")}


@dataclass
class FoldData:
    """One fold's stored scores: its calibration images, and the benign / adversarial inputs it flags."""

    calibration_scores: Any
    calibration_ids: Sequence[str]
    benign_scores: Any
    benign_ids: Sequence[str]
    adv_scores: Any
    adv_ids: Sequence[str]


def evaluate_folds(folds: Sequence[FoldData], cfg: CalibrationConfig | None = None) -> DetectionResult:
    """Cross-fitted evaluation (:mod:`adv2core.defences.crossfit`): each fold is thresholded on its own
    calibration images (disjoint from that fold's evaluated ones: checked per fold), flags are counted over
    all folds (Wilson CIs on the pooled counts), and the ROC AUC is taken over the pooled scores. The
    reported threshold is the median of the folds', ``n_calibration`` the smallest fold's calibration set.
    One fold is :func:`evaluate_detector`."""
    cfg = cfg or CalibrationConfig()
    if not folds:
        raise ConfigError("evaluate_folds: no folds")
    thr, n_cal, cal_flags, b_all, a_all, b_flags, a_flags = [], [], [], [], [], [], []
    for f in folds:
        cal = _finite(f.calibration_scores, "calibration")
        b = to_numpy(f.benign_scores).reshape(-1)
        a = to_numpy(f.adv_scores).reshape(-1)
        for ids, scores, what in ((f.calibration_ids, cal, "calibration"), (f.benign_ids, b, "benign"),
                                  (f.adv_ids, a, "adversarial")):
            if len(ids) != scores.size:
                raise ConfigError(f"{what}: {len(ids)} ids for {scores.size} scores")
        check_disjoint(f.calibration_ids, list(f.benign_ids) + list(f.adv_ids))
        t = threshold_at_fpr(cal, cfg.fpr)
        thr.append(t)
        n_cal.append(cal.size)
        cal_flags.append(cal > t)
        b_all.append(b)
        a_all.append(a)
        b_flags.append(b > t)
        a_flags.append(a > t)
    b, a = _finite(np.concatenate(b_all), "benign"), _finite(np.concatenate(a_all), "adversarial")
    bf = rate_with_ci(np.concatenate(b_flags), cfg.alpha)
    det = rate_with_ci(np.concatenate(a_flags), cfg.alpha)
    auc, rf, rt, _ = roc(b, a)
    return DetectionResult(
        threshold=float(np.median(thr)), target_fpr=cfg.fpr, n_calibration=int(min(n_cal)),
        calibration_fpr=float(np.concatenate(cal_flags).mean()),
        benign_fpr=bf[0], benign_fpr_lo=bf[1], benign_fpr_hi=bf[2], n_benign=bf[4],
        detection_rate=det[0], detection_rate_lo=det[1], detection_rate_hi=det[2], n_detected=det[3],
        n_adversarial=det[4], auc=auc, roc_fpr=rf.tolist(), roc_tpr=rt.tolist(),
    )


def evaluate_detector(
    calibration_scores: Any,
    calibration_ids: Sequence[str],
    benign_scores: Any,
    benign_ids: Sequence[str],
    adv_scores: Any,
    adv_ids: Sequence[str],
    cfg: CalibrationConfig | None = None,
) -> DetectionResult:
    """Threshold on the calibration images at ``cfg.fpr``; detection rate (Wilson CI) on the adversarial
    examples, realised FPR on the held-out benign images, ROC AUC of held-out benign vs adversarial."""
    return evaluate_folds([FoldData(calibration_scores, calibration_ids, benign_scores, benign_ids, adv_scores,
                                    adv_ids)], cfg)
