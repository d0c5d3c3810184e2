"""The twin's grouped convolution: same values as aten's, but a double backward without the per-group loop."""

from __future__ import annotations

from contextlib import nullcontext

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


def test_grouped_conv_mode_alone_matches_aten_and_skips_the_loop():
    """The mode without the twin (MASK's unrolled steps use it): same values to second order, no per-channel loop."""
    from adv2core.models.grouped_conv import GroupedConvMode

    f = _net(32, 2, channels=32)
    x = torch.randn(2, 32, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with _ConvCalls() as native:
        ref = _second_order(f, x)
    with GroupedConvMode(), _ConvCalls() as calls:
        got = _second_order(f, x)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)  # float64: only summation order differs
    assert calls.n <= 10 < native.n, (calls.n, native.n)


def test_mask_hypergradient_through_a_depthwise_model_is_unchanged_and_loop_free(monkeypatch):
    """ADV²-MASK's hypergradient (MASK's unrolled steps, a second derivative through the classifier) runs its
    depthwise convolutions through GroupedConvMode: same gradient as aten's path, without the per-channel loop."""
    from torch import nn

    import adv2core.interpreters.mask as mask_mod
    from adv2core.interpreters.config import MaskConfig
    from adv2core.interpreters.mask import MASK
    from adv2core.models.classifier import Classifier

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.Softplus(), nn.Conv2d(24, 24, 3, stride=2, padding=1, groups=24),
                             nn.Softplus())
    model = Classifier("dw", backbone, nn.Linear(24, 5), (0.5,) * 3, (0.25,) * 3, 32, "test").double().eval()
    interp = MASK(model, MaskConfig(jitter=1))
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    target, target_map = torch.tensor([1, 3]), torch.rand(2, 1, 4, 4, dtype=torch.float64)

    def hypergrad():
        state = interp.init_state(x, target, ["a", "b"])
        xr = x.clone().requires_grad_(True)
        _, lint = interp.unrolled_steps(xr, target, state, 2, target_map)
        return torch.autograd.grad(lint.sum(), xr)[0]

    with _ConvCalls() as calls:
        got = hypergrad()
    monkeypatch.setattr(mask_mod, "GroupedConvMode", nullcontext)
    with _ConvCalls() as native:
        ref = hypergrad()
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    assert calls.n < native.n - 24, (calls.n, native.n)  # aten's double backward: one call per channel (24)
