"""The shared interpreter contract (captum-like: model in the constructor, options per call).

An interpreter maps a batch of [0,1] images and a class per image to a batch of maps
``[N,1,h,w]`` in [0,1] at the interpreter's *native* resolution (never upsampled; spec section 2):

=========  ==========================  =====================
name       native side at input S      224 -> / 64 ->
=========  ==========================  =====================
grad       S / 4                        56 / 16
cam        last feature map side        7 (ResNet-50) / 8 (mini models)
rts        S / 4                        56 / 16
mask       S / 8                        28 / 8
=========  ==========================  =====================

Two paths:

* :meth:`explain` is the *evaluation* map (true network, no graph kept). Benign maps, adversarial maps
  in metrics and reports all come from here.
* :meth:`differentiable_map` keeps the graph to the input so an attack can backpropagate through the
  map (Grad uses the smooth-ReLU twin here). MASK is an optimisation, so it exposes its own unrolled
  steps instead (see :mod:`adv2core.interpreters.mask`).

:meth:`saliency` turns a map into "higher = more important" for ranking metrics (IoU); it is the identity
except for MASK, whose map m keeps pixels (saliency 1 - m).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import torch

from adv2core.models.classifier import Classifier


def minmax_normalize(m: torch.Tensor, floor: float = 1e-8) -> torch.Tensor:
    """Per-image min-max to [0,1] over all but the batch dimension; denominator floored at ``floor``."""
    flat = m.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = (flat - lo).max(dim=1, keepdim=True).values
    return ((flat - lo) / hi.clamp_min(floor)).view_as(m)


class Interpreter(ABC):
    """Base class. Subclasses set ``name`` and implement :meth:`map_size` and :meth:`differentiable_map`."""

    name: ClassVar[str]
    #: True when maps are optimised (MASK) rather than computed in a pass; attacks treat it specially.
    iterative: ClassVar[bool] = False
    #: False where maps are known to depend little on the explained class (Grad: |d CE / dx| of a
    #: confident model is dominated by the same object for every class); the preflight gate then checks
    #: localisation against a shuffled-mask control instead of a wrong-class one (adv2core/gates.py).
    class_sensitive: ClassVar[bool] = True

    def __init__(self, model: Classifier) -> None:
        self.model = model

    # -- geometry -----------------------------------------------------------------------------
    @abstractmethod
    def map_size(self, input_size: int | None = None) -> int:
        """Native map side for an input of side ``input_size`` (default: the model's)."""

    # -- maps ---------------------------------------------------------------------------------
    @abstractmethod
    def differentiable_map(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Map [N,1,h,w] with the autograd graph to ``x`` kept (for attacks)."""

    def explain(
        self, x: torch.Tensor, target: torch.Tensor, *, ids: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Evaluation map [N,1,h,w] in [0,1], detached. ``ids`` seed per-image randomness (MASK)."""
        with torch.enable_grad():
            m = self.differentiable_map(x.detach(), target)
        return m.detach()

    __call__ = explain

    def saliency(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps as 'higher = more important' (identity here; MASK overrides with 1 - m)."""
        return maps

    def extra_attack_loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Per-sample extra loss an ADV^2 attack adds for this interpreter (RTS: encoder-head CE)."""
        return None
