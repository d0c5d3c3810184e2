"""Input checks shared by the metric functions (pure Python: no host syncs)."""

from __future__ import annotations

import torch

from adv2core.errors import Adv2Error


class MetricInputError(Adv2Error, ValueError):
    """Bad metric input (shape mismatch, out-of-range k). Also a ``ValueError`` for plain callers."""


def same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Raise unless ``a`` and ``b`` have identical shapes (maps are compared at native resolution)."""
    if a.shape != b.shape:
        raise MetricInputError(
            f"{what}: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)}); compare maps at native resolution"
        )


def batched_map(x: torch.Tensor, what: str) -> None:
    """Require a batch of maps, ``[N,1,h,w]`` (or any ``[N,...]`` with at least one non-batch dim)."""
    if x.dim() < 2:
        raise MetricInputError(f"{what}: expected a batch [N,1,h,w], got shape {tuple(x.shape)}")


def float_dtype(x: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: at least float32 so half-precision maps do not lose the mean."""
    if x.dtype.is_floating_point:
        return torch.promote_types(x.dtype, torch.float32)
    return torch.float32
