"""Detectors and defences against ADV^2 (spec 3.3, 3.4); :mod:`~adv2core.defences.stage` runs them as the
pipeline's defence stage (``defences: [ensemble, fs, lid]`` in a run config).

* :mod:`~adv2core.defences.squeeze`: feature squeezing (bit depth, median, non-local means; 89 detectors).
* :mod:`~adv2core.defences.lid`: the LID detector (MLE over minibatches, k by CV, logistic regression).
* :mod:`~adv2core.defences.ensemble`: ensemble-interpreter disagreement (1 - mean pairwise top-k IoU).
* :mod:`~adv2core.defences.calibrate`: thresholds at a target FPR on disjoint benign images, detection
  rates with Wilson intervals, ROC AUC.
"""

from adv2core.defences.calibrate import (
    DetectionResult,
    check_disjoint,
    evaluate_detector,
    roc,
    threshold_at_fpr,
)
from adv2core.defences.config import (
    DETECTOR_NAMES,
    CalibrationConfig,
    DefenceSettings,
    DefencesConfig,
    EnsembleConfig,
    FSConfig,
    LIDConfig,
)
from adv2core.defences.ensemble import EnsembleDetector, disagreement
from adv2core.defences.lid import LIDDetector, uniform_noise
from adv2core.defences.squeeze import FeatureSqueezing, all_scores, combination_names, combinations

__all__ = [
    "DETECTOR_NAMES",
    "CalibrationConfig",
    "DefenceSettings",
    "DefencesConfig",
    "DetectionResult",
    "EnsembleConfig",
    "EnsembleDetector",
    "FSConfig",
    "FeatureSqueezing",
    "LIDConfig",
    "LIDDetector",
    "all_scores",
    "check_disjoint",
    "combination_names",
    "combinations",
    "disagreement",
    "evaluate_detector",
    "roc",
    "threshold_at_fpr",
    "uniform_noise",
]
