"""RTS: masking-model geometry, a brief training that must beat an untrained model, checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from adv2core.errors import CheckpointError
from adv2core.interpreters.config import RTSConfig, load_interpreter_config
from adv2core.interpreters.registry import InterpreterSpec, build_interpreter, interpreter_spec
from adv2core.interpreters.rts import RTS
from adv2core.interpreters.rts_model import build_masker
from adv2core.interpreters.rts_training import (
    area_loss,
    cw_loss,
    fit_rts,
    localization_report,
    rts_checkpoint_path,
    smoothness_loss,
    wrong_classes,
)
from adv2core.models.checkpoint import save_checkpoint

#: A tiny recipe for tests: few iterations, a higher learning rate, small batches, float32 black box
#: (bf16 autocast would make the numbers depend on the CPU).
TINY = dict(
    phase1_iterations=40, phase1_batch_size=64, phase1_lr=3e-2, phase1_lr_step=None,
    phase2_iterations=30, phase2_batch_size=16, phase2_lr=5e-3, phase2_lr_step=None, black_box_autocast="off",
)


def _cfg(**kw) -> RTSConfig:
    return load_interpreter_config("quick")["rts"].model_copy(update={**TINY, **kw})  # type: ignore[return-value]


def _rts(model, cfg: RTSConfig, checkpoint=None, **kw) -> RTS:
    """RTS built the one way the project builds it: a spec through the registry."""
    interp = build_interpreter(InterpreterSpec("rts", cfg, checkpoint), model, **kw)
    assert isinstance(interp, RTS)
    return interp


@pytest.fixture(scope="module")
def resnet(trained_resnet):
    return trained_resnet[0]


@pytest.fixture(scope="module")
def densenet():
    """An untrained (seeded) densenet-mini: these tests need its architecture and its companion-encoder
    wiring, not its accuracy, so they skip training it (the attack tests train the fixture)."""
    from adv2core.models.mini import densenet_mini

    torch.manual_seed(0)
    return densenet_mini(8, 64).eval().requires_grad_(False)


# --- geometry ------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["resnet", "densenet"])
def test_shape_range_and_gradient(which, request, test_batch, resnet):
    model = request.getfixturevalue(which)
    # densenet-mini's encoder is the trained resnet-mini (the paper's RTS-DenseNet has a ResNet encoder)
    encoder_model = resnet if which == "densenet" else None
    rts = RTS(model, build_masker(model, _cfg(), encoder_model), confidence=6.0)
    assert rts.masker.encoder_pretrained
    x, y = test_batch.images[:4], test_batch.labels[:4]
    m = rts.explain(x, y)
    assert rts.map_size() == 16 and m.shape == (4, 1, 16, 16)
    assert float(m.min()) >= 0 and float(m.max()) <= 1 and not m.requires_grad
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(rts.differentiable_map(xr, y).sum(), xr)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0
    # the encoder is a frozen copy of its network: its head gives that network's logits
    head = encoder_model or model
    torch.testing.assert_close(rts.encoder_logits(x), head(x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rts.extra_attack_loss(x, y), F.cross_entropy(head(x), y, reduction="none"), atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in rts.masker.parameters())


def test_fused_map_and_extra_loss_equal_the_separate_ones(densenet, resnet, test_batch):
    """ADV^2-RTS takes the mask and the encoder-head CE from one encoder pass; values and gradients equal
    those of the two separate calls (which run the encoder twice)."""
    from adv2core.passes import PassCounter

    rts = RTS(densenet, build_masker(densenet, _cfg(), resnet), confidence=6.0)
    x, y = test_batch.images[:3], test_batch.labels[:3]
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with PassCounter() as fused:
        m, extra = rts.map_and_extra_loss(xa, y)
    with PassCounter() as separate:
        m2, extra2 = rts.differentiable_map(xb, y), rts.extra_attack_loss(xb, y)
    torch.testing.assert_close(m, m2)
    torch.testing.assert_close(extra, extra2)
    (ga,) = torch.autograd.grad((m.square().sum() + extra.sum()), xa)
    (gb,) = torch.autograd.grad((m2.square().sum() + extra2.sum()), xb)
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-5)
    assert fused.flops < separate.flops  # the encoder ran once


@pytest.mark.parametrize("gate_skips", [False, True])
def test_gate_skips_shuts_the_skips_with_the_class_gate(gate_skips, densenet, test_batch):
    """With ``gate_skips`` a shut class gate (sigmoid(act - confidence) = 0) leaves nothing of the image in
    the mask: the encoder skips are gated too. Without it (pytorch-saliency's wiring) the skips still draw
    the image into the mask, the faint wrong-class copies of docs/rts-recipe-sweep-amd.md."""
    torch.manual_seed(0)
    masker = build_masker(densenet, _cfg(gate_skips=gate_skips, encoder="own")).eval()
    x = test_batch.images[:4]
    feats = masker.encoder(x)
    other = [f + torch.randn_like(f) for f in feats[:-1]] + [feats[-1]]
    with torch.no_grad():
        shut = masker.decode(feats, test_batch.labels[:4], 1e4)[0]
        shut_other = masker.decode(other, test_batch.labels[:4], 1e4)[0]
        open_ = masker.decode(feats, test_batch.labels[:4], -1e4)[0]
        open_other = masker.decode(other, test_batch.labels[:4], -1e4)[0]
    assert (open_ - open_other).abs().max() > 1e-3  # an open gate lets the skips through either way
    moved = (shut - shut_other).abs().max()
    assert (moved == 0) if gate_skips else (moved > 1e-3)


def test_gate_skips_keeps_older_maskers_keys_and_run_hashes():
    """Off, the setting is in neither the masker cache key nor the run's resolved parameters (the config
    hashes of stored runs stay valid); on, it is in both."""
    from adv2core.config import ResolvedConfig
    from adv2core.config.hashing import config_hash
    from adv2core.config.loading import load_config

    assert "gate_skips" not in RTSConfig().training_key()
    assert RTSConfig(gate_skips=True).training_key()["gate_skips"] is True
    on = ResolvedConfig.from_bench(load_config("quick"))  # the quick preset gates the skips since 2026-12-04
    off = ResolvedConfig.from_bench(load_config("quick", overrides=["interpreters.overrides.rts.gate_skips=false"]))
    assert "gate_skips" not in off.interpreter_params["rts"]
    assert on.interpreter_params["rts"]["gate_skips"] is True
    assert config_hash(on.hashed()) != config_hash(off.hashed())


def test_resnet50_masker_geometry():
    from adv2core.models.torchvision_models import resnet50

    model = resnet50(weights=None).eval()
    masker = build_masker(model, RTSConfig(decoder_base=8))
    assert masker.encoder.convention == "pm2"  # 'auto' -> the pytorch-saliency checkpoint's convention
    assert masker.encoder.tap_channels == [256, 512, 1024, 2048] and len(masker.stages) == 3
    with torch.no_grad():
        m, exists = masker(torch.rand(1, 3, 224, 224), torch.tensor([3]), 6.0)
    assert m.shape == (1, 1, 56, 56) and exists.shape == (1, 2)


# --- losses ----------------------------------------------------------------------------------------
def test_loss_pieces_match_definitions():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    label = torch.tensor([0, 0])
    # sample 0 targeted: other(1) - this(3) + 1 -> relu(-1) = 0; sample 1 non-targeted: this(0) - other(2) + 5 = 3
    assert float(cw_loss(logits, label, torch.tensor([True, False]), 1.0, 5.0)) == pytest.approx(1.5)
    m = torch.zeros(2, 1, 4, 4)
    m[:, :, 1:3, 1:3] = 1.0
    # 8 unit differences per image (4 vertical, 4 horizontal around the 2x2 block), no border; / (power * N)
    assert float(smoothness_loss(m, 2.0, 0.3)) == pytest.approx((8 * 2) / (2 * 2))
    m_border = torch.ones(1, 1, 3, 3)
    assert float(smoothness_loss(m_border, 2.0, 0.3)) == pytest.approx(0.3 * 12 / 2)
    assert float(area_loss(m, 0.3)) == pytest.approx(float(((m + 5e-4) ** 0.3).mean()))


# --- training --------------------------------------------------------------------------------------
def test_brief_training_beats_untrained(resnet, small_data_cfg):
    from adv2core.data.synthetic import EmbeddedDataset

    x, y, _ = EmbeddedDataset("train", small_data_cfg).tensors()
    tx, ty, tm = EmbeddedDataset("test", small_data_cfg).tensors()
    x, y = x[:512], y[:512]
    tx, ty, tm = tx[:96], ty[:96], tm[:96]
    cfg = _cfg()
    masker = build_masker(resnet, cfg)
    before = localization_report(RTS(resnet, masker, confidence=cfg.model_confidence), tx, ty, tm)
    metrics = fit_rts(masker, resnet, x, y, cfg, progress=False)
    after = localization_report(RTS(resnet, masker, confidence=cfg.model_confidence), tx, ty, tm)
    assert metrics["phase1_exists_accuracy"] > 0.6
    # (seeds 0-2 measured: +0.12 to +0.25; class selectivity needs the full recipe, see the RTS report)
    assert after["iou_true"] > before["iou_true"] + 0.05, (before, after)


def test_wrong_classes_never_the_label():
    y = torch.arange(200) % 8
    w = wrong_classes(y, 8, seed=3)
    assert not bool((w == y).any()) and len(torch.unique(w)) == 8
    assert torch.equal(w, wrong_classes(y, 8, seed=3))


# --- checkpoints -----------------------------------------------------------------------------------
def test_checkpoint_round_trip_and_registry(resnet, test_batch, tmp_path):
    cfg = _cfg(seed=5)
    masker = build_masker(resnet, cfg)
    with torch.no_grad():  # make the decoder non-trivial so the comparison means something
        for p in masker.decoder_parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "rts.pt"
    save_checkpoint(path, masker.state_dict(), {"note": "test"})
    x, y = test_batch.images[:4], test_batch.labels[:4]
    ref = RTS(resnet, masker).explain(x, y)
    loaded = build_interpreter(interpreter_spec("rts", config=cfg, checkpoint=path), resnet)
    assert isinstance(loaded, RTS) and torch.equal(loaded.explain(x, y), ref)
    # a checkpoint without the encoder (pytorch-saliency style) keeps the classifier-built encoder
    slim = {k: v for k, v in masker.state_dict().items() if not k.startswith("encoder.")}
    torch.save(slim, tmp_path / "slim.pt")
    assert torch.equal(_rts(resnet, cfg, tmp_path / "slim.pt").explain(x, y), ref)
    # a checkpoint for another architecture is refused with one line
    torch.save({"selector.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        _rts(resnet, cfg, tmp_path / "other.pt")


def test_cache_lookup(resnet, small_data_cfg, test_batch):
    cfg = _cfg(seed=11)
    path = rts_checkpoint_path("resnet-mini", resnet, small_data_cfg, cfg)
    assert path.parent.name == "checkpoints" and "resnet-mini" in path.name
    assert path == rts_checkpoint_path("resnet-mini", resnet, small_data_cfg, cfg.model_copy(update={"model_confidence": 0.0}))
    assert path != rts_checkpoint_path("resnet-mini", resnet, small_data_cfg, cfg.model_copy(update={"area_coeff": 4.5}))
    path.unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="train-rts"):
        _rts(resnet, cfg, data_cfg=small_data_cfg)
    masker = build_masker(resnet, cfg)
    save_checkpoint(path, masker.state_dict(), {})
    try:
        rts = _rts(resnet, cfg.model_copy(update={"model_confidence": 0.0}), data_cfg=small_data_cfg)
        assert rts.confidence == 0.0
        x, y = test_batch.images[:2], test_batch.labels[:2]
        assert torch.equal(rts.explain(x, y), RTS(resnet, masker, confidence=0.0).explain(x, y))
    finally:
        path.unlink(missing_ok=True)


class _RunsCode:
    """Unpickling this would run a shell command (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_code_executing_pickle(resnet, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"selector.weight": _RunsCode(marker)}}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused|unsafe|weights_only"):
        _rts(resnet, _cfg(), path)
    assert not marker.exists()


