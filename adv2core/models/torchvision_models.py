"""ImageNet and ISIC classifiers from torchvision classes, wrapped as :class:`Classifier`.

Weights are never downloaded. They come from (in order): a local state_dict file given by the user
(loaded with ``weights_only=True``), or torchvision's weights enum *if its file is already in the local
torch hub cache*. With neither, one clear error names both options. ``weights=None`` gives random
weights (tests, smoke runs).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from adv2core.errors import CheckpointError
from adv2core.models.checkpoint import load_state_dict_file
from adv2core.models.classifier import Classifier

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ENUMS = {"resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1, "densenet169": tvm.DenseNet169_Weights.IMAGENET1K_V1}


def _hub_file(enum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name


def _resolve_weights(name: str, weights: str | Path | None) -> dict | None:
    if weights is None or weights == "random":
        return None
    if weights == "imagenet":
        enum = _ENUMS.get(name)
        if enum is not None and _hub_file(enum).is_file():
            return load_state_dict_file(_hub_file(enum))
        hub = _hub_file(enum) if enum is not None else "(no torchvision enum)"
        raise CheckpointError(
            f"no local weights for {name}: put torchvision's file at {hub} or pass a state_dict file "
            f"(weights: /path/to/{name}.pth); nothing is downloaded"
        )
    return load_state_dict_file(Path(weights))


def _wrap_resnet(name: str, net: tvm.ResNet, mean, std, input_size: int) -> Classifier:
    backbone = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    return Classifier(name, backbone, net.fc, mean, std, input_size, "resnet")


def _wrap_densenet(name: str, net: tvm.DenseNet, mean, std, input_size: int) -> Classifier:
    # torchvision applies the last ReLU with F.relu in forward(); it is part of CAM's feature map.
    backbone = nn.Sequential(net.features, nn.ReLU(inplace=False))
    return Classifier(name, backbone, net.classifier, mean, std, input_size, "densenet")


def resnet50(weights: str | Path | None = "imagenet", num_classes: int = 1000) -> Classifier:
    net = tvm.resnet50(weights=None, num_classes=num_classes)
    state = _resolve_weights("resnet50", weights)
    if state is not None:
        _load(net, state, "resnet50")
    return _wrap_resnet("resnet50", net, IMAGENET_MEAN, IMAGENET_STD, 224)


def densenet169(weights: str | Path | None = "imagenet", num_classes: int = 1000) -> Classifier:
    net = tvm.densenet169(weights=None, num_classes=num_classes)
    state = _resolve_weights("densenet169", weights)
    if state is not None:
        state = _fix_legacy_densenet_keys(state)
        _load(net, state, "densenet169")
    return _wrap_densenet("densenet169", net, IMAGENET_MEAN, IMAGENET_STD, 224)


def isic_resnet50(weights: str | Path | None = None) -> Classifier:
    """The ISIC skin-lesion classifier: ResNet-50 with a 7-way head on raw [0,1] input (spec section 5)."""
    net = tvm.resnet50(weights=None, num_classes=7)
    if weights == "imagenet":
        raise CheckpointError("isic-resnet50 has no torchvision weights: pass its state_dict file (weights: /path/to/isic.pth)")
    state = _resolve_weights("isic-resnet50", weights)
    if state is not None:
        _load(net, state, "isic-resnet50")
    return _wrap_resnet("isic-resnet50", net, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 224)


def _fix_legacy_densenet_keys(state: dict) -> dict:
    """Old torchvision DenseNet files name layers 'norm.1' instead of 'norm1'; rename them."""
    import re

    pat = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    out = {}
    for k, v in state.items():
        m = pat.match(k)
        out[(m.group(1) + m.group(2)) if m else k] = v
    return out


def _load(net: nn.Module, state: dict, name: str) -> None:
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"weights do not fit {name}: {first}") from None
