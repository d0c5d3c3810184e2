"""Attack machinery against independent computations and invariants (fast; small batches).

The heavy end-to-end claims (ADV^2 reaches the target and beats PGD on map distance, per interpreter)
are in ``test_attacks_adv2.py``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from adv2core import presets
from adv2core.attacks import (
    ADV2CAM,
    ADV2Grad,
    ADV2Mask,
    StAdvADV2Mask,
    PAPER,
    PGD,
    AttacksConfig,
    InterpretationLoss,
    StAdv,
    StAdvADV2CAM,
    StAdvADV2Grad,
    attack_class,
    build_attack,
    flow_loss,
    load_preset,
    shape_maps,
    target_classes,
    warp,
)
from adv2core.attacks.config import ADV2GradConfig, PGDConfig, validate_config
from adv2core.attacks.losses import cross_entropy, cw_margin
from adv2core.attacks.params import Adam
from adv2core.attacks.targets import pick_target_images
from adv2core.errors import ConfigError
from adv2core.interpreters import CAM, Grad

EPS_TOL = 1e-6


# ----------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(trained_resnet):
    return trained_resnet[0]


@pytest.fixture(scope="module")
def small(test_batch, model):
    """Six test images with their seeded target classes."""
    b = test_batch.select(range(6))
    return b, target_classes(b.labels, b.ids, model.num_classes, seed=0)


@pytest.fixture(scope="module")
def model64(model):
    """A float64 copy: there the batched kernels are batch-invariant, so batch == singles exactly."""
    return copy.deepcopy(model).double()


# ----------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------
def test_paper_defaults_are_the_spec_values():
    p = PAPER
    assert (p.pgd.eps, p.pgd.alpha, p.pgd.steps) == (0.031, 1 / 255, 1200)
    g = p.adv2.grad
    assert (g.stage1_steps, g.stage1_clip, g.lambdas, g.stage2_steps) == (300, False, (0.001, 0.004, 0.01, 0.05), (301, 201, 101, 101))
    assert (g.select_every, g.select_p_threshold, g.reduction) == (10, 0.8, "sse")
    assert (p.adv2.cam.stage1_steps, p.adv2.cam.stage2_steps, p.adv2.cam.c, p.adv2.cam.c_growth) == (400, 1200, 5.0, 2.0)
    assert (p.adv2.rts.stage1_steps, p.adv2.rts.stage2_steps, p.adv2.rts.extra_weight) == (300, 1000, 0.1)
    mk = p.adv2.mask
    assert (mk.stage1_steps, mk.stage2_steps, mk.pred_step, mk.inner_plain, mk.inner_unrolled) == (400, 1000, 0.05, 4, 4)
    assert (mk.ls_max, mk.ls_max_late, mk.ls_bisections, mk.margin_threshold, mk.resolve_every) == (0.08, 0.04, 10, -10.0, 50)
    assert mk.resolve_quantize == "trunc" and mk.code_compatible is False
    s = p.stadv
    assert (s.steps, s.lr, s.amsgrad, s.tau, s.init_range, s.neighbourhood) == (300, 0.01, True, 5e-4, 0.1, "diagonal")
    sg = p.stadv_adv2.grad
    assert (sg.stage1_steps, sg.lambdas, sg.stage2_steps, sg.select_p_threshold) == (450, (0.003, 0.01, 0.05, 0.2), (301, 201, 101, 101), 0.75)
    assert (p.stadv_adv2.cam.stage1_steps, p.stadv_adv2.cam.stage2_steps, p.stadv_adv2.cam.ce_weight) == (200, 600, 2.0)
    sm = p.stadv_adv2.mask
    assert (sm.stage2_lr, sm.inner_lr, sm.int_weight, sm.flow_weight, sm.flow_weight_densenet, sm.margin_clip) == (0.005, 0.01, 500.0, 0.004, 0.005, -5.0)
    assert all(not c.early_stop for c in (p.pgd, g, p.adv2.cam, p.adv2.rts, mk, s))


def test_paper_yaml_equals_the_defaults_and_quick_is_smaller():
    assert load_preset("paper") == PAPER
    raw = yaml.safe_load(presets.packaged("attacks").joinpath("paper.yaml").read_text())
    assert AttacksConfig.model_validate(raw) == PAPER
    quick = load_preset("quick")
    assert quick.name == "quick"
    for section in ("grad", "cam", "rts", "mask"):
        q, p = getattr(quick.adv2, section), getattr(PAPER.adv2, section)
        assert q.stage1_steps < p.stage1_steps
        qs = sum(q.stage2_steps) if isinstance(q.stage2_steps, tuple) else q.stage2_steps
        ps = sum(p.stage2_steps) if isinstance(p.stage2_steps, tuple) else p.stage2_steps
        assert qs < ps
    assert quick.pgd.steps < PAPER.pgd.steps and quick.stadv.steps < PAPER.stadv.steps


@pytest.mark.parametrize(
    "cls,bad",
    [
        (PGDConfig, {"eps": 0}),
        (PGDConfig, {"eps": -0.1}),
        (PGDConfig, {"eps": 1.5}),
        (PGDConfig, {"steps": 0}),
        (PGDConfig, {"stepz": 3}),
        (ADV2GradConfig, {"lambdas": (0.1, 0.2), "stage2_steps": (1,)}),
    ],
)
def test_invalid_config_is_a_one_line_config_error(cls, bad):
    with pytest.raises(ConfigError) as exc:
        validate_config(cls, bad)
    assert "\n" not in str(exc.value) and cls.__name__ in str(exc.value)


def test_constructor_validation_and_registry(model):
    with pytest.raises(ConfigError):
        PGD(model, eps=0.0)
    with pytest.raises(ConfigError):
        build_attack("fgsm", model, None)
    with pytest.raises(ConfigError):
        load_preset("nonexistent")
    with pytest.raises(ConfigError):
        ADV2CAM(model, Grad(model))  # wrong interpreter for this procedure
    with pytest.raises(ConfigError):
        build_attack("adv2", model, None)
    assert isinstance(build_attack("adv2", model, Grad(model), "quick"), ADV2Grad)
    assert attack_class("adv2", "cam") is ADV2CAM and attack_class("stadv-adv2", "cam") is StAdvADV2CAM
    assert isinstance(build_attack("stadv-adv2", model, CAM(model)), StAdvADV2CAM)
    with pytest.raises(ConfigError, match="no procedure"):
        attack_class("adv2", "lime")
    a = build_attack("pgd", model, None, "quick", steps=3)
    assert a.cfg.steps == 3 and a.cfg.eps == load_preset("quick").pgd.eps


# ----------------------------------------------------------------------------------------------------
# targets
# ----------------------------------------------------------------------------------------------------
def test_target_classes_never_y_and_independent_of_batch_composition():
    k = 8
    ids = [f"img-{i}" for i in range(300)]
    y = torch.arange(300) % k
    t = target_classes(y, ids, k, seed=3)
    assert bool((t != y).all()) and int(t.min()) >= 0 and int(t.max()) < k
    # every offset 1..K-1 occurs (uniform over the other classes)
    assert set(((t - y) % k).tolist()) == set(range(1, k))
    # a permuted, sub-sampled batch gets the same classes per image
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))[:37]
    t_sub = target_classes(y[perm], [ids[i] for i in perm.tolist()], k, seed=3)
    assert torch.equal(t_sub, t[perm])
    assert not torch.equal(target_classes(y, ids, k, seed=4), t)


def test_shape_maps_are_seeded_shapes_in_unit_range():
    ids = ["a", "b", "c", "d"]
    m = shape_maps(ids, 16, seed=1)
    assert m.shape == (4, 1, 16, 16) and float(m.min()) >= 0 and float(m.max()) <= 1
    assert torch.equal(m[2:], shape_maps(ids[2:], 16, seed=1))
    assert not torch.equal(m, shape_maps(ids, 16, seed=2))
    inside = (m > 0.5).float().flatten(1).mean(1)
    # shapes of half-size 30..60 px on a 224 canvas cover roughly 6 %..30 % of the map
    assert bool((inside > 0.02).all()) and bool((inside < 0.5).all())
    assert torch.allclose(shape_maps(ids, 16, seed=1, invert=True), 1 - m)


def test_target_image_pick_is_a_correctly_classified_target_class_image():
    pred = torch.tensor([0, 1, 2, 2, 1, 0])
    labels = torch.tensor([0, 1, 2, 1, 1, 2])
    target = torch.tensor([1, 2, 0, 3])
    idx = pick_target_images(pred, labels, target, ["a", "b", "c", "d"], seed=0)
    ok = {1: {1, 4}, 2: {2}, 0: {0}}
    for i, t in enumerate(target.tolist()):
        if t in ok:
            assert int(idx[i]) in ok[t]
        else:
            assert int(idx[i]) == -1


# ----------------------------------------------------------------------------------------------------
# building blocks against independent computations
# ----------------------------------------------------------------------------------------------------
def test_losses_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, generator=g)
    t = torch.tensor([0, 3, 6, 2, 2])
    for i in range(5):
        others = torch.cat([z[i, : t[i]], z[i, t[i] + 1 :]])
        assert math.isclose(float(cw_margin(z, t)[i]), float(others.max() - z[i, t[i]]), abs_tol=1e-6)
        q = torch.full((7,), 0.05 / 6)
        q[t[i]] = 0.95
        ref = -(q * torch.log_softmax(z[i], 0)).sum()
        assert math.isclose(float(cross_entropy(z, t, 0.05)[i]), float(ref), rel_tol=1e-5)
    assert torch.allclose(cw_margin(z, t, clip=-0.5), cw_margin(z, t).clamp_min(-0.5))
    assert torch.allclose(cross_entropy(z, t), F.cross_entropy(z, t, reduction="none"))


def test_interpretation_loss_reductions():
    tm = torch.rand(3, 1, 4, 4)
    fn = lambda x, c: x[:, :1, :4, :4]  # noqa: E731 - a toy "map"
    x = torch.rand(3, 3, 8, 8)
    sse = InterpretationLoss(fn, tm, "sse")(x, None)
    mse = InterpretationLoss(fn, tm, "mse")(x, None)
    ref = (x[:, :1, :4, :4] - tm).pow(2).flatten(1).sum(1)
    assert torch.allclose(sse, ref) and torch.allclose(mse, ref / 16)
    with pytest.raises(ConfigError):
        InterpretationLoss(fn, tm, "l1")


def test_adam_matches_torch_amsgrad():
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(4, 6, generator=g)
    grads = [torch.randn(4, 6, generator=g) for _ in range(7)]
    ours = Adam(0.01, amsgrad=True)
    p = p0.clone()
    ref = p0.clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.01, amsgrad=True)
    for gr in grads:
        p = ours.step(p, gr)
        ref.grad = gr.clone()
        opt.step()
    assert torch.allclose(p, ref.detach(), atol=1e-6)


def test_warp_and_flow_loss():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 9, 9, generator=g)
    assert torch.allclose(warp(x, torch.zeros(2, 2, 9, 9)), x, atol=1e-6)
    # an integer shift of one pixel to the right samples the left neighbour's... i.e. x[..., j+1]
    flow = torch.zeros(2, 2, 9, 9)
    flow[:, 0] = 1.0
    w = warp(x, flow)
    assert torch.allclose(w[..., :-1], x[..., 1:], atol=1e-6)
    assert torch.allclose(w[..., -1], x[..., -1], atol=1e-6)  # clamped at the border
    # constant flow: every neighbour difference is 0 -> sqrt(1e-8) per (pixel, neighbour)
    const = torch.full((1, 2, 5, 5), 0.3)
    assert torch.allclose(flow_loss(const), torch.tensor([4 * 25 * 1e-4]), rtol=1e-4)
    # an independent loop for the diagonal neighbourhood with replicate padding
    f = torch.randn(1, 2, 5, 5, generator=g)
    ref = 0.0
    for i in range(5):
        for j in range(5):
            for di, dj in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
                a, b = min(max(i + di, 0), 4), min(max(j + dj, 0), 4)
                ref += math.sqrt(float(((f[0, :, a, b] - f[0, :, i, j]) ** 2).sum()) + 1e-8)
    assert math.isclose(float(flow_loss(f)[0]), ref, rel_tol=1e-5)
    assert not math.isclose(float(flow_loss(f, "4-connected")[0]), ref, rel_tol=1e-3)


def test_pgd_matches_an_independent_loop(model, small):
    b, t = small
    x = b.images[:2]
    res = PGD(model, steps=7, eps=0.03, alpha=0.01)(x, t[:2])
    ref = x.clone()
    for _ in range(7):
        ref.requires_grad_(True)
        loss = F.cross_entropy(model(ref), t[:2], reduction="sum")
        (gr,) = torch.autograd.grad(loss, ref)
        ref = ref.detach() - 0.01 * gr.sign()
        ref = torch.min(torch.max(ref, x - 0.03), x + 0.03).clamp(0, 1)
    assert torch.allclose(res.x_adv, ref, atol=1e-6)
    assert res.steps.tolist() == [7, 7] and res.reasons == [None, None]


# ----------------------------------------------------------------------------------------------------
# invariants
# ----------------------------------------------------------------------------------------------------
def _check_ball(x_adv, x, eps):
    assert float((x_adv - x).abs().max()) <= eps + EPS_TOL
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


@pytest.mark.parametrize("eps", [0.01, 0.2])
def test_eps_ball_and_unit_range_always_hold(model, small, eps):
    b, t = small
    x, y = b.images, b.labels
    _check_ball(PGD(model, steps=6, eps=eps, alpha=0.02)(x, t).x_adv, x, eps)
    # Grad's stage 1 skips the [0,1] clip; the result must still be a valid image
    g = ADV2Grad(model, Grad(model), eps=eps, alpha=0.02, stage1_steps=4, stage2_steps=(1, 1, 1, 1), lambdas=(1, 1, 1, 1),
                 select_every=1, select_p_threshold=0.0)
    _check_ball(g(x[:3], t[:3], y=y[:3]).x_adv, x[:3], eps)
    _check_ball(ADV2CAM(model, CAM(model), eps=eps, alpha=0.02, stage1_steps=3, stage2_steps=4)(x, t, y=y).x_adv, x, eps)


def test_grad_stage2_alpha_sets_the_stage2_step_only(model, small):
    """``stage2_alpha`` (the real preset's cut compensation) bounds every stage-2 step; stage 1 keeps alpha.
    Best-iterate selection every step with p_t > 0 keeps an iterate of stage 2, so x_adv lies within
    (steps - 1) x stage2_alpha of the stage-1 result (stage 2's step 0), and a full-size alpha leaves it."""
    b, t = small
    x, y, t = b.images[:3], b.labels[:3], t[:3]
    common = dict(eps=0.1, alpha=0.02, stage1_steps=4, lambdas=(0.01,), select_every=1, select_p_threshold=0.0)
    start = ADV2Grad(model, Grad(model), stage2_steps=(1,), **common)(x, t, y=y).x_adv  # stage 2's step 0
    fine = ADV2Grad(model, Grad(model), stage2_steps=(5,), stage2_alpha=1e-4, **common)(x, t, y=y)
    coarse = ADV2Grad(model, Grad(model), stage2_steps=(5,), **common)(x, t, y=y)
    assert float((fine.x_adv - start).abs().max()) <= 4e-4 + 1e-6
    assert float((coarse.x_adv - start).abs().max()) > 4e-4  # the same run at alpha steps leaves that box
    assert ADV2Grad(model, Grad(model)).cfg.stage2_alpha is None  # the paper: alpha throughout


def test_batch_equals_images_one_by_one(model64, small):
    """float64 makes the batched kernels batch-invariant, so any coupling would show as a difference."""
    b, t = small
    n = 3
    x, y, ids, t = b.images[:n].double(), b.labels[:n], b.ids[:n], t[:n]
    attacks = [
        PGD(model64, steps=8, alpha=0.01),
        ADV2CAM(model64, CAM(model64), stage1_steps=4, stage2_steps=8, alpha=0.01),
        ADV2Grad(model64, Grad(model64), stage1_steps=2, stage2_steps=(1, 1, 1, 1), select_every=1, select_p_threshold=0.2),
        StAdv(model64, steps=6),
    ]
    for att in attacks:
        full = att(x, t, y=y, ids=ids)
        ones = [att(x[i : i + 1], t[i : i + 1], y=y[i : i + 1], ids=ids[i : i + 1]) for i in range(n)]
        assert torch.allclose(full.x_adv, torch.cat([o.x_adv for o in ones]), atol=1e-10), type(att).__name__
        assert full.success.tolist() == [bool(o.success) for o in ones]
        assert full.steps.tolist() == [int(o.steps) for o in ones]


def test_same_seed_same_result_and_seed_matters(model, small):
    b, t = small
    x = b.images[:3]
    r1 = StAdv(model, steps=3, seed=5)(x, t[:3], ids=b.ids[:3])
    r2 = StAdv(model, steps=3, seed=5)(x, t[:3], ids=b.ids[:3])
    r3 = StAdv(model, steps=3, seed=6)(x, t[:3], ids=b.ids[:3])
    assert torch.equal(r1.x_adv, r2.x_adv) and not torch.equal(r1.x_adv, r3.x_adv)


def test_stadv_flow_stays_finite_and_loss_decreases(model, small):
    b, t = small
    x = b.images
    res = StAdv(model, steps=25)(x, t, ids=b.ids)
    flow, trace = res.extras["flow"], res.extras["loss_trace"]
    assert bool(torch.isfinite(flow).all()) and bool(torch.isfinite(trace).all())
    assert trace.shape == (25, x.shape[0])
    assert bool((trace[-1] < trace[0]).all())
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    # the flow moved away from its U(-0.1, 0.1) start and x_adv is its warp
    assert float(flow.abs().max()) > 0.1
    assert torch.allclose(res.x_adv, warp(x, flow), atol=1e-6)


def test_stadv_adv2_runs_and_keeps_images_valid(model, small):
    b, t = small
    x, y = b.images[:3], b.labels[:3]
    res = StAdvADV2CAM(model, CAM(model), stage1_steps=5, stage2_steps=5)(x, t[:3], y=y, ids=b.ids[:3])
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1 and bool(torch.isfinite(res.extras["flow"]).all())
    assert res.steps.tolist() == [10, 10, 10]


def test_early_stop_freezes_successful_samples(model, small):
    b, t = small
    full = PGD(model, steps=20, eps=0.1, alpha=0.01)(b.images, t)
    es = PGD(model, steps=20, eps=0.1, alpha=0.01, early_stop=True)(b.images, t)
    assert bool(es.success.all()) and bool(full.success.all())
    assert bool((es.steps < 20).any()) and bool((es.steps <= full.steps).all())
    # a stopped sample is its iterate at the stopping step: the unstopped run passes through it
    first = int(es.steps.argmin())
    short = PGD(model, steps=int(es.steps[first]), eps=0.1, alpha=0.01)(b.images[first : first + 1], t[first : first + 1])
    assert torch.allclose(short.x_adv, es.x_adv[first : first + 1], atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# numerical failures
# ----------------------------------------------------------------------------------------------------
class _PoisonedCAM(CAM):
    """CAM whose *attack* path returns NaN for one sample position (benign maps stay clean)."""

    def __init__(self, model, bad: int) -> None:
        super().__init__(model)
        self.bad = bad

    def maps_and_logits(self, x, target):
        m, logits = super().maps_and_logits(x, target)
        if torch.is_grad_enabled() and x.requires_grad:
            poison = torch.zeros(x.shape[0], 1, 1, 1, dtype=m.dtype)
            poison[self.bad] = math.nan
            m = m + poison
        return m, logits


class _NaNLogits(torch.nn.Module):
    def __init__(self, model, bad: int) -> None:
        super().__init__()
        self.model, self.bad = model, bad

    def forward(self, x):
        z = self.model(x)
        poison = torch.zeros(x.shape[0], 1)
        poison[self.bad] = math.nan
        return z + poison


def test_nan_marks_one_sample_failed_and_the_others_go_on(model, small):
    b, t = small
    x, y = b.images, b.labels
    clean = CAM(model)
    target_map = clean.explain(x, y)
    att = ADV2CAM(model, _PoisonedCAM(model, bad=2), eps=0.1, alpha=0.01, stage1_steps=15, stage2_steps=6)
    res = att(x, t, target_map=target_map, ids=b.ids)
    assert res.failed.tolist() == [i == 2 for i in range(6)]
    assert res.reasons[2] == "non-finite loss" and all(r is None for i, r in enumerate(res.reasons) if i != 2)
    assert not bool(res.success[2]) and bool(res.success[[0, 1, 3, 4, 5]].all())
    assert int(res.steps[2]) == 15 and set(res.steps[[0, 1, 3, 4, 5]].tolist()) == {21}
    assert bool(torch.isfinite(res.x_adv).all())
    # a NaN in the classifier itself freezes the sample from step 0
    res = PGD(_NaNLogits(model, bad=0), steps=5, eps=0.1, alpha=0.01)(x, t)
    assert res.failed.tolist() == [True] + [False] * 5 and res.steps.tolist() == [0] + [5] * 5
    assert torch.equal(res.x_adv[0], x[0])


# ----------------------------------------------------------------------------------------------------
# MASK (tiny settings: the mechanics, not the strength)
# ----------------------------------------------------------------------------------------------------
def _tiny_mask(model):
    from adv2core.interpreters.config import load_interpreter_config
    from adv2core.interpreters.mask import MASK

    return MASK(model, load_interpreter_config("quick")["mask"].model_copy(update={"iterations": 10}))


@pytest.mark.parametrize("code_compatible", [False, True])
def test_adv2_mask_mechanics(model, small, code_compatible):
    b, t = small
    x, y, ids = b.images[:3], b.labels[:3], b.ids[:3]
    mk = _tiny_mask(model)
    att = ADV2Mask(model, mk, eps=0.06, alpha=0.01, stage1_steps=10, stage2_steps=4, resolve_every=2, inner_plain=1,
                   inner_unrolled=1, ls_bisections=3, margin_threshold=-0.5, code_compatible=code_compatible)
    res = att(x, t[:3], y=y, ids=ids)
    _check_ball(res.x_adv, x, 0.06)
    assert res.adv_map is not None and res.adv_map.shape == (3, 1, mk.map_size(), mk.map_size())
    steps = res.extras["ls_step_trace"]
    assert steps.shape == (4, 3) and float(steps.min()) >= 0 and float(steps.max()) <= att.cfg.ls_max
    if code_compatible:  # one scalar condition for the whole batch
        assert bool((steps == steps[:, :1]).all())
    # success = a snapshot exists whose truncated image is classified as c_t; selected steps are snapshots
    sel = res.selected_step[res.success]
    assert bool(((sel - att.cfg.stage1_steps) % 2 == 1).all())


def test_adv2_mask_short_stage2_snapshots_the_last_iterate(model, small):
    """A stage 2 shorter than resolve_every (e.g. a step-capped pipeline run) still selects a snapshot."""
    b, t = small
    x, y, ids = b.images[:2], b.labels[:2], b.ids[:2]
    att = ADV2Mask(model, _tiny_mask(model), eps=0.1, alpha=0.02, stage1_steps=10, stage2_steps=1, resolve_every=50,
                   inner_plain=1, inner_unrolled=1, ls_bisections=2, margin_threshold=-0.5)
    res = att(x, t[:2], y=y, ids=ids)
    with torch.no_grad():
        hit = model(torch.floor(res.x_adv * 255) / 255).argmax(1) == t[:2]
    assert res.success.tolist() == hit.tolist()
    assert res.selected_step[res.success].tolist() == [11] * int(res.success.sum())


# ----------------------------------------------------------------------------------------------------
# no host syncs inside the step loops
# ----------------------------------------------------------------------------------------------------
_SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@pytest.fixture
def forbid_host_syncs(monkeypatch):
    """Make every Python-level device->host transfer raise while an attack's ``_run`` executes.

    ``Status.reasons`` (the one conversion after the loops) is stubbed; everything else in ``_run`` —
    step loops, best-iterate/snapshot bookkeeping, line search — must stay on the device.
    """
    from adv2core.attacks import base

    def boom(self, *a, **k):
        raise AssertionError("host sync inside an attack loop")

    monkeypatch.setattr(base.Status, "reasons", lambda self: [None] * self.failed.shape[0])

    def arm():
        for name in _SYNC_METHODS:
            monkeypatch.setattr(torch.Tensor, name, boom)

    return arm


def test_attack_loops_do_not_sync(model, small, forbid_host_syncs):
    b, t = small
    x, y, ids = b.images[:2], b.labels[:2], b.ids[:2]
    t = t[:2]
    cam, grad, mk = CAM(model), Grad(model), _tiny_mask(model)
    jobs = [
        (PGD(model, steps=3), None),
        (ADV2CAM(model, cam, stage1_steps=2, stage2_steps=2), cam.explain(x, y)),
        (ADV2Grad(model, grad, stage1_steps=2, stage2_steps=(2, 1, 1, 1), select_every=1, select_p_threshold=0.0), grad.explain(x, y)),
        (StAdv(model, steps=2), None),
        (StAdvADV2CAM(model, cam, stage1_steps=2, stage2_steps=2), cam.explain(x, y)),
        (ADV2Mask(model, mk, stage1_steps=2, stage2_steps=2, resolve_every=1, inner_plain=1, inner_unrolled=1, ls_bisections=2),
         mk.explain(x, y, ids=ids)),
        (StAdvADV2Grad(model, grad, stage1_steps=2, stage2_steps=(1, 1, 1, 1), select_every=1, select_p_threshold=0.0),
         grad.explain(x, y)),
        (StAdvADV2Mask(model, mk, stage1_steps=2, stage2_steps=2, resolve_every=1, inner_plain=1, inner_unrolled=1),
         mk.explain(x, y, ids=ids)),
    ]
    forbid_host_syncs()
    for att, tmap in jobs:
        res = att._run(x, t, tmap, list(ids))
        assert res.x_adv.shape == x.shape
        if tmap is not None and type(att).__name__ not in ("ADV2CAM", "StAdvADV2CAM"):
            assert res.adv_map is not None and res.selected_step is not None  # best-iterate / snapshot attacks
