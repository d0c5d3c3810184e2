"""Local intrinsic dimensionality detector (Ma et al. ICLR'18) as in spec 3.4.

Features. Forward hooks on a list of modules (:func:`feature_modules`), each output flattened per image,
plus the logits (``include_logits``). Default list, generic for any ``nn.Module``: the children of
``model.backbone`` (of the model itself when it has no ``backbone``), where a child that is exactly an
``nn.Sequential`` is replaced by its own children, recursively, and ``nn.Identity`` children are skipped.
For the project's models that gives: resnet-mini 7 stages (conv, bn, relu, one per residual block);
torchvision ResNet-50 20 (conv1, bn1, relu, maxpool and the 16 bottlenecks, the spec's list);
densenet-mini conv0, norm0, relu0, each dense block, each transition, norm5 and the final ReLU.
A model may name its own stages instead (``Classifier.lid_layers``: efficientnet-lite0 lists its stem, its
16 MBConv blocks and its head, because its backbone's only child is the whole library model);
``LIDConfig.layers`` names modules explicitly over both (``model.get_submodule`` names). Outputs are
copied in the hook, because a following in-place ReLU would overwrite them.

Estimate. For a query x and a reference minibatch B of benign images (Euclidean distances r_1 <= ... <= r_k
to x's k nearest neighbours in B, per layer):

    LID_k(x) = - ( (1/k) * sum_{i=1..k} log(r_i / r_k) )^-1

Queries are processed in minibatches of ``minibatch`` images; query minibatch j uses benign minibatch
``j mod n_B`` as its reference (at fit time the benign, noisy and adversarial sets are aligned, so these
are the benign images matching the query minibatch, as in Ma et al.). At fit time the three sets must be
aligned (image i of each comes from benign image i), and a query never counts its own source image as a
neighbour: the noisy / adversarial copy of image i sits right next to benign i, which would make r_1 tiny
and the estimate meaningless. Ma et al.'s code drops the first column of the sorted distances of every
query for the same reason; dropping the source index instead is the same whenever the source is the
nearest (it nearly always is) and is exact when it is not. Held-out images (``score``) are compared with
the full stored benign minibatches. k is capped at the reference size minus one.

Classifier. One LID per layer is the feature vector; for each k in ``ks`` a MinMaxScaler +
LogisticRegressionCV pipeline (scikit-learn) is scored by stratified ``cv_folds``-fold ROC AUC; the best k
(ties: the smaller) is refitted on everything. Negatives: benign and benign + U(-eps, eps) noise (re-quantised
to uint8); positives: adversarial. :meth:`LIDDetector.score` is the fitted probability of "adversarial".

Data. Every benign minibatch must cover the classes (a reference without a query's class inflates its
LID: a class-incomplete split dropped the held-out AUC from 0.80 to 0.55 on the embedded set), and the fit
images should be like the evaluated ones, i.e. not the classifier's training images. On the embedded set:
fit on one half of the test split, evaluate on the other.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from adv2core.defences.config import LIDConfig
from adv2core.errors import ConfigError
from adv2core.metrics.quantize import quantize_uint8


def feature_modules(model: nn.Module, layers: tuple[str, ...] | list[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs whose outputs are LID features (see the module docstring)."""
    layers = layers if layers is not None else getattr(model, "lid_layers", None)
    if layers is not None:
        out = []
        for name in layers:
            try:
                out.append((name, model.get_submodule(name)))
            except AttributeError:
                raise ConfigError(f"LID layer {name!r} is not a submodule of {type(model).__name__}") from None
        return out
    root = getattr(model, "backbone", None)
    prefix = "backbone" if isinstance(root, nn.Module) else ""
    root = root if isinstance(root, nn.Module) else model

    def expand(mod: nn.Module, pre: str) -> list[tuple[str, nn.Module]]:
        found = []
        for n, child in mod.named_children():
            full = f"{pre}.{n}" if pre else n
            if type(child) is nn.Sequential:
                found += expand(child, full)
            elif not isinstance(child, nn.Identity):
                found.append((full, child))
        return found

    mods = expand(root, prefix)
    if not mods:
        raise ConfigError(f"{type(model).__name__} has no child modules to take LID features from; set lid.layers")
    return mods


