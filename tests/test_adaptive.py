"""Adaptive ADV^2 (adv2-ens, adv2-fs), the differentiable squeezers and the AID-hardened RTS (rts-aid).

Independent computations: the ensemble loss is rebuilt from each interpreter's own map; the squeezers'
forward passes are compared with the detector's (scipy / the rounding in adv2core.defences.squeeze); the
FS score of the adaptive attack is measured with the detector's own squeezers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adv2core.attacks import ADV2Ensemble, ADV2FSCAM, ADV2FSRTS, ADV2RTS, attack_class, build_attack, load_preset
from adv2core.attacks.config import ADV2EnsembleConfig, ADV2FSCAMConfig, AttacksConfig
from adv2core.defences.squeeze import bit_depth, median, squeezer_distances
from adv2core.defences.squeeze_diff import bit_depth_st, median_st
from adv2core.errors import ConfigError, validate_config
from adv2core.interpreters.aid import aid_checkpoint_path, fit_aid, inner_adv2
from adv2core.interpreters.cam import CAM
from adv2core.interpreters.config import RTSAIDConfig, load_interpreter_config
from adv2core.interpreters.grad import Grad
from adv2core.interpreters.registry import InterpreterSpec, build_interpreter, interpreter_spec
from adv2core.interpreters.rts import RTS, RTSAID
from adv2core.interpreters.rts_model import build_masker
from adv2core.models.checkpoint import save_checkpoint

QUICK = load_preset("quick")
TINY_RTS = dict(decoder_base=8, black_box_autocast="off")
#: AID test (quick preset's AID on the tests' RTS masker): images, and bars set from the measurements in
#: the test's docstring
AID_IMAGES = 32
AID_MIN_IOU_DROP = 0.01
AID_MIN_L1_RATIO = 1.05
AID_LOC_FLOOR = 0.35
# The RTS recipe AID's settings were tuned and its bars measured on: the quick preset's before 2026-12-04.
# The current quick masker gates the encoder skips by the class (rts.gate_skips), and AID with these
# settings does not harden it (benchmarks/aid_sweep.py, 2026-12-04, AMD, 2 threads: ADV^2 top-k IoU 0.669 ->
# 0.674, L1 0.088 -> 0.079; 240 iterations, lr 3e-3, sep_weight 30, 4 + 12 inner steps or a frozen selector
# no better): README "Adaptive ADV^2 and AID" says so. This test keeps checking that AID works where it was shown to.
AID_BASE_RTS = {"gate_skips": False, "phase1_iterations": 200, "phase1_lr_step": 150, "phase2_batch_size": 16,
                "phase2_fake_prob": 0.3, "area_coeff": 4.0}
TINY_AID = dict(iterations=1, batch_size=2, attack_stage1_steps=1, attack_steps=1, lr=1e-2, attack_eps=0.0627,
                attack_alpha=0.0157)


@pytest.fixture(scope="module")
def model(trained_resnet):
    return trained_resnet[0]


@pytest.fixture(scope="module")
def batch(model, test_batch):
    with torch.no_grad():
        ok = (model(test_batch.images).argmax(1) == test_batch.labels).nonzero().flatten()[:4].tolist()
    return test_batch.select(ok)


def _aid_cfg(**aid) -> RTSAIDConfig:
    base = load_interpreter_config("quick")["rts"].model_copy(update=TINY_RTS)
    return RTSAIDConfig(**base.model_dump(), aid={**TINY_AID, **aid})


def _rts(model, cls=RTS) -> RTS:
    torch.manual_seed(0)
    masker = build_masker(model, load_interpreter_config("quick")["rts"].model_copy(update=TINY_RTS))
    with torch.no_grad():  # a non-trivial untrained masker: random decoder weights give varied masks
        for p in masker.decoder_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return cls(model, masker, confidence=6.0)


# ----------------------------------------------------------------------------------------------------
# adv2-ens
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("members,weights", [(("grad", "cam"), (0.7, 1.3)), (("cam", "rts"), (0.5, 2.0))])
def test_ensemble_loss_is_the_weighted_sum_of_the_members(model, batch, members, weights):
    interps = {"grad": Grad(model), "cam": CAM(model), "rts": _rts(model)}
    primary = interps[members[0]]
    cfg = {"members": members, "weights": weights, "extra_weight": 0.1}
    attack = build_attack("adv2-ens", model, primary, cfg, members={m: interps[m] for m in members[1:]})
    assert isinstance(attack, ADV2Ensemble)
    x0, y = batch.images, batch.labels
    t = (y + 1) % model.num_classes
    m0 = primary.explain(x0, y)
    losses = attack.member_losses(x0, m0, [str(i) for i in range(len(y))], y)
    x = (x0 + 0.03 * torch.randn_like(x0)).clamp(0, 1)
    got, logits = attack.ensemble_objective(t, losses, lambda i: 2.0)(x, 0)

    want = F.cross_entropy(model(x), t, reduction="none")
    for name, w in zip(members, weights):
        interp = interps[name]
        m_t = interp.explain(x0, y)
        want = want + 2.0 * w * (interp.differentiable_map(x, t) - m_t).square().flatten(1).mean(dim=1)
        if name == "rts":
            want = want + 0.1 * F.cross_entropy(interp.encoder_logits(x), t, reduction="none")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.heavy  # ~40 s of CPU (Grad's double backward for 22 steps)
def test_ensemble_attack_runs_and_improves_both_maps(model, batch):
    """A short joint attack: both members' maps of x_adv stay closer to their benign maps than the
    members' maps of a PGD example do (the point of attacking both)."""
    grad, cam = Grad(model), CAM(model)
    x, y = batch.images, batch.labels
    t = (y + 1) % model.num_classes
    short = {"stage1_steps": 10, "stage2_steps": 12}
    ens = build_attack("adv2-ens", model, cam, QUICK, members={"grad": grad}, **short)
    res = ens(x, t, y=y, target_map=cam.explain(x, y))
    pgd = build_attack("pgd", model, None, QUICK, steps=10)(x, t)
    assert res.x_adv.shape == x.shape and (res.x_adv - x).abs().max() <= QUICK.adv2_ens.eps + 1e-6
    for interp in (grad, cam):
        ben = interp.explain(x, y)
        d_ens = (interp.explain(res.x_adv, t) - ben).abs().mean()
        d_pgd = (interp.explain(pgd.x_adv, t) - ben).abs().mean()
        assert d_ens < d_pgd, (interp.name, float(d_ens), float(d_pgd))


