"""The RTS masking model (Dabkowski & Gal 2017, spec section 2.3), built around a classifier-family encoder.

Architecture (our own implementation of the pytorch-saliency design):

* **encoder**: a frozen feature extractor returning the last feature map at every distinct spatial side
  from about the map's native side (input/4, :func:`select_taps`) down to the deepest one, plus its *own*
  classifier head (``fc`` on the pooled deepest features; for a class-map head such as SqueezeNet's the
  deepest features are the class maps and the head is their spatial mean).

  - ResNet classifiers (``resnet-mini``, ``resnet50``, ``isic-resnet50``): a frozen copy of the classifier
    itself (backbone and fc), as the paper's RTS-ResNet, whose encoder is the black box's ResNet-50.
  - DenseNet classifiers (``encoder='auto'``): a ResNet trained on the same data, as the paper's
    RTS-DenseNet (a ResNet-50 encoder against the DenseNet-169 black box): ``densenet169`` takes a
    torchvision ResNet-50 (ImageNet weights from the local hub cache if present), ``densenet-mini`` the
    trained ``resnet-mini`` (measured on the embedded test set: top-k IoU 0.60 true / 0.23 wrong class,
    against 0.46 / 0.28 with a densenet-mini encoder). ``encoder='own'`` keeps the classifier's own.

  Input convention ``pm2`` = (x - 0.5) * 4, the public pytorch-saliency checkpoint's, or the classifier's
  own normalisation.
* **class selector**: an embedding K x C_deep; act = sum_ch(s * emb[c]) gates the deepest features,
  s <- s * sigmoid(act - confidence); the spatial mean of act gives the "exists" logits (-a/2, a/2)
  trained in phase 1.
* **U-Net upsampler**: per stage conv3x3 -> BN -> ReLU -> pixel shuffle (x2) (or ``upsample='bilinear'``:
  bilinear x2 -> conv3x3 -> BN -> ReLU), resized to the skip's exact size when the pyramid is not an
  exact x2 one (SqueezeNet 1.1: 13 -> 27 -> 55), concatenated with the encoder skip at that resolution,
  then a bottleneck residual block; channels ``decoder_base * 2^j`` for stage j (0 = finest). With
  ``skip_norm`` each encoder skip passes a BatchNorm first: SqueezeNet's skips are un-normalised ReLU
  outputs (rms about 50, max about 950 on the photos, from the Keras port's 0-255 input scale) against an
  upsampled flow of rms about 0.5 after its BN, so without it the fuse convolution sees the skip about
  200x more strongly, the mask does not depend on the class-gated deepest features (measured change
  3e-6 when they are zeroed) and the masker is class-blind. The mask is
  resized (bilinear) to input/4 when the finest skip is not there (55 -> 56 for SqueezeNet at 224).
  With ``gate_skips`` (a deviation from pytorch-saliency, off in every preset) every skip is also
  multiplied by the class gate sigmoid(act - confidence), resized to it. Without it the shallower skips
  carry the object into the mask whatever the selected class: on the embedded models a wrong class got a
  faint copy of the object's mask (a third to an eighth of the area, the same ranking, so a top-k IoU of
  0.30-0.42 with the object, docs/rts-recipe-sweep-amd.md); with it, 0.02-0.09, but the true-class
  localisation of some seeds drops below the quality bar.
  Encoders with an exact x2 pyramid (ResNets, EfficientNet-Lite0, the embedded models) never resize.
* **head**: 1x1 conv to two channels (a, b); mask = |a| / (|a| + |b| + eps) in [0,1].
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from adv2core.errors import CheckpointError, ConfigError
from adv2core.interpreters.config import RTSConfig
from adv2core.models.classifier import Classifier

#: The map's native stride (map side = input / 4 at every input size, spec section 2).
MAP_STRIDE = 4


def _flatten(module: nn.Module) -> list[nn.Module]:
    """Plain ``nn.Sequential`` containers expanded in order (subclasses such as DenseNet's transition
    layers stay whole, so a 'last output at a resolution' is a block output, not a pre-pool conv).

    A module whose forward is a fixed chain of children that is not an ``nn.Sequential`` (EfficientNet's
    ``extract_features``: stem, blocks, head) says so with a ``sequential_layers()`` method returning that
    chain; it is expanded the same way, so the encoder sees every stage's output."""
    if type(module) is nn.Sequential:
        out: list[nn.Module] = []
        for child in module:
            out += _flatten(child)
        return out
    chain = getattr(module, "sequential_layers", None)
    if callable(chain):
        out = []
        for child in chain():
            out += _flatten(child)
        return out
    return [module]


