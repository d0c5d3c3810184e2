"""Metrics: one definition each, batched torch on any device, per-sample results of shape [N].

See ``docs/metrics.md`` for the formulas, resolutions and populations. Aggregation into table cells
(success over all images, means over successful ones) lives in :mod:`adv2core.metrics.stats`.
"""

from adv2core.metrics._checks import MetricInputError
from adv2core.metrics.classification import attack_success, confidence, target_probability
from adv2core.metrics.maps import (
    DEFAULT_KS,
    gt_cells,
    iou_curve,
    iou_mean,
    iou_topk,
    l1_distance,
    l2_distance,
    localization_iou,
    rank_pixels,
    topk_count,
    topk_mask,
)
from adv2core.metrics.quantize import (
    apply_int16_perturbation,
    perturbation_to_int16,
    quantize_uint8,
    to_uint8,
)
from adv2core.metrics.stats import bootstrap_ci, success_rate, summarize, wilson_interval

__all__ = [
    "DEFAULT_KS",
    "MetricInputError",
    "apply_int16_perturbation",
    "attack_success",
    "bootstrap_ci",
    "confidence",
    "gt_cells",
    "iou_curve",
    "iou_mean",
    "iou_topk",
    "l1_distance",
    "l2_distance",
    "localization_iou",
    "perturbation_to_int16",
    "quantize_uint8",
    "rank_pixels",
    "success_rate",
    "summarize",
    "target_probability",
    "to_uint8",
    "topk_count",
    "topk_mask",
    "wilson_interval",
]
