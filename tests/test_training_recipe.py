"""The embedded training recipe's per-model fields (label smoothing) and the plateau test under smoothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adv2core.models.classifier import Classifier
from adv2core.models.registry import checkpoint_path
from adv2core.models.training import MODEL_DEFAULTS, TrainConfig, smoothed_loss_floor, train_classifier


def test_label_smoothing_is_the_models_default_unless_set():
    assert TrainConfig().for_model("densenet-mini").label_smoothing == MODEL_DEFAULTS["densenet-mini"]["label_smoothing"] > 0
    assert TrainConfig().for_model("resnet-mini").label_smoothing == 0.0
    assert TrainConfig(label_smoothing=0.0).for_model("densenet-mini").label_smoothing == 0.0
    assert TrainConfig(label_smoothing=0.3).for_model("resnet-mini").label_smoothing == 0.3


def test_checkpoint_keys_change_only_where_the_recipe_does(small_data_cfg):
    # resnet-mini's recipe is unchanged, so its published checkpoints keep their cache key; densenet-mini's
    # default now smooths, so it gets a new key, and the earlier recipe stays reachable with label_smoothing 0
    assert "label_smoothing" not in TrainConfig().recipe("resnet-mini")
    def path(name, **recipe):
        return checkpoint_path(name, small_data_cfg, TrainConfig(**recipe))

    assert path("resnet-mini") == path("resnet-mini", label_smoothing=0.0)
    assert path("densenet-mini") != path("densenet-mini", label_smoothing=0.0)
    assert path("densenet-mini") == path("densenet-mini", label_smoothing=MODEL_DEFAULTS["densenet-mini"]["label_smoothing"])
    assert TrainConfig(label_smoothing=0.0).recipe("densenet-mini") == TrainConfig().recipe("resnet-mini")


@pytest.mark.parametrize("k,ls", [(8, 0.1), (8, 0.2), (2, 0.05), (10, 0.5)])
def test_loss_floor_is_the_smallest_smoothed_cross_entropy(k, ls):
    q = torch.full((k,), ls / k)
    q[0] += 1 - ls
    best = F.cross_entropy(q.log()[None], torch.tensor([0]), label_smoothing=ls).item()  # softmax(log q) = q
    assert smoothed_loss_floor(k, ls) == pytest.approx(best, rel=1e-5)
    worse = F.cross_entropy((q.log() + torch.randn(k))[None], torch.tensor([0]), label_smoothing=ls).item()
    assert worse > smoothed_loss_floor(k, ls)
    assert smoothed_loss_floor(k, 0.0) == 0.0


def _separable(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is their colour: learnable in a few steps by a 1x1 convolution."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = 0.5 + 0.05 * torch.randn(n, 3, 8, 8, generator=g)
    x[:, 0] += 0.8 * (y[:, None, None].float() / (k - 1) - 0.5)
    return x.clamp(0, 1), y


def test_a_smoothed_loss_leaves_the_plateau():
    # with smoothing 0.3 over 4 classes the loss cannot fall below 0.78 > plateau_loss 0.35: without the floor
    # in the plateau test the schedule would never anneal and training would stall (TrainingStalled)
    torch.manual_seed(0)
    model = Classifier("tiny", nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU()), nn.Linear(16, 4), (0.5,) * 3, (0.25,) * 3, 8, "tiny")
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.05, warmup_steps=0, max_plateau_epochs=20, label_smoothing=0.3)
    assert smoothed_loss_floor(4, 0.3) > cfg.plateau_loss
    metrics = train_classifier(model, _separable(256, 4, 0), _separable(64, 4, 1), cfg, progress=False)
    assert metrics["plateau_steps"] is not None
    assert metrics["test_accuracy"] >= 0.9