def select_taps(sides: list[int], native: int) -> list[int]:
    """Indices of the encoder's skip layers, finest first, deepest (the last layer) last.

    The skips are the *last* layer at each distinct spatial side, from the deepest side up to the finest
    side that is at most ``native * sqrt(2)`` (within half an octave above the map side input/4): so
    ResNets and the embedded models keep their exact x2 pyramid (56/28/14/7 at 224, 16/8 at 64) and a
    network whose stage sides are not powers of two, such as SqueezeNet 1.1 (111/55/27/13 at 224), takes
    55/27/13 and its mask is resized from 55 to 56. Sides coarser than ``native`` are all kept; finer
    ones (112 at 224) are not needed for a map at input/4."""
    if not sides:
        raise ConfigError("RTS encoder has no layers")
    last_at: dict[int, int] = {}
    for i, s in enumerate(sides):
        last_at[s] = i  # the last layer whose output has side s
    deepest = len(sides) - 1
    limit = native * math.sqrt(2.0)
    taps = sorted(i for s, i in last_at.items() if s <= limit and i < deepest) + [deepest]
    sizes = [sides[i] for i in taps]
    if any(a <= b for a, b in zip(sizes, sizes[1:])):
        raise ConfigError(f"RTS encoder skip sides {sizes} do not shrink from the finest to the deepest layer")
    return taps


