"""Training and caching of RTS masking models (spec section 2.3): the one place a masking model comes from.

:func:`load_or_train_masker` is what :func:`adv2core.interpreters.registry.build_interpreter` calls for an
RTS spec: an explicit checkpoint (``weights_only`` load; a pickle that would run code is refused), else the
cache of :func:`train_rts` for embedded classifiers (trained there when ``train_if_missing``) and for the
packaged real ones (efficientnet-lite0, squeezenet1_1: trained on the ``imagenet-samples`` photos,
:mod:`adv2core.interpreters.rts_real`). The recipe
itself (losses, augmentation, the two phases) is :mod:`adv2core.interpreters.rts_fit`; the
:class:`~adv2core.interpreters.rts.RTS` interpreter only wraps a ready masking model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from adv2core.errors import CheckpointError, ConfigError
from adv2core.interpreters.config import RTSConfig
from adv2core.interpreters.localization import localization_report, wrong_classes  # noqa: F401 (re-export)
from adv2core.interpreters.rts import RTS
from adv2core.interpreters.rts_fit import area_loss, cw_loss, fit_rts, saliency_loss, smoothness_loss  # noqa: F401 (re-export)
from adv2core.interpreters.rts_model import MaskingModel, build_masker, load_masker_state
from adv2core.models.checkpoint import load_checkpoint, load_state_dict_file, save_checkpoint, stable_hash
from adv2core.models.classifier import Classifier
from adv2core.paths import cache_dir


# ------------------------------------------------------------------------------------------------
# Caching per classifier
# ------------------------------------------------------------------------------------------------
def _embedded(name: str) -> bool:
    from adv2core.models.registry import EMBEDDED_MODELS

    return name in EMBEDDED_MODELS


def _load_or_train_real(model: Classifier, rts_cfg: RTSConfig, *, train_if_missing: bool,
                        progress: bool) -> tuple[MaskingModel, Path]:
    """A real classifier's masker from the photo-pool cache (:mod:`adv2core.interpreters.rts_real`)."""
    from adv2core.interpreters.rts_real import REAL_POOL, real_checkpoint_path, real_pool, train_rts_real

    if model.name not in _real_names():
        raise CheckpointError(
            f"RTS for {model.name} needs a masking-model checkpoint (checkpoint=PATH); only the embedded models "
            f"and the packaged real ones ({', '.join(_real_names())}) are trained locally")
    content = real_pool(model.input_size)[3]
    path = real_checkpoint_path(model.name, model, rts_cfg, content)
    if path.is_file():
        return load_cached_masker(path, model, rts_cfg)[0], path
    if not train_if_missing:
        raise CheckpointError(
            f"no trained RTS masking model for {model.name} on {REAL_POOL} with these settings (expected {path}); "
            f"run `adv2 train-rts --model {model.name} --preset real`")
    masker, metrics = train_rts_real(model.name, model, rts_cfg, progress)
    return masker, Path(metrics["checkpoint"])


def _real_names() -> tuple[str, ...]:
    """Real classifiers whose masker trains on the photo pool: the ImageNet-1k models whose weights ship
    in packages (``packaged`` in :mod:`adv2core.models.registry`)."""
    return ("efficientnet-lite0", "squeezenet1_1")