# ----------------------------------------------------------------------------------------------------
# registry, config
# ----------------------------------------------------------------------------------------------------
def test_registry_builds_the_new_attacks_and_interpreter(model, tmp_path):
    cam = CAM(model)
    ens = build_attack("adv2-ens", model, cam, QUICK)  # grad built through the interpreter registry
    assert isinstance(ens.members["grad"], Grad) and ens.members["cam"] is cam
    fs = build_attack("adv2-fs", model, cam, QUICK)
    assert isinstance(fs, ADV2FSCAM) and fs.cfg == QUICK.adv2_fs.cam
    assert attack_class("adv2-fs", "rts-aid") is ADV2FSRTS and attack_class("adv2", "rts-aid") is ADV2RTS

    cfg = _aid_cfg()
    masker = _rts(model).masker
    path = tmp_path / "aid.pt"
    save_checkpoint(path, masker.state_dict(), {"note": "test"})
    aid = build_interpreter(InterpreterSpec("rts-aid", cfg, path), model)
    assert isinstance(aid, RTSAID) and aid.name == "rts-aid" and aid.checkpoint_path == path
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(aid.explain(x, torch.tensor([0, 1])), masker(x, torch.tensor([0, 1]), 6.0)[0])
    # rts-aid is attacked with RTS's settings: before/after-AID numbers differ only in the interpreter
    assert build_attack("adv2", model, aid, QUICK).cfg == QUICK.adv2.rts
    assert build_attack("adv2-fs", model, aid, QUICK).cfg == QUICK.adv2_fs.rts
    # the preset's rts-aid section inherits the rts recipe
    spec = interpreter_spec("rts-aid", "quick")
    assert spec.config.base() == load_interpreter_config("quick")["rts"]


