"""Feature squeezing (Xu et al. NDSS'18) as used by the ADV^2 detection experiment (spec 3.4).

Squeezers (every output is re-quantised to the uint8 grid, ``round(255 v) / 255``, before prediction):

* ``bit{d}``, d in 1..5: ``round(x (2^d - 1)) / (2^d - 1)`` (Xu et al.'s bit-depth reduction).
* ``median{k}``, k in {2, 3}: ``scipy.ndimage.median_filter`` over each channel with a k x k window and
  ``mode='reflect'`` (half-sample symmetric, ``d c b a | a b c d``), one batched call ``size=(1,1,k,k)``.
  Even-size convention (scipy's, with ``origin=0``): the 2x2 window covers the pixel and its upper and
  left neighbours (rows i-1..i, columns j-1..j), and the value is scipy's rank ``k*k // 2`` element, i.e.
  the *upper* of the two middle values of the four (not their mean).
* ``nlm{s}-{p}-{h}``: ``cv2.fastNlMeansDenoisingColored(img, None, h, h, p, s)`` (search window s, patch p,
  strength h for luminance and colour), one call per image (OpenCV works per image) on the uint8 image
  in BGR order, which is what OpenCV's colour conversion expects.

A *combination* enables at most one squeezer of each family; every (bit depth or none) x (median or none)
x (NLM or none) except all-none is a detector, named by joining the enabled squeezers with ``+`` in that
order (``bit3``, ``median2+nlm11-3-4``, ``bit3+median2+nlm11-3-4``). Its score is Xu et al.'s joint score

    score(x) = max over the enabled squeezers s of || softmax(f(x)) - softmax(f(s(x))) ||_1

(the squeezers are applied separately, not composed). Since the per-squeezer distances do not depend on
the combination, :func:`squeezer_distances` computes each once and :func:`combination_scores` takes maxima.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from adv2core.defences.config import FSConfig
from adv2core.errors import ConfigError
from adv2core.metrics.quantize import quantize_uint8, to_uint8


# ----------------------------------------------------------------------------------------------------
# The squeezers themselves: [N,3,H,W] in [0,1] -> same shape, dtype and device, on the uint8 grid
# ----------------------------------------------------------------------------------------------------
def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Reduce every channel to ``bits`` bits (``2^bits`` levels), then snap onto the uint8 grid."""
    if not 1 <= bits <= 8:
        raise ConfigError(f"bit depth must be in 1..8, got {bits}")
    levels = float(2**bits - 1)
    return quantize_uint8(torch.round(x.clamp(0.0, 1.0) * levels) / levels)


def median(x: torch.Tensor, size: int) -> torch.Tensor:
    """Per-channel ``size`` x ``size`` median, scipy reflect padding (see the module docstring for 2x2)."""
    from scipy import ndimage

    if size < 2:
        raise ConfigError(f"median filter size must be >= 2, got {size}")
    arr = x.detach().to("cpu", torch.float32).numpy()
    out = ndimage.median_filter(arr, size=(1, 1, size, size), mode="reflect")
    return quantize_uint8(torch.from_numpy(out).to(device=x.device, dtype=x.dtype))


def nlm(x: torch.Tensor, search: int, patch: int, strength: float) -> torch.Tensor:
    """OpenCV's coloured non-local means on the uint8 image (BGR order), one image at a time."""
    import cv2

    u8 = to_uint8(x.detach()).permute(0, 2, 3, 1).cpu().numpy()  # NHWC RGB
    out = np.empty_like(u8)
    for i in range(u8.shape[0]):  # OpenCV has no batched call
        bgr = np.ascontiguousarray(u8[i, :, :, ::-1])
        den = cv2.fastNlMeansDenoisingColored(bgr, None, float(strength), float(strength), int(patch), int(search))
        out[i] = den[:, :, ::-1]
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255.0


# ----------------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------------
def _num(v: float) -> str:
    return f"{v:g}"


@dataclass(frozen=True)
class Squeezer:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def squeezer_families(cfg: FSConfig | None = None) -> tuple[list[Squeezer], list[Squeezer], list[Squeezer]]:
    """(bit-depth, median, NLM) squeezers of ``cfg``, in config order."""
    cfg = cfg or FSConfig()
    bits = [Squeezer(f"bit{d}", lambda x, d=d: bit_depth(x, d)) for d in cfg.bit_depths]
    meds = [Squeezer(f"median{k}", lambda x, k=k: median(x, k)) for k in cfg.medians]
    nlms = [
        Squeezer(f"nlm{s}-{p}-{_num(h)}", lambda x, s=s, p=p, h=h: nlm(x, s, p, h)) for s, p, h in cfg.nlm
    ]
    return bits, meds, nlms


