"""RTS: real-time saliency from a trained masking model (spec section 2.3).

The map for class c is the masking model's mask at native resolution input/4 (56 at 224, 16 at 64), in
[0,1], not normalised, with the selector gate offset ``model_confidence`` (6 for benign and attack maps in
the paper; 0 for target-map sampling and ISIC). The attack differentiates through the whole masking
model (encoder and decoder) and adds ``0.1 * extra_attack_loss``: the cross-entropy of the *encoder's own
classifier head* (not the selector) to the target class.

Masking models come from :func:`RTS.create`: an explicit checkpoint (``weights_only`` load; a pickle that
would run code is refused), else the cache of :func:`adv2core.interpreters.rts_training.train_rts` for
embedded classifiers (trained there when ``train_if_missing``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from adv2core.errors import CheckpointError, ConfigError
from adv2core.interpreters.base import Interpreter
from adv2core.interpreters.config import RTSConfig, default_preset, load_interpreter_config
from adv2core.interpreters.rts_model import MAP_STRIDE, MaskingModel, build_masker, load_masker_state
from adv2core.models.checkpoint import load_state_dict_file
from adv2core.models.classifier import Classifier
from adv2core.models.classifier import Classifier


class RTS(Interpreter):
    """The RTS interpreter around a (frozen) :class:`MaskingModel` for ``model``."""

    name = "rts"

    def __init__(self, model: Classifier, masker: MaskingModel, *, confidence: float = 6.0) -> None:
        super().__init__(model)
        device = model.mean.device
        self.masker = masker.to(device).eval().requires_grad_(False)
        self.confidence = float(confidence)
        self.checkpoint_path: Path | None = None

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        model: Classifier,
        *,
        data_cfg: Any | None = None,
        rts_cfg: RTSConfig | None = None,
        train_if_missing: bool = False,
        checkpoint: str | Path | None = None,
        confidence: float | None = None,
        preset: str | None = None,
        cfg: RTSConfig | None = None,
        progress: bool = False,
        encoder_model: Classifier | None = None,
    ) -> "RTS":
        """Load (or train) the masking model for ``model``.

        ``checkpoint``: a state_dict file of this masking model (``weights_only``; ``encoder.*`` keys may be
        absent, then the encoder built from the classifier is kept). Otherwise embedded classifiers use
        the ``train_rts`` cache for (``data_cfg``, ``rts_cfg``); ``rts_cfg`` defaults to the model's
        preset (``quick`` for embedded models, ``paper`` otherwise); ``cfg`` is an alias.
        ``encoder_model``: the trained companion encoder of ``densenet-mini`` (default: the cached
        ``resnet-mini`` of ``data_cfg``, see :mod:`adv2core.interpreters.rts_model`).
        """
        rts_cfg = rts_cfg if rts_cfg is not None else cfg
        if rts_cfg is None:
            rts_cfg = load_interpreter_config(preset or default_preset(model.name))["rts"]  # type: ignore[assignment]
        assert rts_cfg is not None
        conf = rts_cfg.model_confidence if confidence is None else confidence
        if checkpoint is not None:
            masker = build_masker(model, rts_cfg, encoder_model)
            load_masker_state(masker, load_state_dict_file(Path(checkpoint)), str(checkpoint))
            return cls(model, masker, confidence=conf).with_checkpoint(Path(checkpoint))
        if not model.name.endswith("-mini"):
            raise CheckpointError(
                f"RTS for {model.name} needs a masking-model checkpoint (checkpoint=PATH); only the embedded "
                "models are trained locally"
            )
        from adv2core.interpreters.rts_training import (
            load_cached_masker,
            resolve_encoder_model,
            rts_checkpoint_path,
            train_rts,
        )

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
        return cls(model, masker, confidence=conf).with_checkpoint(path)

    def with_checkpoint(self, path: Path) -> "RTS":
        """Remember which file the masking model came from (its sha256 goes into the ``runs`` row)."""
        self.checkpoint_path = Path(path)
        return self

    # -- geometry and maps -----------------------------------------------------------------------------
    def map_size(self, input_size: int | None = None) -> int:
        return (input_size or self.model.input_size) // MAP_STRIDE

    def _check(self, target: torch.Tensor) -> None:
        if target.dtype != torch.long:
            raise ConfigError(f"RTS target classes must be int64, got {target.dtype}")

    def differentiable_map(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mask [N,1,S/4,S/4] with the graph to ``x`` through encoder and decoder."""
        self._check(target)
        return self.masker(x, target, self.confidence)[0]

    def explain(self, x: torch.Tensor, target: torch.Tensor, *, ids: Sequence[str] | None = None) -> torch.Tensor:
        self._check(target)
        with torch.no_grad():
            return self.masker(x, target, self.confidence)[0]

    __call__ = explain

    def encoder_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N,K] of the masking model's encoder head (differentiable w.r.t. ``x``)."""
        return self.masker.encoder.logits(x)

    def extra_attack_loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample CE of the encoder head to ``target``; the ADV^2 RTS attack adds 0.1 x this."""
        return F.cross_entropy(self.encoder_logits(x), target, reduction="none")
