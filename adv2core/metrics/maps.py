"""Map metrics at native resolution (spec sections 2 and 4): Lp distances and top-k IoU.

Conventions
-----------
* Maps are ``[N,1,h,w]`` in [0,1] (any ``[N,...]`` works; the non-batch dims are the "pixels", n = their
  product). Two maps are only compared at the same shape: nothing is ever resampled (pitfall 8.5).
* Distances take the *maps* (MASK: m itself, L1/L2 are symmetric anyway); ranking metrics take
  *saliencies* (``interpreter.saliency(map)``: higher = more important, MASK gives 1 - m).
* Top-k: ``k = max(1, floor(k_percent/100 * n + 0.5))`` pixels (round half up), ranked by value
  descending, ties broken by lower flat (row-major) index (stable sort), so results are deterministic
  and identical on every device.
* NaN: a sample whose input contains NaN gets NaN for every float metric; other samples are unaffected.
  For ranking, NaN pixels count as least important (``topk_mask`` still returns a deterministic mask).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from adv2core.metrics._checks import MetricInputError, batched_map, float_dtype, same_shape

#: Top-k percentages for the IoU curve: 5 % plus every 10 % step (spec 4 asks for 10 % steps).
DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)


# ----------------------------------------------------------------------------------------------
# Lp distances
# ----------------------------------------------------------------------------------------------
def _diff(a: torch.Tensor, b: torch.Tensor, what: str) -> torch.Tensor:
    batched_map(a, what)
    same_shape(a, b, what)
    dt = torch.promote_types(float_dtype(a), float_dtype(b))
    return (a.to(dt) - b.to(dt)).flatten(1)


def l1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N]: mean absolute difference over the map pixels, ``||a-b||_1 / (h w)``."""
    return _diff(a, b, "l1_distance").abs().mean(dim=1)


def l2_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N]: RMS difference, ``||a-b||_2 / sqrt(h w)``."""
    return _diff(a, b, "l2_distance").square().mean(dim=1).sqrt()


# ----------------------------------------------------------------------------------------------
# Top-k machinery
# ----------------------------------------------------------------------------------------------
def topk_count(k_percent: float, n: int) -> int:
    """Number of pixels kept at ``k_percent`` of ``n``: round half up, at least 1, at most n."""
    if not 0 < k_percent <= 100:
        raise MetricInputError(f"k_percent must be in (0, 100], got {k_percent}")
    return min(n, max(1, math.floor(k_percent * n / 100 + 0.5)))


def _flat_saliency(s: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened saliency ready for ranking, and the per-sample NaN flag."""
    batched_map(s, what)
    flat = s.flatten(1)
    if not flat.dtype.is_floating_point:
        flat = flat.float()
    nan = torch.isnan(flat)
    # NaN -> -inf (least important); +0.0 folds -0.0 onto 0.0 so the two never split a tie.
    flat = torch.where(nan, torch.full_like(flat, -math.inf), flat) + 0.0
    return flat, nan.any(dim=1)


def _ranks(flat: torch.Tensor) -> torch.Tensor:
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    pos = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, pos)


def rank_pixels(saliency: torch.Tensor) -> torch.Tensor:
    """int64 [N, n]: rank of each pixel (0 = most important), ties -> lower flat index first."""
    return _ranks(_flat_saliency(saliency, "rank_pixels")[0])


def topk_mask(saliency: torch.Tensor, k_percent: float) -> torch.Tensor:
    """bool mask, same shape as ``saliency``: the top-k% pixels of each image (see module tie-break)."""
    ranks = rank_pixels(saliency)
    k = topk_count(k_percent, ranks.shape[1])
    return (ranks < k).view(saliency.shape)