@torch.no_grad()
def layer_features(model: nn.Module, x: torch.Tensor, modules: list[tuple[str, nn.Module]], include_logits: bool = True) -> list[torch.Tensor]:
    """One [N, D_l] float32 tensor per hooked module (in list order), then the logits if asked."""
    seen: dict[int, torch.Tensor] = {}

    def hook(idx: int):
        def fn(_m: nn.Module, _i: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor):
                raise ConfigError(f"LID layer {modules[idx][0]!r} returns {type(out).__name__}, not a tensor")
            seen[idx] = out.detach().flatten(1).float().clone()
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(modules)]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    missing = [modules[i][0] for i in range(len(modules)) if i not in seen]
    if missing:
        raise ConfigError(f"LID layer {missing[0]!r} did not run in the model's forward pass")
    feats = [seen[i] for i in range(len(modules))]
    if include_logits:
        feats.append(logits.detach().flatten(1).float())
    return feats


def neighbour_distances(query: list[torch.Tensor], reference: list[torch.Tensor], kmax: int, exclude_self: bool) -> torch.Tensor:
    """[N_q, L, kmax] sorted distances to the kmax nearest reference points, per layer.

    ``exclude_self``: query i comes from reference i (the same image, or its noisy / adversarial copy);
    that entry is dropped.
    """
    out = []
    for q, r in zip(query, reference):
        d = torch.cdist(q.double(), r.double())
        if exclude_self:
            d.fill_diagonal_(math.inf)
        out.append(d.topk(kmax, dim=1, largest=False, sorted=True).values)
    return torch.stack(out, dim=1)


def lid_mle(dists: torch.Tensor, k: int) -> torch.Tensor:
    """MLE LID from sorted neighbour distances [..., >= k] -> [...] (float64)."""
    r = dists[..., :k].clamp_min(1e-12)
    s = torch.log(r / r[..., k - 1 : k]).sum(dim=-1)
    return -k / s.clamp_max(-1e-12)


def uniform_noise(x: torch.Tensor, eps: float, seed: int = 0) -> torch.Tensor:
    """benign + U(-eps, eps), clipped to [0,1] and re-quantised to uint8 (LID's extra negatives)."""
    g = torch.Generator().manual_seed(seed)
    u = (torch.rand(x.shape, generator=g, dtype=torch.float32) * 2 - 1) * eps
    return quantize_uint8((x.detach().float().cpu() + u).clamp(0, 1)).to(device=x.device, dtype=x.dtype)