@pytest.mark.parametrize("bad", [
    lambda: validate_config(ADV2EnsembleConfig, {"members": ["grad"], "weights": [1.0]}),
    lambda: validate_config(ADV2EnsembleConfig, {"members": ["grad", "mask"], "weights": [1.0, 1.0]}),
    lambda: validate_config(ADV2EnsembleConfig, {"weights": [1.0]}),
    lambda: validate_config(ADV2FSCAMConfig, {"median_mix": [1.0]}),
    lambda: validate_config(AttacksConfig, {"adv2_fs": {"cam": {"bit_depth": 9}}}),
    lambda: interpreter_spec("rts-aid", config={"aid": {"sep_margin": 2.0}}),
])
def test_bad_config_is_a_one_line_config_error(bad):
    with pytest.raises(ConfigError) as exc:
        bad()
    assert "\n" not in str(exc.value)


def test_ensemble_needs_the_cell_interpreter_among_its_members(model):
    with pytest.raises(ConfigError, match="not a member") as exc:
        build_attack("adv2-ens", model, Grad(model), {"members": ["cam", "rts"], "weights": [1, 1]})
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="takes no members"):
        build_attack("adv2", model, CAM(model), QUICK, members={"grad": Grad(model)})


def test_the_flow_config_carries_the_new_sections():
    from adv2core.config import load_config

    rc = load_config("smoke", overrides=["attacks.names=[adv2, adv2-fs, adv2-ens]", "interpreters.names=[cam, rts-aid]",
                                         "attacks.preset=quick", "interpreters.preset=quick"]).resolve()
    ap = rc.attack_params
    assert set(ap["adv2_fs"]) == {"cam", "rts"} and set(ap["adv2"]) == {"cam", "rts"} and "adv2_ens" in ap
    assert "target" in ap
    aid = rc.interpreter_params["rts-aid"]
    assert aid["decoder_base"] == load_interpreter_config("quick")["rts"].decoder_base and "aid" in aid
    got, want = validate_config(AttacksConfig, ap).adv2_fs.cam, QUICK.adv2_fs.cam  # (smoke caps the step counts)
    assert (got.fs_weight, got.bit_threshold, got.median_thresholds) == (want.fs_weight, want.bit_threshold, want.median_thresholds)


# ----------------------------------------------------------------------------------------------------
# differentiable squeezers and adv2-fs
# ----------------------------------------------------------------------------------------------------
def test_straight_through_squeezers_match_the_detector_forward():
    x = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    for bits in (1, 3, 5):
        torch.testing.assert_close(bit_depth_st(x, bits), bit_depth(x, bits))
    for k in (2, 3):
        torch.testing.assert_close(median_st(x, k), median(x, k))
        torch.testing.assert_close(median_st(x, k, "identity"), median(x, k))
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(bit_depth_st(xr, 3).sum(), xr)
    assert torch.equal(g, torch.ones_like(x))  # straight-through: identity backward
    (g,) = torch.autograd.grad(median_st(xr, 3).sum(), xr)
    assert float(g.sum()) == pytest.approx(x.numel())  # each output pixel sends its gradient to one input
    assert int((g == 0).sum()) > 0  # ... the selected one, not to all


def test_fs_term_is_the_thresholded_squeezed_distance(model, batch):
    """fs_term against an independent computation with the detector's squeezers (same forward values)."""
    from adv2core.attacks import fs_term

    x = batch.images[:2]
    cfg = QUICK.adv2_fs.cam.model_copy(update={"bit_threshold": 0.01, "median_thresholds": (0.02, 0.0), "fs_weight": 0.5})
    logits = model(x)
    got = fs_term(model, x, logits, cfg)
    p = torch.softmax(logits, 1)

    def dist(sq):
        return (p - torch.softmax(model(sq), 1)).abs().sum(1)

    want = cfg.bit_weight * F.relu(dist(bit_depth(x, 3)) - 0.75 * 0.01)
    want = want + cfg.median_weight * (0.75 * F.relu(dist(median(x, 2)) - 0.75 * 0.02) + 0.25 * dist(median(x, 3)))
    torch.testing.assert_close(got, 0.5 * want, atol=1e-5, rtol=1e-4)
    off = cfg.model_copy(update={"bit_threshold": 2.0, "median_thresholds": (2.0, 2.0), "margin": 1.0})
    assert torch.equal(fs_term(model, x, logits, off), torch.zeros(2))  # L1 of softmaxes never exceeds 2


