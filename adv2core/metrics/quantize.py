"""uint8 quantisation of images and the int16 perturbation storage scheme (spec pitfall 8.8).

* ``mode='round'`` (project default): round-to-nearest, ``round(255 x) / 255`` (ties to even, as
  ``torch.round``). All attacks are evaluated on this grid.
* ``mode='trunc'``: ``floor(255 x) / 255``, what the official MASK code does (``astype(uint8)``);
  kept only for parity runs.

Storage: an adversarial image is stored as ``delta = round(255 x_adv) - round(255 x)`` (int16, in
[-255, 255]) next to the benign image; :func:`apply_int16_perturbation` rebuilds
``(round(255 x) + delta) / 255``, which is bit-identical to ``quantize_uint8(x_adv, 'round')`` because
both divide the same exact integer by 255 in the same dtype.

Inputs are clamped to [0,1] first. NaN propagates through :func:`quantize_uint8`; it cannot be
stored as int16, so :func:`perturbation_to_int16` raises instead (a storage-time check, not in a loop).
"""

from __future__ import annotations

from typing import Literal

import torch

from adv2core.metrics._checks import MetricInputError, same_shape

QuantMode = Literal["round", "trunc"]


def _levels(x: torch.Tensor, mode: QuantMode) -> torch.Tensor:
    """Integer levels 0..255 of ``x`` as floats of ``x``'s dtype (exact integers)."""
    scaled = x.clamp(0.0, 1.0) * 255.0
    if mode == "round":
        return torch.round(scaled)
    if mode == "trunc":
        return torch.floor(scaled)
    raise MetricInputError(f"unknown quantisation mode {mode!r} (expected 'round' or 'trunc')")


def quantize_uint8(x: torch.Tensor, mode: QuantMode = "round") -> torch.Tensor:
    """Snap [0,1] images onto the uint8 grid; returns the same dtype/device, values k/255."""
    if not x.dtype.is_floating_point:
        raise MetricInputError(f"quantize_uint8 expects a float image in [0,1], got {x.dtype}")
    return _levels(x, mode) / 255.0


def to_uint8(x: torch.Tensor, mode: QuantMode = "round") -> torch.Tensor:
    """The uint8 levels themselves (for saving PNGs / tensors); NaN is not allowed here."""
    return _levels(x, mode).to(torch.uint8)


def perturbation_to_int16(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``round(255 x_adv) - round(255 x)`` as int16: the stored form of an adversarial image."""
    same_shape(x_adv, x, "perturbation_to_int16")
    if bool(torch.isnan(x_adv).any() | torch.isnan(x).any()):
        raise MetricInputError("perturbation_to_int16: NaN in images; refusing to store a corrupt perturbation")
    return (_levels(x_adv, "round").to(torch.int16) - _levels(x, "round").to(torch.int16))


def apply_int16_perturbation(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Rebuild the quantised adversarial image ``(round(255 x) + delta) / 255`` in ``x``'s dtype."""
    same_shape(x, delta, "apply_int16_perturbation")
    if delta.dtype.is_floating_point:
        raise MetricInputError(f"delta must be an integer tensor (int16), got {delta.dtype}")
    levels = _levels(x, "round").to(torch.int32) + delta.to(device=x.device, dtype=torch.int32)
    return levels.clamp(0, 255).to(x.dtype) / 255.0