class ClassifierEncoder(nn.Module):
    """Frozen feature extractor: [0,1] images -> feature maps (finest skip ... deepest) and own logits."""

    def __init__(
        self,
        backbone: nn.Module,
        fc: nn.Module,
        mean: torch.Tensor,
        std: torch.Tensor,
        input_size: int,
        convention: Literal["classifier", "pm2"] = "classifier",
        channel_order: Literal["rgb", "bgr"] = "rgb",
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_flatten(copy.deepcopy(backbone)))
        self.fc = copy.deepcopy(fc)
        self.register_buffer("mean", mean.detach().clone().view(1, -1, 1, 1))
        self.register_buffer("std", std.detach().clone().view(1, -1, 1, 1))
        self.convention = convention
        #: the classifier's channel order (SqueezeNet's Caffe weights take BGR), applied before its normalisation
        self.channel_order = channel_order
        self.input_size = int(input_size)
        #: the map side the masking model outputs (input / MAP_STRIDE)
        self.map_side = int(input_size) // MAP_STRIDE
        self.requires_grad_(False)
        self.eval()
        self.tap_index, self.tap_channels = self._find_taps(input_size)

    @torch.no_grad()
    def _find_taps(self, input_size: int) -> tuple[list[int], list[int]]:
        p = next(self.parameters())
        x = torch.zeros(1, 3, input_size, input_size, device=p.device, dtype=p.dtype)
        sides, chans = [], []
        for layer in self.layers:
            x = layer(x)
            if x.dim() != 4:
                raise ConfigError(f"RTS encoder layer {type(layer).__name__} does not return a feature map")
            sides.append(x.shape[-1])
            chans.append(x.shape[1])
        taps = select_taps(sides, input_size // MAP_STRIDE)
        return taps, [chans[i] for i in taps]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.convention == "pm2":
            return (x - 0.5) * 4.0
        if self.channel_order == "bgr":
            x = x.flip(1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at the tap layers, finest (input/4) first, deepest last."""
        h = self.normalize(x)
        want = set(self.tap_index)
        out = []
        for i, layer in enumerate(self.layers[: self.tap_index[-1] + 1]):
            h = layer(h)
            if i in want:
                out.append(h)
        return out

    def logits_from(self, deepest: torch.Tensor) -> torch.Tensor:
        """The head on the deepest features: ``fc(mean)``; for a class-map head (SqueezeNet, ``fc`` the
        identity) the deepest features are the class maps and this is their spatial mean, the logits."""
        return self.fc(deepest.mean(dim=(2, 3)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's own classifier head (the ADV^2 RTS attack's l_enc term)."""
        return self.logits_from(self(x)[-1])

    def train(self, mode: bool = True) -> "ClassifierEncoder":
        return super().train(False)  # always frozen: BN running statistics never change


class _Bottleneck(nn.Module):
    """Residual bottleneck (1x1 reduce, 3x3, 1x1 expand) with a 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, ratio: int = 4) -> None:
        super().__init__()
        mid = max(1, cout // ratio)
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class _UpStage(nn.Module):
    """x2 upsampling (pixel shuffle as pytorch-saliency, or bilinear + conv, which has no checkerboard
    artefacts), then fuse with the encoder skip of that resolution."""

    def __init__(self, cin: int, cskip: int, cout: int, mode: str = "pixel_shuffle", skip_norm: bool = False) -> None:
        super().__init__()
        # BatchNorm on an un-normalised skip (module docstring); Identity keeps the state dict of older maskers
        self.skip_norm = nn.BatchNorm2d(cskip) if skip_norm else nn.Identity()
        if mode == "pixel_shuffle":
            self.up = nn.Sequential(
                nn.Conv2d(cin, 4 * cout, 3, padding=1, bias=False), nn.BatchNorm2d(4 * cout), nn.ReLU(), nn.PixelShuffle(2)
            )
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            )
        self.fuse = _Bottleneck(cout + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        up = self.up(x)
        if up.shape[-2:] != skip.shape[-2:]:  # a pyramid that is not exactly x2 (SqueezeNet: 13 -> 27 -> 55)
            up = F.interpolate(up, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        skip = self.skip_norm(skip)
        if gate is not None:  # the class gate of the deepest features, resized to this skip (gate_skips)
            skip = skip * F.interpolate(gate, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([up, skip], dim=1))


class MaskingModel(nn.Module):
    """Encoder + class selector + U-Net upsampler -> mask [N,1,S/4,S/4] for a class per image."""

    def __init__(
        self, encoder: ClassifierEncoder, num_classes: int, decoder_base: int = 64, mask_eps: float = 1e-8,
        upsample: str = "pixel_shuffle", skip_norm: bool = False, gate_skips: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.gate_skips = gate_skips
        #: False when the encoder was built untrained (its weights must come from a checkpoint)
        self.encoder_pretrained = True
        self.num_classes = num_classes
        self.mask_eps = mask_eps
        chans = encoder.tap_channels
        deep = chans[-1]
        self.selector = nn.Embedding(num_classes, deep)
        nn.init.normal_(self.selector.weight, 0.0, 1.0 / math.sqrt(deep))
        n_stages = len(chans) - 1
        stages, cin = [], deep
        for j in reversed(range(n_stages)):  # coarse -> fine; stage j outputs decoder_base * 2^j
            cout = decoder_base * 2**j
            stages.append(_UpStage(cin, chans[j], cout, upsample, skip_norm))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.to_mask = nn.Conv2d(cin, 2, 1)

    def decoder_parameters(self) -> list[nn.Parameter]:
        return list(self.stages.parameters()) + list(self.to_mask.parameters())

    def selector_act(self, deepest: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """act [N,1,h,w] = sum over channels of deepest * emb[cls]."""
        return (deepest * self.selector(cls)[:, :, None, None]).sum(dim=1, keepdim=True)

    @staticmethod
    def exists_logits(act: torch.Tensor) -> torch.Tensor:
        """[N,2] logits of (fake, real) from the spatial mean of act, as pytorch-saliency."""
        ex = act.mean(dim=(2, 3))
        return torch.cat([-ex / 2, ex / 2], dim=1)

    def decode(self, feats: list[torch.Tensor], cls: torch.Tensor, confidence: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask [N,1,S/4,S/4], exists logits [N,2]) from encoder features."""
        deepest = feats[-1]
        act = self.selector_act(deepest, cls)
        gate = torch.sigmoid(act - confidence)
        flow = deepest * gate
        for stage, skip in zip(self.stages, reversed(feats[:-1])):
            flow = stage(flow, skip, gate if self.gate_skips else None)
        ab = self.to_mask(flow).abs()
        a, b = ab[:, 0:1], ab[:, 1:2]
        mask = a / (a + b + self.mask_eps)
        side = self.encoder.map_side
        if mask.shape[-2:] != (side, side):  # finest skip not at input/4 (SqueezeNet: 55 at 224)
            mask = F.interpolate(mask, size=(side, side), mode="bilinear", align_corners=False)
        return mask, self.exists_logits(act)

    def forward(self, x: torch.Tensor, cls: torch.Tensor, confidence: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.encoder(x), cls, confidence)


# ------------------------------------------------------------------------------------------------
# Construction for a classifier
# ------------------------------------------------------------------------------------------------
def resolve_convention(classifier: Classifier, cfg: RTSConfig) -> Literal["classifier", "pm2"]:
    if cfg.input_convention == "auto":
        return "pm2" if classifier.name == "resnet50" else "classifier"
    return cfg.input_convention


#: Embedded classifiers whose RTS encoder is another embedded model (the paper's RTS-DenseNet rule).
ENCODER_COMPANIONS = {"densenet-mini": "resnet-mini"}


def companion_encoder(classifier_name: str, cfg: RTSConfig) -> str | None:
    """The embedded model whose trained backbone is the RTS encoder of ``classifier_name``, if any."""
    if cfg.encoder == "own":
        return None
    return ENCODER_COMPANIONS.get(classifier_name)


def build_encoder(
    classifier: Classifier, cfg: RTSConfig, encoder_model: Classifier | None = None
) -> tuple[ClassifierEncoder, bool]:
    """(encoder, pretrained) for a classifier, per the module docstring's family rules.

    ``encoder_model``: the trained companion of an embedded DenseNet (:func:`companion_encoder`); without
    it the companion's architecture is built untrained (``pretrained=False``) and a checkpoint must
    supply the ``encoder.*`` weights."""
    conv = resolve_convention(classifier, cfg)
    if classifier.name == "densenet169" and cfg.encoder != "own":
        from adv2core.models import torchvision_models as tv

        try:
            enc_net, pretrained = tv.resnet50(weights="imagenet"), True
        except CheckpointError:
            enc_net, pretrained = tv.resnet50(weights=None), False  # a masker checkpoint must supply it
        enc_net = enc_net.to(classifier.mean.device)
        return ClassifierEncoder(enc_net.backbone, enc_net.fc, enc_net.mean, enc_net.std, classifier.input_size, conv), pretrained
    companion = companion_encoder(classifier.name, cfg)
    if companion is not None:
        if encoder_model is None:
            from adv2core.models.registry import EMBEDDED_MODELS

            encoder_model, pretrained = EMBEDDED_MODELS[companion](classifier.num_classes, classifier.input_size), False
        elif encoder_model.name != companion:
            raise ConfigError(f"the RTS encoder of {classifier.name} is {companion}, got {encoder_model.name}")
        else:
            pretrained = True
        net = encoder_model  # ClassifierEncoder copies it; build_masker moves the copy to the device
        return ClassifierEncoder(net.backbone, net.fc, net.mean, net.std, classifier.input_size, conv,
                                 net.channel_order), pretrained
    return ClassifierEncoder(classifier.backbone, classifier.fc, classifier.mean, classifier.std, classifier.input_size,
                             conv, classifier.channel_order), True


def build_masker(classifier: Classifier, cfg: RTSConfig, encoder_model: Classifier | None = None) -> MaskingModel:
    """A fresh masking model for ``classifier`` (decoder and selector initialised from ``cfg.seed``)."""
    encoder, pretrained = build_encoder(classifier, cfg, encoder_model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        masker = MaskingModel(encoder, classifier.num_classes, cfg.decoder_base, cfg.mask_eps, cfg.upsample,
                              cfg.skip_norm, cfg.gate_skips)
    masker.encoder_pretrained = pretrained
    return masker.to(classifier.mean.device)


def load_masker_state(masker: MaskingModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load, except that a checkpoint without ``encoder.*`` keys keeps the built encoder (like
    pytorch-saliency's minimal checkpoints, which never store the pretrained encoder)."""
    has_encoder = any(k.startswith("encoder.") for k in state)
    if not has_encoder and not getattr(masker, "encoder_pretrained", True):
        raise CheckpointError(
            f"RTS checkpoint {source} has no encoder.* weights and no trained encoder is available to supply them"
        )
    try:
        missing, unexpected = masker.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"RTS checkpoint {source} does not fit this masking model: {str(exc).splitlines()[0][:200]}") from None
    missing = [k for k in missing if has_encoder or not k.startswith("encoder.")]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {list(unexpected)[:3]}"
        raise CheckpointError(f"RTS checkpoint {source} does not fit this masking model ({what})")