@pytest.mark.heavy  # ~110 s of CPU on 2 cores (5 classifier passes per step)
def test_fs_adaptive_adv2_lowers_the_fs_score(model, batch):
    """On the same images and targets, adv2-fs's examples score lower under the detector's squeezers
    (max over bit3, median2, median3 of the softmax L1, the spec's joint score) than plain ADV^2's."""
    cam = CAM(model)
    x, y = batch.images, batch.labels
    t = (y + 1) % model.num_classes
    short = {"stage1_steps": 15, "stage2_steps": 20}
    plain = build_attack("adv2", model, cam, QUICK, **short)(x, t, y=y)
    adapt = build_attack("adv2-fs", model, cam, QUICK, **short)(x, t, y=y)

    def score(xa):
        q = torch.round(xa * 255) / 255
        d = squeezer_distances(model, q, ["bit3", "median2", "median3"])
        return torch.stack(list(d.values())).amax(dim=0)

    s_plain, s_adapt = score(plain.x_adv), score(adapt.x_adv)
    print(f"\nFS score plain {s_plain.tolist()} adaptive {s_adapt.tolist()}; success {plain.success.tolist()} {adapt.success.tolist()}")
    assert float(s_adapt.mean()) < 0.8 * float(s_plain.mean())
    assert adapt.success.float().mean() >= 0.5


# ----------------------------------------------------------------------------------------------------
# AID
# ----------------------------------------------------------------------------------------------------
def test_aid_training_changes_the_masker_and_its_inner_attack_stays_in_the_ball(model, batch):
    cfg = _aid_cfg()
    rts = _rts(model)
    x, y = batch.images, batch.labels
    t = (y + 1) % model.num_classes
    xa = inner_adv2(rts.masker, model, x, t, rts.explain(x, y), cfg.aid, 6.0)
    assert (xa - x).abs().max() <= cfg.aid.attack_eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert not rts.masker.training  # restored

    before = {k: v.clone() for k, v in rts.masker.state_dict().items()}
    images, labels = batch.images, batch.labels
    metrics = fit_aid(rts.masker, model, images, labels, cfg)
    after = rts.masker.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("stages.") for k in changed) and any(k.startswith("selector.") for k in changed)
    assert not any(k.startswith("encoder.") for k in changed)  # the encoder stays frozen
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert not any(p.requires_grad for p in rts.masker.parameters())


def test_aid_cache_key_follows_the_aid_settings_and_the_base_recipe(model, small_data_cfg):
    a = aid_checkpoint_path(model, _aid_cfg(), small_data_cfg, None)
    assert a == aid_checkpoint_path(model, _aid_cfg().model_copy(update={"model_confidence": 0.0}), small_data_cfg, None)
    assert a != aid_checkpoint_path(model, _aid_cfg(sep_weight=2.0), small_data_cfg, None)
    assert a != aid_checkpoint_path(model, _aid_cfg().model_copy(update={"area_coeff": 4.5}), small_data_cfg, None)
    assert a.name.startswith("rts-aid-resnet-mini-")


def test_aid_on_a_model_it_cannot_train_is_a_gate_refusal_with_one_line(model):
    """rts-aid for a non-embedded model without a checkpoint is refused (GateError, so `on_refused: skip` in
    the real preset reports it and goes on), not a configuration error that ends the run."""
    import copy

    from adv2core.gates import GateError
    from adv2core.interpreters.aid import load_or_train_aid_masker

    other = copy.deepcopy(model)
    other.name = "my-imagenet-net"
    with pytest.raises(GateError) as e:
        load_or_train_aid_masker(other, _aid_cfg(), train_if_missing=True)
    msg = str(e.value)
    assert "\n" not in msg and "my-imagenet-net" in msg and "checkpoint=PATH" in msg