def iou_curve(
    sal_a: torch.Tensor, sal_b: torch.Tensor, ks: Sequence[float] = DEFAULT_KS
) -> torch.Tensor:
    """[N, len(ks)]: IoU of the top-k% sets of two saliencies, for every k in ``ks``.

    Both sets have exactly k pixels, so union = 2k - intersection, and the intersection at k is the
    number of pixels whose *worse* rank of the two is < k: one sort + searchsorted covers every k.
    """
    same_shape(sal_a, sal_b, "iou_curve")
    flat_a, nan_a = _flat_saliency(sal_a, "iou_curve")
    flat_b, nan_b = _flat_saliency(sal_b, "iou_curve")
    worst = torch.maximum(_ranks(flat_a), _ranks(flat_b)).sort(dim=1).values
    n = worst.shape[1]
    kk = torch.tensor([topk_count(k, n) for k in ks], device=worst.device, dtype=worst.dtype)
    inter = torch.searchsorted(worst, kk.expand(worst.shape[0], -1).contiguous(), right=False)
    out = inter.to(torch.float32) / (2 * kk - inter).to(torch.float32)
    return out.masked_fill((nan_a | nan_b)[:, None], math.nan)


def iou_topk(sal_a: torch.Tensor, sal_b: torch.Tensor, k_percent: float) -> torch.Tensor:
    """[N]: IoU of the top-``k_percent`` % pixel sets of two saliencies."""
    return iou_curve(sal_a, sal_b, (k_percent,))[:, 0]


def iou_mean(sal_a: torch.Tensor, sal_b: torch.Tensor, ks: Sequence[float] = DEFAULT_KS) -> torch.Tensor:
    """[N]: the IoU curve averaged over ``ks`` (one number per image for tables)."""
    return iou_curve(sal_a, sal_b, ks).mean(dim=1)


# ----------------------------------------------------------------------------------------------
# Localisation against a ground-truth object mask
# ----------------------------------------------------------------------------------------------
def gt_cells(gt_mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """GT mask [N,1,H,W] at image resolution -> (bool [N,h*w] cells, bool [N] 'GT usable').

    Area-downsample (adaptive average pool) to the map grid and keep cells with coverage >= 0.5; if
    none qualifies keep the best-covered cell (first in row-major order). An all-zero or NaN GT mask
    is unusable (the sample's localisation IoU is NaN): there is no object to localise.
    """
    if gt_mask.dim() != 4 or gt_mask.shape[1] != 1:
        raise MetricInputError(f"gt_mask must be [N,1,H,W], got shape {tuple(gt_mask.shape)}")
    cover = F.adaptive_avg_pool2d(gt_mask.to(float_dtype(gt_mask)), size).flatten(1)
    cells = cover >= 0.5
    best = F.one_hot(cover.nan_to_num(-1.0).argmax(dim=1), cover.shape[1]).bool()
    cells = torch.where(cells.any(dim=1, keepdim=True), cells, best)
    usable = (cover > 0).any(dim=1) & ~torch.isnan(cover).any(dim=1)
    return cells, usable


def localization_iou(saliency: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
    """[N]: IoU between the saliency's top-k cells and the GT cells, k = #GT cells (per image).

    With |top-k| = |GT| = k, union = 2k - intersection. Batched: ranks are compared with k[:, None].
    """
    if saliency.dim() != 4 or saliency.shape[1] != 1:
        raise MetricInputError(f"saliency must be [N,1,h,w], got shape {tuple(saliency.shape)}")
    if gt_mask.shape[0] != saliency.shape[0]:
        raise MetricInputError(
            f"localization_iou: batch sizes differ ({saliency.shape[0]} vs {gt_mask.shape[0]})"
        )
    cells, usable = gt_cells(gt_mask.to(saliency.device), tuple(saliency.shape[-2:]))
    flat, nan_s = _flat_saliency(saliency, "localization_iou")
    k = cells.sum(dim=1)
    top = _ranks(flat) < k[:, None]
    inter = (top & cells).sum(dim=1)
    out = inter.to(torch.float32) / (2 * k - inter).to(torch.float32)
    return out.masked_fill(nan_s | ~usable, math.nan)
