"""Count the work an attack really performs, in pass-equivalents (spec section 7.3).

A pass-equivalent is one forward (or one input-gradient backward) of the classifier on one image. The
counter adds up the floating-point operations of every convolution and matrix product dispatched while
it is active (forward, backward, double backward, the RTS masker's and MASK's blur convolutions alike),
using PyTorch's own FLOP formulas (:data:`torch.utils.flop_counter.flop_registry`), and divides by the
FLOPs of one forward of the classifier. Elementwise work (activations, Adam updates, projections) is not
counted: it is the overhead that an efficiency figure above 1 exposes.

    with PassCounter() as c:
        attack(x, target, target_map=m_t)
    per_image = c.flops / forward_flops(model, x[:1])

``torch.utils.flop_counter.FlopCounterMode`` is not used because its module tracker fails inside
``torch.autograd.grad`` on a leaf input (which every Grad-map attack step calls).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry


def _shape(t: Any) -> Any:
    return t.shape if isinstance(t, torch.Tensor) else t


class PassCounter(TorchDispatchMode):
    """FLOPs of the convolutions and matrix products run while active (a dispatch mode: it sees the
    backward and double-backward kernels too). Counting slows execution: time a separate run."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*tree_map(_shape, args), **tree_map(_shape, kwargs), out_val=tree_map(_shape, out)))
            self.calls += 1
        return out


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward of ``model`` on ``x`` (no autograd)."""
    with torch.no_grad(), PassCounter() as c:
        model(x)
    return c.flops


def forward_backward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward + input-gradient backward (weights frozen, as in every attack)."""
    with PassCounter() as c:
        xr = x.detach().clone().requires_grad_(True)
        model(xr).sum().backward()
    return c.flops