class LIDDetector:
    """``LIDDetector(model).fit(benign, noisy, adversarial)``, then ``score(x)`` -> [N] P(adversarial)."""

    def __init__(self, model: nn.Module, cfg: LIDConfig | None = None) -> None:
        self.model = model
        self.cfg = cfg or LIDConfig()
        self.modules = feature_modules(model, self.cfg.layers)
        self.k_: int | None = None
        self.cv_auc_: dict[int, float] = {}
        self.pipeline_: Any = None
        self._ref: list[list[torch.Tensor]] = []

    # -- distances ------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        p = next(iter(self.model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def _feats(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.model.eval()
        return layer_features(self.model, x.to(self._device()), self.modules, self.cfg.include_logits)

    def _kmax(self) -> int:
        smallest = min(r[0].shape[0] for r in self._ref)
        return max(1, min(max(self.cfg.ks), smallest - 1))

    def _distances(self, x: torch.Tensor | None, aligned: bool = False) -> torch.Tensor:
        """[N, L, kmax] for queries ``x`` against the stored benign minibatches (None: those benign images).

        ``aligned``: x[i] comes from benign image i of the fit set, whose entry is then excluded."""
        mb, kmax, out = self.cfg.minibatch, self._kmax(), []
        n = sum(r[0].shape[0] for r in self._ref) if x is None else x.shape[0]
        for j, start in enumerate(range(0, n, mb)):
            ref = self._ref[j % len(self._ref)]
            q = ref if x is None else self._feats(x[start : start + mb])
            out.append(neighbour_distances(q, ref, kmax, exclude_self=aligned))
        return torch.cat(out)

    def effective_ks(self) -> list[int]:
        """The configured ks capped by the reference size (minus self), deduplicated, ascending."""
        return sorted({min(k, self._kmax()) for k in self.cfg.ks})

    def lid(self, x: torch.Tensor, k: int | None = None) -> np.ndarray:
        """[N, L] LID estimates of ``x`` (at the fitted k unless given)."""
        k = k or self.k_
        if k is None or not self._ref:
            raise ConfigError("LIDDetector: call fit(benign, noisy, adversarial) before lid()/score()")
        return lid_mle(self._distances(x), k).cpu().numpy()

    # -- fitting --------------------------------------------------------------------------------------
    def fit(self, benign: torch.Tensor, noisy: torch.Tensor | None, adversarial: torch.Tensor) -> "LIDDetector":
        """Fit on aligned sets (noisy None: made here with U(-noise_eps, noise_eps)); picks k by CV AUC."""
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import MinMaxScaler

        if benign.shape[0] < 3:
            raise ConfigError(f"LID fit needs >= 3 benign images, got {benign.shape[0]}")
        if noisy is None:
            noisy = uniform_noise(benign, self.cfg.noise_eps, self.cfg.seed)
        if not benign.shape[0] == noisy.shape[0] == adversarial.shape[0]:
            raise ConfigError(
                f"LID fit needs aligned sets (image i of each from benign image i), got {benign.shape[0]} benign, "
                f"{noisy.shape[0]} noisy and {adversarial.shape[0]} adversarial"
            )
        mb = self.cfg.minibatch
        self._ref = [self._feats(benign[s : s + mb]) for s in range(0, benign.shape[0], mb)]
        d = torch.cat([self._distances(None, True), self._distances(noisy, True), self._distances(adversarial, True)])
        y = np.r_[np.zeros(benign.shape[0] + noisy.shape[0]), np.ones(adversarial.shape[0])].astype(int)
        folds = min(self.cfg.cv_folds, int(np.bincount(y).min()))
        if folds < 2:
            raise ConfigError("LID fit: too few images per class for cross-validation")
        cv = StratifiedKFold(folds, shuffle=True, random_state=self.cfg.seed)

        def pipe():
            return make_pipeline(MinMaxScaler(), LogisticRegressionCV(max_iter=2000, cv=folds, scoring="neg_log_loss"))

        with warnings.catch_warnings():
            # scikit-learn 1.9 announces default changes of LogisticRegressionCV (l1_ratios, attributes)
            # that do not affect an L2 fit; the arguments that silence them do not exist in older versions
            warnings.simplefilter("ignore", FutureWarning)
            self.cv_auc_ = {}
            for k in self.effective_ks():
                feats = lid_mle(d, k).cpu().numpy()
                self.cv_auc_[k] = float(cross_val_score(pipe(), feats, y, cv=cv, scoring="roc_auc").mean())
            self.k_ = max(self.cv_auc_, key=lambda k: (self.cv_auc_[k], -k))
            self.pipeline_ = pipe().fit(lid_mle(d, self.k_).cpu().numpy(), y)
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """[N] float32 probability that each image is adversarial (higher = flagged)."""
        if self.pipeline_ is None:
            raise ConfigError("LIDDetector: call fit(benign, noisy, adversarial) before score()")
        p = self.pipeline_.predict_proba(self.lid(x))[:, 1]
        return torch.from_numpy(p.astype(np.float32))
