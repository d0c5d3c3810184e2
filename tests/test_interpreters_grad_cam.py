"""Grad, CAM and the smooth-ReLU twin against independent computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adv2core.interpreters import CAM, Grad, minmax_normalize
from adv2core.models.mini import DENSENET_STEMS, densenet_mini, resnet_mini
from adv2core.models.surrogate import SmoothReLUMode, smooth_relu_grad
from adv2core.models import torchvision_models as tv


def _frozen(model):
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module", params=["resnet-mini", "densenet-mini"])
def mini(request):
    torch.manual_seed(0)
    fn = resnet_mini if request.param == "resnet-mini" else densenet_mini
    model = _frozen(fn(8, 64))
    # Randomise BN statistics so ReLUs are not all trivially active/inactive.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_densenet_stems_keep_the_feature_map_and_reject_unknown_names():
    x = torch.rand(2, 3, 64, 64)
    feats = [_frozen(densenet_mini(8, 64, stem=s)).features(x)[0] for s in DENSENET_STEMS]
    assert {tuple(f.shape) for f in feats} == {(2, feats[0].shape[1], 8, 8)}  # stride 8 with every stem
    with pytest.raises(ValueError, match="unknown stem 'conv-s4'"):
        densenet_mini(8, 64, stem="conv-s4")


def _batch(n=4, s=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, s, s, generator=g), torch.randint(0, 8, (n,), generator=g)


def test_grad_matches_independent_autograd_reference(mini):
    x, y = _batch()
    maps = Grad(mini).explain(x, y)
    # Reference: per-image loop, per-image CE, explicit pooling and min-max.
    refs = []
    for i in range(len(x)):
        xi = x[i : i + 1].clone().requires_grad_(True)
        loss = F.cross_entropy(mini(xi), y[i : i + 1])
        (g,) = torch.autograd.grad(loss, xi)
        m = F.avg_pool2d(g.abs().max(dim=1, keepdim=True).values, 4)
        m = (m - m.min()) / (m - m.min()).max().clamp_min(1e-8)
        refs.append(m)
    ref = torch.cat(refs)
    assert maps.shape == (4, 1, 16, 16)
    torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-5)


def test_twin_forward_is_exact_and_gives_nonzero_second_order(mini):
    x, y = _batch()
    with SmoothReLUMode():
        twin_logits = mini(x)
    assert torch.equal(twin_logits, mini(x))

    # Logit-gradient map on the plain ReLU network: piecewise constant in x, so d(map)/dx is exactly 0
    # (with CE only the softmax curvature J^T H J survives, which is tiny).
    def plain_map(xa, logit):
        xn = mini.normalize(xa)
        _, logits = mini.features_normalized(xn)
        obj = logits.gather(1, y[:, None]).sum() if logit else F.cross_entropy(logits, y, reduction="sum")
        (g,) = torch.autograd.grad(obj, xn, create_graph=True)
        return minmax_normalize(F.avg_pool2d(g.abs().amax(1, keepdim=True), 4))

    xa = x.clone().requires_grad_(True)
    (d_plain,) = torch.autograd.grad(plain_map(xa, True).pow(2).sum(), xa, allow_unused=True)
    assert d_plain is None or d_plain.abs().max() == 0
    xb = x.clone().requires_grad_(True)
    (d_twin,) = torch.autograd.grad(Grad(mini, logit=True).differentiable_map(xb, y).pow(2).sum(), xb)
    assert d_twin.abs().max() > 0 and torch.isfinite(d_twin).all()

    # CE map (the attack's default): the twin's input gradient dwarfs the plain network's.
    xc = x.clone().requires_grad_(True)
    (d_plain_ce,) = torch.autograd.grad(plain_map(xc, False).pow(2).sum(), xc)
    xd = x.clone().requires_grad_(True)
    twin_map = Grad(mini).differentiable_map(xd, y)
    (d_twin_ce,) = torch.autograd.grad(twin_map.pow(2).sum(), xd)
    assert d_twin_ce.abs().sum() > 10 * d_plain_ce.abs().sum()


def test_twin_catches_functional_and_reused_relus():
    z = torch.linspace(-1, 1, 11, requires_grad=True)
    with SmoothReLUMode(1e-4):
        out = F.relu(z) + torch.relu(z) + torch.nn.ReLU(inplace=True)(z.clone())
    (g,) = torch.autograd.grad(out.sum(), z)
    torch.testing.assert_close(g, 3 * smooth_relu_grad(z.detach()))
    # h jumps from ~1 just below 0 to ~0 at 0+ (reproduced on purpose).
    h = smooth_relu_grad(torch.tensor([-1e-6, 1e-6]))
    assert h[0] > 0.99 and h[1] < 0.01


def test_cam_from_weights_equals_gradient_form(mini):
    """For a GAP+FC head, CAM_c = sum_k w_ck A_k equals (h*w) * sum_k (d logit_c / d A_k) A_k."""
    x, y = _batch()
    fmap, logits = mini.features(x)
    fmap = fmap.detach().requires_grad_(True)
    logit = mini.fc(fmap.mean(dim=(2, 3))).gather(1, y[:, None]).sum()
    (g,) = torch.autograd.grad(logit, fmap)
    hw = fmap.shape[-1] * fmap.shape[-2]
    grad_form = (g * hw * fmap).sum(1, keepdim=True)
    raw = torch.einsum("nc,nchw->nhw", mini.cam_weights[y], fmap.detach()).unsqueeze(1)
    torch.testing.assert_close(raw, grad_form.detach(), rtol=1e-4, atol=1e-5)
    cam = CAM(mini).explain(x, y)
    lo = raw.flatten(1).min(1).values.view(-1, 1, 1, 1)
    torch.testing.assert_close(cam, (raw - lo) / (raw - lo).flatten(1).max(1).values.view(-1, 1, 1, 1))


def test_cam_is_differentiable_without_surrogate(mini):
    x, y = _batch()
    xa = x.clone().requires_grad_(True)
    (d,) = torch.autograd.grad(CAM(mini).differentiable_map(xa, y).pow(2).sum(), xa)
    assert d.abs().max() > 0


@pytest.mark.parametrize("name", ["resnet50", "densenet169"])
def test_real_models_map_shapes(name):
    torch.manual_seed(0)
    model = _frozen(getattr(tv, name)(weights=None))
    x, y = torch.rand(1, 3, 224, 224), torch.tensor([3])
    cam = CAM(model).explain(x, y)
    grad = Grad(model).explain(x, y)
    assert cam.shape == (1, 1, 7, 7) and grad.shape == (1, 1, 56, 56)
    for m in (cam, grad):
        assert m.min() >= 0 and m.max() <= 1 and torch.isfinite(m).all()


def test_mini_map_shapes_in_unit_range(mini):
    x, y = _batch()
    for interp, side in ((CAM(mini), 8), (Grad(mini), 16)):
        m = interp.explain(x, y)
        assert m.shape == (4, 1, side, side)
        assert m.min() >= 0 and m.max() <= 1
        assert interp.map_size() == side
