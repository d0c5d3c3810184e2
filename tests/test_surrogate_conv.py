"""The twin's grouped convolution: same values as aten's, but a double backward without the per-group loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from adv2core.models.surrogate import SmoothReLUMode


class _ConvCalls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.mkldnn_convolution,
                                   torch.ops.aten._convolution):
            self.n += 1
        return func(*args, **(kwargs or {}))


def _net(groups: int, stride: int, channels: int = 12):
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(channels, channels // groups, 3, 3, generator=g, dtype=torch.float64)
    b1 = torch.randn(channels, generator=g, dtype=torch.float64)
    w2 = torch.randn(5, channels, 1, 1, generator=g, dtype=torch.float64)

    def f(x):
        h = F.conv2d(x, w1, b1, stride, 1, 1, groups)
        h = torch.tanh(h) * h  # curvature that does not depend on the twin's ReLU surrogate
        return F.conv2d(h, w2).mean((2, 3))

    return f


def _second_order(f, x):
    x = x.clone().requires_grad_(True)
    out = f(x)
    (g,) = torch.autograd.grad(out[:, 1].sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
    return out.detach(), g.detach(), gg


@pytest.mark.parametrize("groups,stride", [(12, 1), (12, 2), (3, 2), (1, 1)])
def test_grouped_conv_under_the_twin_matches_aten_to_second_order(groups, stride):
    f = _net(groups, stride)
    x = torch.randn(2, 12, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = _second_order(f, x)
    with SmoothReLUMode():
        twin = _second_order(f, x)
    for a, b in zip(ref, twin):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)  # float64: only summation order differs


def test_depthwise_double_backward_does_not_loop_over_channels():
    f = _net(32, 2, channels=32)
    x = torch.randn(2, 32, 9, 11, dtype=torch.float64)
    with _ConvCalls() as native:
        _second_order(f, x)
    with SmoothReLUMode(), _ConvCalls() as calls:
        _second_order(f, x)
    # forward 2 convs, first backward <= 2, second backward <= 4 (input and grad-output terms); aten's own
    # double backward of the depthwise layer makes one call per channel (32 here)
    assert calls.n <= 10 < native.n, (calls.n, native.n)
