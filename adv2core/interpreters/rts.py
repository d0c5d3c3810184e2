"""RTS: real-time saliency from a trained masking model (spec section 2.3).

The map for class c is the masking model's mask at native resolution input/4 (56 at 224, 16 at 64), in
[0,1], not normalised, with the selector gate offset ``model_confidence`` (6 for benign and attack maps in
the paper; 0 for target-map sampling and ISIC). The attack differentiates through the whole masking
model (encoder and decoder) and adds ``0.1 * extra_attack_loss``: the cross-entropy of the *encoder's own
classifier head* (not the selector) to the target class.

The interpreter takes a ready masking model. Loading, training and caching it is the job of
:func:`adv2core.interpreters.rts_training.load_or_train_masker`, which
:func:`adv2core.interpreters.registry.build_interpreter` calls for an RTS spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from adv2core.errors import ConfigError
from adv2core.interpreters.base import Interpreter
from adv2core.interpreters.rts_model import MAP_STRIDE, MaskingModel
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

    def map_and_extra_loss(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(:meth:`differentiable_map`, :meth:`extra_attack_loss`) from one encoder pass: the mask and the
        encoder head share the encoder features, so an ADV^2-RTS step runs the encoder once, not twice."""
        self._check(target)
        feats = self.masker.encoder(x)
        mask = self.masker.decode(feats, target, self.confidence)[0]
        extra = F.cross_entropy(self.masker.encoder.logits_from(feats[-1]), target, reduction="none")
        return mask, extra


class RTSAID(RTS):
    """RTS with an AID-hardened masking model (:mod:`adv2core.interpreters.aid`): same maps, attack hooks
    and map size; only the masker's weights differ. Its own name, so runs report ``rts`` and ``rts-aid``
    side by side."""

    name = "rts-aid"
