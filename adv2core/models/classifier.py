"""One wrapper for every classifier: [0,1] images in, normalisation inside, CAM taps exposed.

Every model in the registry is ``normalise -> backbone -> global average pool -> fc``. ``backbone``
ends with the network's *final* ReLU as an ``nn.ReLU`` module (DenseNet applies it functionally in
torchvision; we make it a module so that CAM sees the same map and the surrogate twin replaces it).
With this shape CAM is exact (classifier weights x last feature map) for all model families.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Classifier(nn.Module):
    """A classifier taking raw RGB images in [0,1] of shape [N,3,S,S].

    Attributes:
        name: registry name (``resnet-mini``, ``resnet50`` ...).
        num_classes: K.
        input_size: S, the side the model expects.
        backbone: module mapping the *normalised* image to the last feature map [N,C,h,w] (post-ReLU).
        fc: the linear classifier on the pooled features (its weights give CAM).
    """

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        fc: nn.Linear,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int,
        family: str,
    ) -> None:
        super().__init__()
        self.name = name
        self.family = family
        self.backbone = backbone
        self.fc = fc
        self.num_classes = fc.out_features
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def features_normalized(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last feature map, logits) from an already normalised input."""
        fmap = self.backbone(xn)
        logits = self.fc(fmap.mean(dim=(2, 3)))
        return fmap, logits

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(last feature map [N,C,h,w], logits [N,K]) from one forward pass on [0,1] input."""
        return self.features_normalized(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]

    @property
    def cam_weights(self) -> torch.Tensor:
        """The classifier weights [K,C] that weight the feature map channels in CAM (no bias)."""
        return self.fc.weight

    @torch.no_grad()
    def feature_size(self) -> int:
        """Side of the last feature map at ``input_size`` (CAM's native resolution)."""
        p = next(self.parameters())
        x = torch.zeros(1, 3, self.input_size, self.input_size, device=p.device, dtype=p.dtype)
        was = self.training
        self.eval()
        side = self.features(x)[0].shape[-1]
        self.train(was)
        return int(side)
