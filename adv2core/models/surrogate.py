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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

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


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu_}


class SmoothReLUMode(TorchFunctionMode):
    """Inside this mode every ReLU call (module or functional, in-place or not) is :func:`smooth_relu`."""

    def __init__(self, tau: float = DEFAULT_TAU) -> None:
        super().__init__()
        self.tau = tau

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU_FUNCS:
            return smooth_relu(args[0], self.tau)
        return func(*args, **kwargs)


class SurrogateTwin(nn.Module):
    """The model run under :class:`SmoothReLUMode`: same weights, same forward values, smooth backward."""

    def __init__(self, model: nn.Module, tau: float = DEFAULT_TAU) -> None:
        super().__init__()
        self.model = model
        self.tau = tau

    def forward(self, *args, **kwargs):
        with SmoothReLUMode(self.tau):
            return self.model(*args, **kwargs)

    def call(self, fn, *args, **kwargs):
        """Run any callable (e.g. ``model.features_normalized``) under the surrogate."""
        with SmoothReLUMode(self.tau):
            return fn(*args, **kwargs)
