"""Ensemble-interpreter disagreement (spec 3.3: ADV^2 transfers poorly across interpreters, so a benign
image's interpreters tend to agree where an attacked one's do not).

Given maps of the same N images from several interpreters (name -> [N,1,h,w] in [0,1], each at its native
resolution), the score is

    disagreement(x) = 1 - mean over interpreter pairs (a, b) of IoU_ks(S_a(x), S_b(x))

where S is the interpreter's *saliency* (``interpreter.saliency(map)``: higher = more important; MASK gives
1 - m) and IoU_ks is :func:`adv2core.metrics.maps.iou_mean`: the top-k % IoU averaged over ``ks``
(default 10..50 %, the most important half; deterministic tie-break of the metrics module). 0 = all the
interpreters rank the same pixels on top, 1 = no overlap at any k.

Resizing (the native sizes differ: Grad/RTS S/4, CAM the feature map, MASK S/8): each saliency is brought
to one common (h, w): by default the smallest native size among the maps (compared by area), reached by
area averaging (``adaptive_avg_pool2d``, exact block means when the sizes divide, e.g. 56 -> 7 or
16 -> 8). A larger ``EnsembleConfig.size`` upsamples bilinearly (``align_corners=False``) instead. The
saliency is applied *before* resizing (for MASK's 1 - m the order does not matter: both are linear).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from adv2core.defences.config import EnsembleConfig
from adv2core.errors import ConfigError
from adv2core.metrics.maps import iou_mean

SaliencyFn = Callable[[torch.Tensor], torch.Tensor]


def common_size(maps: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """The smallest (by area, then height) native (h, w) among the maps."""
    sizes = {tuple(int(s) for s in m.shape[-2:]) for m in maps.values()}
    return min(sizes, key=lambda hw: (hw[0] * hw[1], hw[0]))


def resize_saliency(s: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N,1,h,w] -> [N,1,*size]: area averaging when shrinking, bilinear when growing, as is when equal."""
    h, w = s.shape[-2:]
    if (h, w) == tuple(size):
        return s
    s = s.float()
    if h >= size[0] and w >= size[1]:
        return F.adaptive_avg_pool2d(s, size)
    return F.interpolate(s, size=size, mode="bilinear", align_corners=False)


def disagreement(saliencies: Mapping[str, torch.Tensor], cfg: EnsembleConfig | None = None) -> torch.Tensor:
    """[N] 1 - mean pairwise top-k IoU of already-computed saliencies (see the module docstring)."""
    cfg = cfg or EnsembleConfig()
    if len(saliencies) < 2:
        raise ConfigError(f"the ensemble detector needs maps from >= 2 interpreters, got {len(saliencies)}")
    shapes = {n: s.shape for n, s in saliencies.items()}
    for n, s in saliencies.items():
        if s.dim() != 4 or s.shape[1] != 1:
            raise ConfigError(f"ensemble: maps of {n!r} must be [N,1,h,w], got {tuple(s.shape)}")
    if len({s[0] for s in shapes.values()}) != 1:
        raise ConfigError(f"ensemble: interpreters mapped different numbers of images: { {n: s[0] for n, s in shapes.items()} }")
    size = tuple(cfg.size) if cfg.size is not None else common_size(saliencies)
    resized = {n: resize_saliency(s, size) for n, s in sorted(saliencies.items())}
    ious = [iou_mean(resized[a], resized[b], cfg.ks) for a, b in itertools.combinations(resized, 2)]
    return 1.0 - torch.stack(ious).mean(dim=0)


def _saliency_fn(obj: Any, name: str) -> SaliencyFn:
    fn = getattr(obj, "saliency", obj)
    if not callable(fn):
        raise ConfigError(f"ensemble: {name!r} needs an interpreter or a saliency function, got {type(obj).__name__}")
    return fn


class EnsembleDetector:
    """``EnsembleDetector({'cam': cam, 'grad': grad, 'mask': mask}).score(maps)`` -> [N] disagreement.

    Values are interpreters (their ``saliency`` is used) or plain ``map -> saliency`` callables.
    """

    def __init__(self, interpreters: Mapping[str, Any], cfg: EnsembleConfig | None = None) -> None:
        if len(interpreters) < 2:
            raise ConfigError(f"the ensemble detector needs >= 2 interpreters, got {len(interpreters)}")
        self.cfg = cfg or EnsembleConfig()
        self.saliency = {n: _saliency_fn(obj, n) for n, obj in interpreters.items()}

    def score(self, maps: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = sorted(set(self.saliency) - set(maps))
        extra = sorted(set(maps) - set(self.saliency))
        if missing or extra:
            raise ConfigError(f"ensemble: maps for {sorted(maps)} but interpreters {sorted(self.saliency)}")
        return disagreement({n: self.saliency[n](m) for n, m in maps.items()}, self.cfg)
