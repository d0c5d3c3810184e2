"""The smooth-ReLU surrogate twin used by the Grad attack (spec section 2.1).

With ReLU the Grad map is piecewise constant in x, so d(map)/dx is zero almost everywhere. The twin
keeps the *exact* ReLU forward and replaces ReLU's derivative in the backward pass by

    h(z) = 1 + z / sqrt(z^2 + tau)   (z < 0)
    h(z) =     z / sqrt(z^2 + tau)   (z >= 0),   tau = 1e-4,

whose own derivative tau / (z^2 + tau)^(3/2) > 0 makes second-order terms non-zero. The jump of h at 0
is reproduced on purpose (no softplus).

It is implemented as a ``TorchFunctionMode`` rather than by swapping modules, so it catches every ReLU:
``nn.ReLU`` modules reused inside a block (torchvision's Bottleneck), in-place ReLUs, and functional
``F.relu``/``torch.relu`` calls. The twin shares the model's weights: no copy is made.

The other piecewise-linear members of the ReLU family get the same treatment, forward exact:

* ``hardtanh(z, lo, hi)`` = clamp(z, lo, hi) and ReLU6 = hardtanh(z, 0, 6) (``nn.ReLU6``, ``nn.Hardtanh``
  and ``F.relu6`` all end in ``F.hardtanh``/``F.relu6``, both caught): surrogate derivative
  h(z - lo) - h(z - hi), smooth at *both* knees (about 1 inside, about 0 outside). EfficientNet-Lite's
  activation is ``nn.ReLU6`` (module ``_swish``), i.e. ``F.hardtanh(x, 0., 6.)``.
* ``leaky_relu(z, a)``: surrogate derivative a + (1 - a) h(z).

**Grouped convolutions** (depthwise, as in EfficientNet / MobileNet) are routed through
:class:`adv2core.models.grouped_conv.GroupedConvMode` (which this mode extends), forward exact: only the
*second* derivative changes how it is computed (one grouped convolution per layer instead of aten's
per-group loop), not its value.

``torch.clamp`` is *not* intercepted: the attacks and map normalisation use it on purpose, and no model
in the registry uses it as an activation (checked for efficientnet-lite-pytorch 0.1.0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adv2core.models.grouped_conv import GroupedConvMode

DEFAULT_TAU = 1e-4


def smooth_relu_grad(z: torch.Tensor, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """h(z): the surrogate derivative of ReLU (differentiable, so double backward works)."""
    s = z / torch.sqrt(z * z + tau)
    return s + (z < 0).to(z.dtype)


class _SmoothReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, tau: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.tau = tau
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return grad_out * smooth_relu_grad(z, ctx.tau), None


def smooth_relu(z: torch.Tensor, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """Exact ReLU forward, smooth surrogate backward."""
    return _SmoothReLU.apply(z, tau)


class _SmoothHardtanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, lo: float, hi: float, tau: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.lo, ctx.hi, ctx.tau = lo, hi, tau
        return z.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        d = smooth_relu_grad(z - ctx.lo, ctx.tau) - smooth_relu_grad(z - ctx.hi, ctx.tau)
        return grad_out * d, None, None, None


class _SmoothLeakyReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, slope: float, tau: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.slope, ctx.tau = slope, tau
        return F.leaky_relu(z, slope)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return grad_out * (ctx.slope + (1.0 - ctx.slope) * smooth_relu_grad(z, ctx.tau)), None, None


def smooth_hardtanh(z: torch.Tensor, lo: float = -1.0, hi: float = 1.0, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """Exact hardtanh (clamp) forward; backward h(z - lo) - h(z - hi), smooth at both knees."""
    return _SmoothHardtanh.apply(z, float(lo), float(hi), tau)


def smooth_relu6(z: torch.Tensor, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """Exact ReLU6 forward, smooth surrogate backward at 0 and at 6."""
    return smooth_hardtanh(z, 0.0, 6.0, tau)


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu_}
_RELU6_FUNCS = {F.relu6}
_HARDTANH_FUNCS = {F.hardtanh, F.hardtanh_}
_LEAKY_FUNCS = {F.leaky_relu, F.leaky_relu_}


def _arg(args, kwargs, i: int, key: str, default):
    return args[i] if len(args) > i else kwargs.get(key, default)


class SmoothReLUMode(GroupedConvMode):
    """Inside this mode every ReLU-family call (module or functional, in-place or not) has the smooth
    surrogate backward: ReLU -> :func:`smooth_relu`, ReLU6/hardtanh -> :func:`smooth_hardtanh`,
    leaky ReLU -> slope + (1 - slope) h; grouped convolutions as in :class:`GroupedConvMode`."""

    def __init__(self, tau: float = DEFAULT_TAU) -> None:
        super().__init__()
        self.tau = tau

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_FUNCS:
            return smooth_relu(args[0], self.tau)
        if func in _RELU6_FUNCS:
            return smooth_relu6(args[0], self.tau)
        if func in _HARDTANH_FUNCS:
            return smooth_hardtanh(args[0], _arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0), self.tau)
        if func in _LEAKY_FUNCS:
            return _SmoothLeakyReLU.apply(args[0], float(_arg(args, kwargs, 1, "negative_slope", 0.01)), self.tau)
        return super().__torch_function__(func, types, args, kwargs)  # grouped convolutions

