"""CAM: class activation map from the classifier weights and the last feature map (spec section 2.2).

CAM_c = sum_k w_{c,k} A_k with the fc weights of class c (no bias, no ReLU, no upsampling), at the last
feature map's native resolution, then per-image min-max. For a fully convolutional classifier with a
``class_map`` head (SqueezeNet 1.1: conv10 gives one map per class, logits = their mean) CAM_c is the
class's own map channel (the same formula with w = identity); see :meth:`Classifier.cam`. The logits come from the same forward pass, so
an attack differentiates through it directly (no surrogate needed). For DenseNet, A is taken after the
final ReLU (a module in our wrapper).
"""

from __future__ import annotations

import torch

from adv2core.interpreters.base import Interpreter, minmax_normalize
from adv2core.models.classifier import Classifier


def cam_from_features(fmap: torch.Tensor, weights: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Raw CAM [N,1,h,w]: class-``target`` weights [N,C] contracted with the feature map [N,C,h,w]."""
    w = weights[target]
    return torch.einsum("nc,nchw->nhw", w, fmap).unsqueeze(1)


class CAM(Interpreter):
    name = "cam"

    def __init__(self, model: Classifier, *, floor: float = 1e-12) -> None:
        super().__init__(model)
        # The official code divides by max(cam - min) with no epsilon; a tiny floor only avoids 0/0.
        self.floor = floor
        self._side: int | None = None

    def map_size(self, input_size: int | None = None) -> int:
        if input_size is None or input_size == self.model.input_size:
            if self._side is None:
                self._side = self.model.feature_size()
            return self._side
        p = next(self.model.parameters())
        with torch.no_grad():
            return int(self.model.features(torch.zeros(1, 3, input_size, input_size, device=p.device))[0].shape[-1])

    def maps_and_logits(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised CAM, logits) from one forward pass — what the CAM attack needs per step."""
        fmap, logits = self.model.features(x)
        cam = self.model.cam(fmap, target)
        return minmax_normalize(cam, self.floor), logits

    def differentiable_map(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.maps_and_logits(x, target)[0]

    def explain(self, x, target, *, ids=None) -> torch.Tensor:
        with torch.no_grad():
            return self.maps_and_logits(x, target)[0]

    __call__ = explain