@pytest.mark.slow
@pytest.mark.heavy  # trains an RTS masking model of AID_BASE_RTS (~40 s) and AID (~60 s)
@pytest.mark.quality
def test_aid_makes_adv2_maps_less_similar_and_keeps_localisation(model, small_data_cfg, small_rts_update):
    """AID with the quick preset's settings, on a 200-iteration RTS masking model of resnet-mini with the
    recipe AID was tuned on (``AID_BASE_RTS``):
    ADV^2-RTS (quick preset) against the hardened masker ends further from that masker's benign maps (lower
    top-k IoU, higher L1) than against the masker it started from, on the same images and targets, while
    the hardened masker still localises the object (true class above a floor and above the wrong class).

    Measured with benchmarks/aid_sweep.py on the 2-core AMD EPYC host (2026-12-02, one thread), AID seeds 0-2
    on two base maskers (fixture and RTS trained at two threads, as `make test-heavy` does; and at one thread,
    as CI's one-thread pass does): IoU drop 0.043-0.073 / 0.021-0.065, L1 x 1.35-1.43 / x 1.11-1.24,
    localisation >= 0.43 true and >= 0.28 above the wrong class; README "Adaptive ADV^2 and AID" has the table.
    This test at two threads on the two-thread base (what `make test-heavy` runs): IoU 0.748 -> 0.711, L1
    0.0505 -> 0.0737, localisation 0.487 / 0.155. The bars sit below the worst run; the effect is small, so
    they are not far below it."""
    import numpy as np

    from adv2core.bench.cell import run_cell, select_population
    from adv2core.data.synthetic import EmbeddedDataset
    from adv2core.interpreters.localization import localization_report

    cfgs = load_interpreter_config("quick")
    update = {**AID_BASE_RTS, **small_rts_update}
    rts = build_interpreter(InterpreterSpec("rts", cfgs["rts"].model_copy(update=update)), model,
                            data_cfg=small_data_cfg, train_if_missing=True)
    aid = build_interpreter(InterpreterSpec("rts-aid", cfgs["rts-aid"].model_copy(update=update)), model,
                            data_cfg=small_data_cfg, train_if_missing=True)
    ds = EmbeddedDataset("test", small_data_cfg)
    correct = select_population(model, ds.load(list(range(64))), "correct")[0]
    batch = correct.select(list(range(min(AID_IMAGES, len(correct)))))
    res = {i.name: run_cell("resnet-mini", i.name, "adv2", batch, QUICK, seed=0, device="cpu", model=model, interpreter=i)
           for i in (rts, aid)}
    both = np.array([a["success"] and b["success"] for a, b in zip(res["rts"].rows, res["rts-aid"].rows)])
    iou = {n: float(np.mean([row["iou_mean"] for row, k in zip(r.rows, both) if k])) for n, r in res.items()}
    l1 = {n: float(np.mean([row["l1"] for row, k in zip(r.rows, both) if k])) for n, r in res.items()}
    loc = {i.name: localization_report(i, *ds.tensors()) for i in (rts, aid)}
    print(f"\nAID: {both.sum()} of {len(both)} successful against both; ADV2 top-k IoU {iou['rts']:.3f} -> "
          f"{iou['rts-aid']:.3f}, L1 {l1['rts']:.4f} -> {l1['rts-aid']:.4f}; localisation true/wrong "
          f"{loc['rts']['iou_true']:.3f}/{loc['rts']['iou_wrong']:.3f} -> {loc['rts-aid']['iou_true']:.3f}/{loc['rts-aid']['iou_wrong']:.3f}")
    assert both.sum() >= 0.8 * len(both)
    assert iou["rts-aid"] <= iou["rts"] - AID_MIN_IOU_DROP
    assert l1["rts-aid"] >= AID_MIN_L1_RATIO * l1["rts"]
    assert loc["rts-aid"]["iou_true"] >= AID_LOC_FLOOR
    assert loc["rts-aid"]["iou_true"] >= loc["rts-aid"]["iou_wrong"] + 0.1