def test_truncated_checkpoint(resnet, tmp_path):
    masker = build_masker(resnet, _cfg())
    path = tmp_path / "rts.pt"
    save_checkpoint(path, masker.state_dict(), {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        _rts(resnet, _cfg(), path)
    missing = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match="not found"):
        _rts(resnet, _cfg(), missing)


def test_densenet_encoder_is_resnet_and_needs_its_weights(densenet, resnet, tmp_path):
    """Without the trained companion the encoder is built untrained, so a checkpoint that lacks the
    encoder weights is refused rather than silently loaded onto a random encoder."""
    from adv2core.interpreters.rts_model import companion_encoder

    assert companion_encoder("densenet-mini", _cfg()) == "resnet-mini"
    assert companion_encoder("densenet-mini", _cfg(encoder="own")) is None
    assert companion_encoder("resnet-mini", _cfg()) is None
    full = build_masker(densenet, _cfg(), resnet)
    slim = {k: v for k, v in full.state_dict().items() if not k.startswith("encoder.")}
    save_checkpoint(tmp_path / "slim.pt", slim, {})
    with pytest.raises(CheckpointError, match="no encoder"):
        _rts(densenet, _cfg(), tmp_path / "slim.pt")
    # with the encoder weights in the file, the untrained companion architecture takes them
    save_checkpoint(tmp_path / "full.pt", full.state_dict(), {})
    x = torch.rand(2, 3, 64, 64)
    y = torch.tensor([0, 1])
    loaded = _rts(densenet, _cfg(), tmp_path / "full.pt")
    assert torch.equal(loaded.explain(x, y), RTS(densenet, full).explain(x, y))
    # own-encoder masks differ in architecture from the resnet-encoder ones
    assert build_masker(densenet, _cfg(encoder="own")).encoder.tap_channels != full.encoder.tap_channels
