"""The embedded small models: a narrow CIFAR-style ResNet and DenseNet with overall stride 8.

Why not torchvision's ImageNet stems: their stride-32 stem leaves a 2x2 feature map at 64x64 input,
which makes CAM useless. A 3x3 stride-1 stem and three stride-2 stages keep an 8x8 last feature map
(CAM's native resolution) at the default 64x64 input, and narrow widths keep one forward+backward of a
batch of 32 around 0.1 s on 2 CPU cores. Both are built from torchvision's blocks.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import DenseNet
from torchvision.models.resnet import BasicBlock

from adv2core.models.classifier import Classifier

#: Normalisation of the embedded models (the generated images are roughly centred at 0.5).
EMBEDDED_MEAN = (0.5, 0.5, 0.5)
EMBEDDED_STD = (0.25, 0.25, 0.25)


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
        )
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet_mini(num_classes: int, input_size: int = 64, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)) -> Classifier:
    """BasicBlock ResNet, widths 16-32-64-128, strides 1-2-2-2 after a 3x3 stride-1 stem."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    inplanes = widths[0]
    for i, (w, b) in enumerate(zip(widths, blocks)):
        layers.append(_stage(inplanes, w, b, 1 if i == 0 else 2))
        inplanes = w
    backbone = nn.Sequential(*layers)
    fc = nn.Linear(inplanes, num_classes)
    return Classifier("resnet-mini", backbone, fc, EMBEDDED_MEAN, EMBEDDED_STD, input_size, "resnet")


#: densenet-mini stems: ``conv-s2`` (the default) a 3x3 stride-2 convolution, no pooling; ``conv-maxpool`` a
#: 3x3 stride-1 convolution then a 2x2 max-pool (as torchvision's conv + pool stem, scaled down), an
#: alternative under study (benchmarks/densenet_stem.py, docs/densenet-stem.md).
DENSENET_STEMS = ("conv-s2", "conv-maxpool")


def densenet_mini(num_classes: int, input_size: int = 64, growth_rate: int = 12, block_config=(4, 4, 4),
                  stem: str = "conv-s2") -> Classifier:
    """torchvision DenseNet with a 3x3 stride-2 stem (no max-pool) and two transitions: stride 8.

    A stride-1 stem with three transitions also gives stride 8 but runs its first dense block at full
    resolution, 2.5x slower for no accuracy gain here. ``stem`` (:data:`DENSENET_STEMS`) picks the stem;
    every stem halves the resolution once, so the feature maps are the same size.
    """
    if stem not in DENSENET_STEMS:
        raise ValueError(f"densenet_mini: unknown stem {stem!r}; choose one of {', '.join(DENSENET_STEMS)}")
    net = DenseNet(growth_rate=growth_rate, block_config=block_config, num_init_features=2 * growth_rate, bn_size=4, num_classes=num_classes)
    stride = 2 if stem == "conv-s2" else 1
    net.features.conv0 = nn.Conv2d(3, 2 * growth_rate, 3, stride=stride, padding=1, bias=False)
    net.features.pool0 = nn.Identity() if stem == "conv-s2" else nn.MaxPool2d(2)
    # DenseNet's final ReLU is functional in torchvision; a module here so CAM and the twin see it.
    backbone = nn.Sequential(net.features, nn.ReLU(inplace=False))
    return Classifier("densenet-mini", backbone, net.classifier, EMBEDDED_MEAN, EMBEDDED_STD, input_size, "densenet")