def classifier_fingerprint(model: Classifier) -> str:
    """sha256 over the classifier's weights: ties a masking model to the exact black box it learned from."""
    h = hashlib.sha256(model.name.encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _data_cfg(data_cfg: Any | None):
    from adv2core.data.synthetic import EmbeddedDataConfig

    return data_cfg if data_cfg is not None else EmbeddedDataConfig()


def rts_checkpoint_path(
    classifier_name: str, classifier: Classifier, data_cfg: Any | None, rts_cfg: RTSConfig,
    encoder_model: Classifier | None = None,
) -> Path:
    """``checkpoints/rts-<classifier>-<key>.pt`` keyed by (classifier weights, encoder weights when the
    encoder is a companion model, dataset content, recipe)."""
    from adv2core.data.synthetic import prepare_embedded

    _, manifest = prepare_embedded(_data_cfg(data_cfg))
    parts = ["rts", classifier_name, classifier_fingerprint(classifier), manifest["content_sha256"], rts_cfg.training_key()]
    if encoder_model is not None:
        parts.append(classifier_fingerprint(encoder_model))
    return cache_dir("checkpoints") / f"rts-{classifier_name}-{stable_hash(*parts)}.pt"


def resolve_encoder_model(
    classifier_name: str, classifier: Classifier, data_cfg: Any | None, rts_cfg: RTSConfig, *, train_if_missing: bool
) -> Classifier | None:
    """The trained companion encoder of an embedded DenseNet (same data, default recipe), else None."""
    from adv2core.interpreters.rts_model import companion_encoder
    from adv2core.models.registry import load_model

    companion = companion_encoder(classifier_name, rts_cfg)
    if companion is None:
        return None
    return load_model(companion, data_cfg=_data_cfg(data_cfg), device=classifier.mean.device, train_if_missing=train_if_missing)


def load_cached_masker(
    path: Path, classifier: Classifier, rts_cfg: RTSConfig, encoder_model: Classifier | None = None
) -> tuple[MaskingModel, dict]:
    state, meta = load_checkpoint(path)
    masker = build_masker(classifier, rts_cfg, encoder_model)
    load_masker_state(masker, state, str(path))
    return masker.eval().requires_grad_(False), meta


def _train_until_good(
    classifier_name: str, classifier: Classifier, encoder_model: Classifier | None, rts_cfg: RTSConfig,
    images: torch.Tensor, labels: torch.Tensor, test: tuple[torch.Tensor, torch.Tensor, torch.Tensor], progress: bool,
) -> tuple[MaskingModel, dict[str, Any]]:
    """Fit, score on the test split, and retry with the next seed while the quality bar is missed.

    The bar (``quality_min_iou`` for the true class, ``quality_min_gap`` above the wrong-class control)
    is what makes a masking model an interpreter rather than a blank or class-blind mask; a model that
    misses it after ``quality_retries`` more seeds raises :class:`~adv2core.gates.GateError`."""
    from adv2core.gates import GateError

    tried = []
    for attempt in range(rts_cfg.quality_retries + 1):
        cfg = rts_cfg.model_copy(update={"seed": rts_cfg.seed + attempt})
        masker = build_masker(classifier, cfg, encoder_model)
        metrics = fit_rts(masker, classifier, images, labels, cfg, progress=progress)
        masker.eval().requires_grad_(False)
        report = localization_report(RTS(classifier, masker, confidence=cfg.model_confidence), *test)
        metrics.update(loc_iou_true=report["iou_true"], loc_iou_wrong=report["iou_wrong"], loc_n=report["n"],
                       seed_used=cfg.seed, attempts=attempt + 1)
        tried.append(f"seed {cfg.seed}: {report['iou_true']:.3f} / {report['iou_wrong']:.3f}")
        if (report["iou_true"] >= cfg.quality_min_iou
                and report["iou_true"] - report["iou_wrong"] >= cfg.quality_min_gap):
            return masker, metrics
    raise GateError(
        f"RTS masking model for {classifier_name} missed its quality bar (true-class localisation >= "
        f"{rts_cfg.quality_min_iou:g} and >= wrong class + {rts_cfg.quality_min_gap:g}) with every seed tried "
        f"(true / wrong: {'; '.join(tried)}); nothing was cached. Check the classifier's accuracy "
        f"(`adv2 train --model {classifier_name} --json`) or the RTS settings"
    )


def train_rts(
    classifier_name: str,
    classifier: Classifier,
    data_cfg: Any | None = None,
    rts_cfg: RTSConfig | None = None,
    progress: bool = True,
    *,
    force: bool = False,
    encoder_model: Classifier | None = None,
) -> tuple[MaskingModel, dict[str, Any]]:
    """Train (or reuse the cached) masking model for an embedded classifier; returns (masker, metrics).
    A packaged real classifier trains on the photo pool instead (:func:`~adv2core.interpreters.rts_real.train_rts_real`).

    ``encoder_model``: the companion encoder of a DenseNet (default: the cached embedded one for this
    data, trained first if missing). Metrics include the training time and the localisation score on the
    embedded test split (``loc_iou_true`` / ``loc_iou_wrong``: mean top-k IoU with the GT object for the
    true class and for a random wrong class, confidence = ``rts_cfg.model_confidence``).
    """
    from adv2core.data.synthetic import EmbeddedDataset

    if rts_cfg is None:
        raise ConfigError("train_rts needs the RTS settings (e.g. interpreter_spec('rts', preset).config)")
    if not _embedded(classifier_name):  # a real classifier: the photo pool (adv2core.interpreters.rts_real)
        from adv2core.interpreters.rts_real import train_rts_real

        return train_rts_real(classifier_name, classifier, rts_cfg, progress, force=force)
    data_cfg = _data_cfg(data_cfg)
    if encoder_model is None:
        encoder_model = resolve_encoder_model(classifier_name, classifier, data_cfg, rts_cfg, train_if_missing=True)
    path = rts_checkpoint_path(classifier_name, classifier, data_cfg, rts_cfg, encoder_model)
    if path.is_file() and not force:
        masker, meta = load_cached_masker(path, classifier, rts_cfg, encoder_model)
        return masker, {**meta.get("metrics", {}), "cached": True, "checkpoint": str(path)}
    images, labels, _ = EmbeddedDataset("train", data_cfg).tensors()
    test_x, test_y, test_m = EmbeddedDataset("test", data_cfg).tensors()
    masker, metrics = _train_until_good(classifier_name, classifier, encoder_model, rts_cfg, images, labels,
                                        (test_x, test_y, test_m), progress)
    meta = {
        "classifier": classifier_name,
        "classifier_fingerprint": classifier_fingerprint(classifier),
        "encoder": encoder_model.name if encoder_model is not None else classifier_name,
        "encoder_fingerprint": classifier_fingerprint(encoder_model) if encoder_model is not None else None,
        "rts_config": rts_cfg.model_dump(),
        "data_config": data_cfg.model_dump(),
        # timings stay out of the file: equal training gives byte-identical checkpoints
        "metrics": {k: v for k, v in metrics.items() if not k.endswith("seconds")},
    }
    save_checkpoint(path, masker.state_dict(), meta)
    return masker, {**metrics, "encoder": meta["encoder"], "cached": False, "checkpoint": str(path)}


def load_or_train_masker(
    model: Classifier,
    rts_cfg: RTSConfig,
    *,
    checkpoint: str | Path | None = None,
    data_cfg: Any | None = None,
    train_if_missing: bool = False,
    progress: bool = False,
    encoder_model: Classifier | None = None,
) -> tuple[MaskingModel, Path]:
    """The masking model for ``model`` and the file it came from.

    ``checkpoint``: a state_dict file of this masking model (``weights_only``; ``encoder.*`` keys may be
    absent, then the encoder built from the classifier is kept). Otherwise embedded classifiers use the
    :func:`train_rts` cache for (``data_cfg``, ``rts_cfg``), training when ``train_if_missing``.
    ``encoder_model``: the trained companion encoder of ``densenet-mini`` (default: the cached
    ``resnet-mini`` of ``data_cfg``, see :mod:`adv2core.interpreters.rts_model`).
    """
    if checkpoint is not None:
        masker = build_masker(model, rts_cfg, encoder_model)
        load_masker_state(masker, load_state_dict_file(Path(checkpoint)), str(checkpoint))
        return masker, Path(checkpoint)
    if not _embedded(model.name):
        return _load_or_train_real(model, rts_cfg, train_if_missing=train_if_missing, progress=progress)
    if encoder_model is None:
        encoder_model = resolve_encoder_model(model.name, model, data_cfg, rts_cfg, train_if_missing=train_if_missing)
    path = rts_checkpoint_path(model.name, model, data_cfg, rts_cfg, encoder_model)
    if path.is_file():
        masker, _ = load_cached_masker(path, model, rts_cfg, encoder_model)
    elif train_if_missing:
        masker, _ = train_rts(model.name, model, data_cfg, rts_cfg, progress=progress, encoder_model=encoder_model)
    else:
        raise CheckpointError(
            f"no trained RTS masking model for {model.name} (expected {path}); run `adv2 train-rts --model {model.name}`"
        )
    return masker, path
