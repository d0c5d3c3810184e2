"""Grouped (depthwise) convolutions with an efficient second derivative.

aten's double backward of a grouped convolution loops over the groups: one convolution call per channel
of a depthwise layer (36,903 convolution and 75,289 copy calls for two capped ADV²-Grad steps on
EfficientNet-Lite0). :class:`_GroupedConv2d` keeps aten's forward (the same ``F.conv2d`` call, so the
values are identical) and writes the first backward as a ``conv_transpose2d``, itself differentiable, so
autograd's second derivative is one grouped convolution per layer.

:class:`GroupedConvMode` routes every grouped ``F.conv2d`` call made while grad is enabled through it.
Everything that differentiates twice through a classifier runs its forward inside this mode: the Grad
attack (through the smooth-ReLU twin, which extends the mode) and MASK's unrolled inner steps (the ADV²-MASK
hypergradient). First-order code does not need it (aten's first backward of a grouped convolution is one
call).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _GroupedConv2d(torch.autograd.Function):
    """conv2d without bias whose backward is written in differentiable ops, so autograd's second
    derivative is one grouped (transposed) convolution instead of aten's per-group loop."""

    @staticmethod
    def forward(ctx, x, w, stride, padding, dilation, groups):  # type: ignore[override]
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, dilation, groups)
        return F.conv2d(x, w, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        gx = gw = None
        if ctx.needs_input_grad[0]:
            # output_padding recovers the input size that the strided forward rounded away
            out_pad = tuple(
                x.shape[2 + i] - ((g.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (w.shape[2 + i] - 1) + 1)
                for i in range(2))
            gx = F.conv_transpose2d(g, w, None, stride, padding, out_pad, groups, dilation)
        if ctx.needs_input_grad[1]:
            gw = torch.nn.grad.conv2d_weight(x, w.shape, g, stride, padding, dilation, groups)
        return gx, gw, None, None, None, None


def grouped_conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv2d`` with the efficient double backward of :class:`_GroupedConv2d` (numeric padding)."""
    y = _GroupedConv2d.apply(x, w, _pair(stride), _pair(padding), _pair(dilation), int(groups))
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _conv_args(args, kwargs):
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = (None, None, None, 1, 0, 1, 1)
    return [args[i] if len(args) > i else kwargs.get(n, d) for i, (n, d) in enumerate(zip(names, defaults))]


class GroupedConvMode(TorchFunctionMode):
    """Inside this mode, a grouped ``F.conv2d`` (groups > 1, numeric padding, 4-D input, grad enabled)
    runs as :func:`grouped_conv2d`: same forward, efficient double backward. Other calls pass through."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            a = _conv_args(args, kwargs)
            if a[6] > 1 and not isinstance(a[4], str) and a[0].dim() == 4 and torch.is_grad_enabled():
                return grouped_conv2d(*a)
        return func(*args, **kwargs)
