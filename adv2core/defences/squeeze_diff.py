"""Differentiable feature squeezers for adaptive attacks (spec 3.4; the detector is :mod:`.squeeze`).

The detector's squeezers are piecewise constant (rounding) or not torch at all (scipy's median, OpenCV's
non-local means), so an attack that wants the prediction on squeezed inputs to agree with the prediction
on x needs gradients through them. Here, in torch, batched, on any device and without host syncs:

* :func:`bit_depth_st`: the forward pass is exactly :func:`adv2core.defences.squeeze.bit_depth`
  (reduce to ``bits`` bits, snap to uint8); the backward pass is the identity (straight-through / BPDA,
  Athalye et al. 2018): rounding has zero gradient almost everywhere.
* :func:`median_st`: exactly scipy's ``median_filter(mode='reflect')`` with its even-size convention
  (window rows i-1..i and columns j-1..j for k = 2; rank ``k*k // 2``, i.e. the upper middle value),
  then the uint8 snap. Backward ``'exact'``: the gradient goes to the pixel the median selected (sorting
  is piecewise linear, so that *is* the gradient almost everywhere); ``'identity'``: BPDA.
* Non-local means is left out: OpenCV runs per image on the host (a sync and a copy per step in the
  attack loop), it has no torch counterpart here, and the paper's adaptive attack does not use it either
  (its loss has a 3-bit term and the two medians only).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from adv2core.errors import ConfigError


def straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` in the forward pass, gradient of the identity in ``x`` in the backward pass."""
    return x + (y - x).detach()


def _snap_uint8(x: torch.Tensor) -> torch.Tensor:
    """round(255 x) / 255 with an identity gradient (the detector re-quantises every squeezed image)."""
    return straight_through(x, torch.round(x * 255.0) / 255.0)


def bit_depth_st(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Bit-depth reduction with a straight-through gradient (forward = the detector's squeezer)."""
    if not 1 <= bits <= 8:
        raise ConfigError(f"bit depth must be in 1..8, got {bits}")
    levels = float(2**bits - 1)
    xc = x.clamp(0.0, 1.0)
    return _snap_uint8(straight_through(xc, torch.round(xc * levels) / levels))


def _reflect_pad(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """scipy's 'reflect' (half-sample symmetric: d c b a | a b c d) on the last two dimensions."""
    parts = [x]
    if before:
        top = x[..., :before, :].flip(-2)
        parts.insert(0, top)
    if after:
        parts.append(x[..., -after:, :].flip(-2))
    x = torch.cat(parts, dim=-2)
    parts = [x]
    if before:
        parts.insert(0, x[..., :, :before].flip(-1))
    if after:
        parts.append(x[..., :, -after:].flip(-1))
    return torch.cat(parts, dim=-1)


def median_st(x: torch.Tensor, size: int, backward: Literal["exact", "identity"] = "exact") -> torch.Tensor:
    """Per-channel ``size`` x ``size`` median as scipy's (see the module docstring), snapped to uint8."""
    if size < 2:
        raise ConfigError(f"median filter size must be >= 2, got {size}")
    if size > min(x.shape[-2:]):
        raise ConfigError(f"median filter size {size} exceeds the image ({x.shape[-2]}x{x.shape[-1]})")
    n, c, h, w = x.shape
    before = size // 2  # scipy, origin 0: the window starts size // 2 before the centre
    after = size - 1 - before
    xp = _reflect_pad(x, before, after)
    patches = F.unfold(xp.reshape(n * c, 1, h + size - 1, w + size - 1), size)  # [NC, k*k, H*W]
    med = patches.sort(dim=1).values[:, (size * size) // 2].reshape(n, c, h, w)
    if backward == "identity":
        med = straight_through(x, med.detach())
    elif backward != "exact":
        raise ConfigError(f"median backward must be 'exact' or 'identity', got {backward!r}")
    return _snap_uint8(med)


def squeeze_distance(logits: torch.Tensor, squeezed_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ||softmax(z) - softmax(z_s)||_1, the feature-squeezing score of one squeezer."""
    return (torch.softmax(logits.float(), dim=1) - torch.softmax(squeezed_logits.float(), dim=1)).abs().sum(dim=1)