def squeezers(cfg: FSConfig | None = None) -> dict[str, Squeezer]:
    """Every single squeezer of ``cfg`` by name."""
    return {s.name: s for fam in squeezer_families(cfg) for s in fam}


def combinations(cfg: FSConfig | None = None) -> dict[str, tuple[str, ...]]:
    """Every detector: name -> the squeezer names it enables. Stable order (itertools.product over the
    families with 'none' first); ``(B+1)(M+1)(L+1) - 1`` entries (89 with the spec's 5, 2 and 4)."""
    bits, meds, nlms = squeezer_families(cfg)
    out: dict[str, tuple[str, ...]] = {}
    for combo in itertools.product([None, *bits], [None, *meds], [None, *nlms]):
        names = tuple(s.name for s in combo if s is not None)
        if names:
            out["+".join(names)] = names
    return out


def combination_names(cfg: FSConfig | None = None) -> list[str]:
    return list(combinations(cfg))


# ----------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------
def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def softmax_in_batches(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """softmax(model(x)) [N,K] in float32, evaluated ``batch_size`` images at a time on the model's device."""
    dev = _device(model)
    outs = [torch.softmax(model(x[i : i + batch_size].to(dev)).float(), dim=1) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, 0)


@torch.no_grad()
def squeezer_distances(
    model: nn.Module, x: torch.Tensor, names: Iterable[str] | None = None, cfg: FSConfig | None = None
) -> dict[str, torch.Tensor]:
    """name -> [N] L1 distance ``||softmax(f(x)) - softmax(f(s(x)))||_1`` for each requested squeezer."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ConfigError(f"feature squeezing needs images [N,3,H,W], got shape {tuple(x.shape)}")
    cfg = cfg or FSConfig()
    table = squeezers(cfg)
    wanted = list(table) if names is None else list(names)
    for n in wanted:
        if n not in table:
            raise ConfigError(f"unknown squeezer {n!r}; choose one of: {', '.join(table)}")
    model.eval()
    p = softmax_in_batches(model, x, cfg.batch_size)
    return {n: (p - softmax_in_batches(model, table[n](x), cfg.batch_size)).abs().sum(dim=1) for n in wanted}


def combination_scores(
    distances: Mapping[str, torch.Tensor], combos: Mapping[str, Sequence[str]]
) -> dict[str, torch.Tensor]:
    """combination name -> [N] max of its squeezers' distances (all must be in ``distances``)."""
    out = {}
    for name, members in combos.items():
        missing = [m for m in members if m not in distances]
        if missing:
            raise ConfigError(f"combination {name!r} needs squeezer {missing[0]!r}, which was not computed")
        out[name] = torch.stack([distances[m] for m in members]).amax(dim=0)
    return out


class FeatureSqueezing:
    """One feature-squeezing detector: ``FeatureSqueezing(model, 'bit3+median2')`` -> ``score(x)`` [N].

    Higher = more likely adversarial; threshold with :func:`adv2core.defences.calibrate.threshold_at_fpr`.
    """

    def __init__(self, model: nn.Module, combination: str, cfg: FSConfig | None = None) -> None:
        self.cfg = cfg or FSConfig()
        table = combinations(self.cfg)
        if combination not in table:
            raise ConfigError(
                f"unknown feature-squeezing combination {combination!r} ({len(table)} known, e.g. {next(iter(table))!r})"
            )
        self.model = model
        self.combination = combination
        self.squeezers = table[combination]

    def distances(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return squeezer_distances(self.model, x, self.squeezers, self.cfg)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        d = self.distances(x)
        return torch.stack([d[s] for s in self.squeezers]).amax(dim=0)


def all_scores(model: nn.Module, x: torch.Tensor, cfg: FSConfig | None = None) -> dict[str, torch.Tensor]:
    """Scores of every selected combination (``cfg.combinations`` or all), each squeezer run once."""
    cfg = cfg or FSConfig()
    combos = combinations(cfg)
    if cfg.combinations is not None:
        combos = {c: combos[c] for c in cfg.combinations}
    needed = sorted({s for members in combos.values() for s in members})
    return combination_scores(squeezer_distances(model, x, needed, cfg), combos)
