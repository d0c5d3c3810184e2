"""Models by name: the embedded ``resnet-mini``/``densenet-mini`` and the real torchvision models.

Embedded checkpoints are cached under ``data/checkpoints`` keyed by a hash of (architecture, dataset
manifest content hash, training config), so a changed dataset or recipe never reuses stale weights.
Every model is returned in eval mode with frozen parameters (attacks need input gradients only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adv2core.errors import CheckpointError, ConfigError
from adv2core.models.checkpoint import load_checkpoint, save_checkpoint, stable_hash
from adv2core.models.classifier import Classifier
from adv2core.models.mini import densenet_mini, resnet_mini
from adv2core.models import torchvision_models as tv
from adv2core.models.training import TrainConfig, train_classifier
from adv2core.paths import cache_dir

EMBEDDED_MODELS = {"resnet-mini": resnet_mini, "densenet-mini": densenet_mini}
REAL_MODELS = {"resnet50": tv.resnet50, "densenet169": tv.densenet169, "isic-resnet50": tv.isic_resnet50}
MODEL_NAMES = tuple(EMBEDDED_MODELS) + tuple(REAL_MODELS)


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


def _data_cfg(data_cfg: Any | None):
    from adv2core.data.synthetic import EmbeddedDataConfig

    return data_cfg if data_cfg is not None else EmbeddedDataConfig()


def checkpoint_path(name: str, data_cfg: Any | None = None, train_cfg: TrainConfig | None = None) -> Path:
    """Where the trained embedded model for this (architecture, dataset, recipe) is cached."""
    from adv2core.data.synthetic import prepare_embedded

    _check_name(name)
    data_cfg = _data_cfg(data_cfg)
    train_cfg = train_cfg or TrainConfig()
    _, manifest = prepare_embedded(data_cfg)
    key = stable_hash(name, manifest["content_sha256"], train_cfg.model_dump())
    return cache_dir("checkpoints") / f"{name}-{key}.pt"


def weights_file(name: str) -> Path | None:
    """The local file ``weights: imagenet`` loads for a real model (None when it has none)."""
    enum = tv._ENUMS.get(name)
    return tv._hub_file(enum) if enum is not None else None


def _finalize(model: Classifier, device: torch.device | str) -> Classifier:
    model.eval().requires_grad_(False)
    return model.to(device)


def train_embedded(
    name: str, data_cfg: Any | None = None, train_cfg: TrainConfig | None = None, *, progress: bool = True, force: bool = False
) -> tuple[Classifier, dict]:
    """Train (or reuse the cached) embedded model; returns (model, metrics incl. ``test_accuracy``)."""
    from adv2core.data.synthetic import EmbeddedDataset

    if name not in EMBEDDED_MODELS:
        raise ConfigError(f"{name!r} is not an embedded model; trainable: {', '.join(EMBEDDED_MODELS)}")
    data_cfg = _data_cfg(data_cfg)
    train_cfg = train_cfg or TrainConfig()
    path = checkpoint_path(name, data_cfg, train_cfg)
    if path.is_file() and not force:
        model = load_model(name, data_cfg=data_cfg, train_cfg=train_cfg)
        _, meta = load_checkpoint(path)
        return model, {**meta.get("metrics", {}), "cached": True, "checkpoint": str(path)}
    train = EmbeddedDataset("train", data_cfg).tensors()
    test = EmbeddedDataset("test", data_cfg).tensors()
    torch.manual_seed(train_cfg.seed)
    model = EMBEDDED_MODELS[name](data_cfg.num_classes, data_cfg.image_size)
    metrics = train_classifier(model, train[:2], test[:2], train_cfg, progress=progress)
    # timings stay out of the file, so the same training gives byte-identical checkpoints (sha256 in runs)
    saved = {k: v for k, v in metrics.items() if not k.endswith("seconds")}
    meta = {"name": name, "metrics": saved, "train_config": train_cfg.model_dump(), "data_config": data_cfg.model_dump()}
    save_checkpoint(path, model.state_dict(), meta)
    return _finalize(model, "cpu"), {**metrics, "cached": False, "checkpoint": str(path)}


def load_model(
    name: str,
    *,
    weights: str | Path | None = "imagenet",
    data_cfg: Any | None = None,
    train_cfg: TrainConfig | None = None,
    device: torch.device | str = "cpu",
    train_if_missing: bool = False,
) -> Classifier:
    """Build a model by name and load its weights (never downloads).

    Embedded models load their cached checkpoint (``train_if_missing`` trains it first); real models
    take ``weights``: ``"imagenet"`` (torchvision file in the local hub cache), a state_dict path, or
    ``None`` for random weights.
    """
    _check_name(name)
    if name in EMBEDDED_MODELS:
        data_cfg = _data_cfg(data_cfg)
        path = checkpoint_path(name, data_cfg, train_cfg)
        if not path.is_file():
            if train_if_missing:
                return _finalize(train_embedded(name, data_cfg, train_cfg, progress=False)[0], device)
            raise CheckpointError(f"no trained {name} for this dataset/recipe (expected {path}); run `adv2 train --model {name}`")
        state, _ = load_checkpoint(path)
        model = EMBEDDED_MODELS[name](data_cfg.num_classes, data_cfg.image_size)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path} does not fit {name}: {str(exc).splitlines()[0]}") from None
        return _finalize(model, device)
    return _finalize(REAL_MODELS[name](weights=weights), device)
