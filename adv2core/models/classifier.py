"""One wrapper for every classifier: [0,1] images in, normalisation inside, CAM taps exposed.

Every model is ``normalise -> backbone -> spatial mean -> fc``, where ``backbone`` ends at the *CAM
layer* (the last feature map, post-activation) and the head is one of two kinds:

* ``gap_linear`` (ResNet, DenseNet, EfficientNet-Lite0, user models): ``fc`` is an ``nn.Linear`` on the
  pooled features; CAM_c = sum_k w_{c,k} A_k with the fc weights of class c (Zhou et al.).
* ``class_map`` (fully convolutional: SqueezeNet 1.1): the backbone already ends with the per-class
  1x1 convolution, so its output is one map per class [N,K,h,w] and the logits are their spatial mean
  (``fc`` is the identity); CAM_c = the class's own map channel A_c (the same formula with w = I).

DenseNet's final ReLU is functional in torchvision; the wrappers make it a module so that CAM sees the
same map and the surrogate twin sees it too.

Normalisation: ``x`` in [0,1] RGB -> (BGR if ``channel_order='bgr'``) -> (x - mean) / std, with mean/std
in the model's channel order and in [0,1] units. A model that expects [0,255] input (Caffe style)
states ``input_scale=255``: mean and std are given in [0,255] units and divided by 255 here, which is
the same affine map ((255 x - m) / s = (x - m/255) / (s/255)).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

HeadKind = Literal["gap_linear", "class_map"]
HEAD_KINDS: tuple[str, ...] = ("gap_linear", "class_map")


class Classifier(nn.Module):
    """A classifier taking raw RGB images in [0,1] of shape [N,3,S,S].

    Attributes:
        name: registry name (``resnet-mini``, ``resnet50`` ...).
        num_classes: K.
        input_size: S, the side the model expects.
        backbone: module mapping the *normalised* image to the CAM layer's output [N,C,h,w] (post-activation;
            for a ``class_map`` head C = K).
        fc: the linear classifier on the pooled features (its weights give CAM), identity for ``class_map``.
        head: ``gap_linear`` or ``class_map``.
        channel_order: ``rgb`` or ``bgr`` (the order the backbone expects).
        class_names: optional names in class-index order.
    """

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        fc: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int,
        family: str,
        *,
        head: HeadKind = "gap_linear",
        num_classes: int | None = None,
        channel_order: Literal["rgb", "bgr"] = "rgb",
        input_scale: float = 1.0,
        class_names: Sequence[str] | None = None,
        twin_tau: float | None = None,
        lid_layers: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {HEAD_KINDS}, got {head!r}")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        if head == "gap_linear" and not isinstance(fc, nn.Linear):
            raise ValueError("a gap_linear head needs an nn.Linear fc")
        self.name = name
        self.family = family
        self.head = head
        self.channel_order = channel_order
        self.backbone = backbone
        self.fc = fc
        if num_classes is None:
            if not isinstance(fc, nn.Linear):
                raise ValueError("num_classes is required when fc is not an nn.Linear")
            num_classes = fc.out_features
        self.num_classes = int(num_classes)
        self.input_size = input_size
        self.class_names = list(class_names) if class_names is not None else None
        #: Width of the smooth-ReLU twin used by the Grad attack (adv2core/models/surrogate.py) for this
        #: model, when its pre-activations are not on the unit scale that the paper's tau = 1e-4 assumes.
        self.twin_tau = None if twin_tau is None else float(twin_tau)
        #: Submodule names (``get_submodule``) whose outputs are LID's features for this model, when the generic
        #: rule of adv2core/defences/lid.py (the children of ``backbone``) does not see its stages.
        self.lid_layers = None if lid_layers is None else tuple(lid_layers)
        scale = float(input_scale)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).div(scale).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).div(scale).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_order == "bgr":
            x = x.flip(1)
        return (x - self.mean) / self.std

    def features_normalized(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CAM-layer map, logits) from an already normalised input."""
        fmap = self.backbone(xn)
        logits = self.fc(fmap.mean(dim=(2, 3)))
        return fmap, logits

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CAM-layer map [N,C,h,w], logits [N,K]) from one forward pass on [0,1] input."""
        return self.features_normalized(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[1]

    @property
    def cam_weights(self) -> torch.Tensor:
        """The weights [K,C] that weight the CAM layer's channels (fc weights; identity for class maps)."""
        if self.head == "class_map":
            p = self.mean
            return torch.eye(self.num_classes, device=p.device, dtype=p.dtype)
        return self.fc.weight

    def cam(self, fmap: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Raw CAM [N,1,h,w] of class ``target`` [N] from the CAM-layer map (no bias, no ReLU, no resize)."""
        if self.head == "class_map":
            idx = target.view(-1, 1, 1, 1).expand(-1, 1, *fmap.shape[-2:])
            return fmap.gather(1, idx)
        w = self.fc.weight[target]
        return torch.einsum("nc,nchw->nhw", w, fmap).unsqueeze(1)

    @torch.no_grad()
    def feature_size(self) -> int:
        """Side of the CAM layer's map at ``input_size`` (CAM's native resolution)."""
        p = next(self.parameters())
        x = torch.zeros(1, 3, self.input_size, self.input_size, device=p.device, dtype=p.dtype)
        was = self.training
        self.eval()
        side = self.features(x)[0].shape[-1]
        self.train(was)
        return int(side)


class HookedClassifier(Classifier):
    """A whole network used as is (its own ``forward`` gives the logits) with the CAM layer read by a hook.

    For user models (``package.module:callable`` or a torchvision architecture other than ResNet/DenseNet):
    ``backbone`` is the full network, ``cam_layer`` the module whose output is the last feature map, and
    ``fc`` the ``nn.Linear`` that follows the global average pool of that map.
    """

    def __init__(self, name: str, net: nn.Module, cam_layer: str, fc: nn.Linear, mean, std, input_size: int,
                 family: str, **kw) -> None:
        super().__init__(name, net, fc, mean, std, input_size, family, **kw)
        self.cam_layer = cam_layer
        self._tap = net.get_submodule(cam_layer)

    def features_normalized(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        handle = self._tap.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            logits = self.backbone(xn)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise RuntimeError(f"{self.name}: CAM layer {self.cam_layer!r} ran {len(seen)} times in one forward (expected 1)")
        return seen[0], logits
