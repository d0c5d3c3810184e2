"""Models a user declares in the run config (``models.custom``) without touching the package.

Two ways, both loading weights with ``weights_only=True`` (:func:`load_state_dict_file`)::

    models:
      names: [my-r18]
      custom:
        my-r18:
          torchvision: resnet18            # a torchvision architecture name ...
          weights: /path/to/state_dict.pth # ... and a local state_dict (required for torchvision)
          num_classes: 1000
          input_size: 224
          mean: [0.485, 0.456, 0.406]
          std: [0.229, 0.224, 0.225]
        my-net:
          factory: mypkg.models:build      # or any callable returning an nn.Module
          cam_layer: features              # module whose output is the last feature map
          fc: classifier.1                 # the nn.Linear after global average pooling of that map

ResNet-style torchvision architectures default to ``cam_layer: layer4`` and ``fc: fc``; DenseNet to
``features``/``classifier`` (its final ReLU is functional, so the wrapper adds it as the CAM layer's
activation); others must name both. The network runs through its own ``forward``; the CAM layer is read
with a forward hook (:class:`HookedClassifier`), so CAM = fc weights x that map (a GAP + linear head).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from adv2core.errors import CheckpointError, ConfigError
from adv2core.models.checkpoint import load_state_dict_file
from adv2core.models.classifier import Classifier, HookedClassifier

_RESNET_PREFIXES = ("resnet", "resnext", "wide_resnet")


class UserModelSpec(BaseModel):
    """One user-declared model (validated; part of the run's config hash)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    torchvision: str | None = Field(None, description="torchvision.models architecture name, e.g. resnet18")
    factory: str | None = Field(None, description="package.module:callable returning an nn.Module")
    weights: str | None = Field(None, description="local state_dict file (weights_only load)")
    num_classes: int = Field(1000, gt=0)
    input_size: int = Field(224, gt=0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    input_scale: float = Field(1.0, gt=0, description="255 when mean/std are in [0,255] units")
    cam_layer: str | None = None
    fc: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "UserModelSpec":
        if (self.torchvision is None) == (self.factory is None):
            raise ValueError("give exactly one of torchvision: <architecture> or factory: package.module:callable")
        if self.torchvision is not None and self.weights is None:
            raise ValueError("a torchvision model needs weights: /path/to/state_dict.pth (nothing is downloaded)")
        if self.factory is not None and ":" not in self.factory:
            raise ValueError(f"factory {self.factory!r} must look like package.module:callable")
        return self


def parse_user_spec(name: str, raw: Any) -> UserModelSpec:
    if isinstance(raw, UserModelSpec):
        return raw
    try:
        return UserModelSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ConfigError(f"model {name!r}: {loc + ': ' if loc else ''}{msg}") from None


def _build_net(name: str, spec: UserModelSpec) -> nn.Module:
    if spec.torchvision is not None:
        from torchvision import models as tvm

        try:
            return tvm.get_model(spec.torchvision, weights=None, num_classes=spec.num_classes)
        except ValueError:
            raise ConfigError(f"model {name!r}: unknown torchvision architecture {spec.torchvision!r}") from None
    module, _, attr = spec.factory.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise ConfigError(f"model {name!r}: cannot import {module!r} ({exc.name or exc}); install it or fix factory") from None
    except AttributeError:
        raise ConfigError(f"model {name!r}: {module!r} has no {attr!r}") from None
    net = fn()
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model {name!r}: factory {spec.factory} returned {type(net).__name__}, not an nn.Module")
    return net


def _default_taps(spec: UserModelSpec) -> tuple[str | None, str | None]:
    arch = spec.torchvision or ""
    if arch.startswith(_RESNET_PREFIXES):
        return "layer4", "fc"
    return None, None


def build_user_model(name: str, raw: Any, weights: str | Path | None = None) -> Classifier:
    """Build a declared model and load its state_dict (``weights`` overrides the spec's file)."""
    spec = parse_user_spec(name, raw)
    net = _build_net(name, spec)
    wpath = weights if weights is not None else spec.weights
    if wpath not in (None, "random"):
        state = load_state_dict_file(Path(str(wpath)).expanduser())
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit model {name!r}: {str(exc).strip().splitlines()[0]}") from None
    kw = dict(channel_order=spec.channel_order, input_scale=spec.input_scale)
    if spec.torchvision is not None and spec.torchvision.startswith("densenet") and spec.cam_layer is None:
        backbone = nn.Sequential(net.features, nn.ReLU(inplace=False))
        return Classifier(name, backbone, net.classifier, spec.mean, spec.std, spec.input_size, "densenet", **kw)
    cam_default, fc_default = _default_taps(spec)
    cam_layer, fc_name = spec.cam_layer or cam_default, spec.fc or fc_default
    if cam_layer is None or fc_name is None:
        raise ConfigError(f"model {name!r}: set cam_layer (last feature map module) and fc (the linear head) for this architecture")
    try:
        net.get_submodule(cam_layer)
        fc = net.get_submodule(fc_name)
    except AttributeError:
        raise ConfigError(f"model {name!r}: no submodule {cam_layer!r} or {fc_name!r} in the network") from None
    if not isinstance(fc, nn.Linear):
        raise ConfigError(f"model {name!r}: fc {fc_name!r} is {type(fc).__name__}, not nn.Linear (CAM needs GAP + linear)")
    return HookedClassifier(name, net, cam_layer, fc, spec.mean, spec.std, spec.input_size, "user", **kw)
