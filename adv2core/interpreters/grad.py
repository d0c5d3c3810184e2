"""Grad: vanilla gradient saliency exactly as the official attack code computes it (spec section 2.1).

map = minmax( avgpool_{S/(4*map)}( max_channel |d CE(f(x), c) / dx| ) ), native side S/4 (56 at 224,
16 at 64). The gradient is of the cross-entropy (log-probability), not the logit — the code's choice
(``logit=True`` gives the paper's d f_c / dx variant).

Evaluation maps use the true ReLU network with the gradient w.r.t. the raw [0,1] input. The attack path
(:meth:`differentiable_map`) uses the smooth-ReLU twin with ``create_graph`` and, like the official
code, takes the gradient w.r.t. the *normalised* input (``attack_wrt='normalized'``; ``'raw'`` removes
that ~2 % per-channel 1/std inconsistency).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from adv2core.interpreters.base import Interpreter, minmax_normalize
from adv2core.models.classifier import Classifier
from adv2core.models.surrogate import DEFAULT_TAU, SmoothReLUMode


class Grad(Interpreter):
    name = "grad"
    class_sensitive = False  # localisation true / wrong class 0.347 / 0.352 on the resnet-mini test fixture

    def __init__(
        self,
        model: Classifier,
        *,
        logit: bool = False,
        pool: int = 4,
        tau: float | None = None,
        attack_wrt: Literal["normalized", "raw"] = "normalized",
    ) -> None:
        super().__init__(model)
        self.logit = logit
        self.pool = pool
        # None: the model's own twin width (Classifier.twin_tau, set where its activations are not on the
        # unit scale), else the paper's 1e-4
        self.tau = float(tau) if tau is not None else (getattr(model, "twin_tau", None) or DEFAULT_TAU)
        self.attack_wrt = attack_wrt

    def map_size(self, input_size: int | None = None) -> int:
        return (input_size or self.model.input_size) // self.pool

    def _objective(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.logit:
            return logits.gather(1, target[:, None]).sum()
        # Summed CE: each sample's gradient is its own (no cross-sample terms in eval mode).
        return F.cross_entropy(logits, target, reduction="sum")

    def _map_from_grad(self, g: torch.Tensor) -> torch.Tensor:
        m = g.abs().amax(dim=1, keepdim=True)
        m = F.avg_pool2d(m, self.pool)
        return minmax_normalize(m)

    def explain(self, x, target, *, ids=None) -> torch.Tensor:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            logits = self.model(xr)
            (g,) = torch.autograd.grad(self._objective(logits, target), xr)
        return self._map_from_grad(g).detach()

    __call__ = explain

    def differentiable_map(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Surrogate-twin map with the graph to ``x`` (double backward through the smooth ReLU)."""
        with SmoothReLUMode(self.tau):
            if self.attack_wrt == "normalized":
                xn = self.model.normalize(x)
                if not xn.requires_grad:
                    xn = xn.requires_grad_(True)
                _, logits = self.model.features_normalized(xn)
                (g,) = torch.autograd.grad(self._objective(logits, target), xn, create_graph=True)
            else:
                xr = x if x.requires_grad else x.requires_grad_(True)
                logits = self.model(xr)
                (g,) = torch.autograd.grad(self._objective(logits, target), xr, create_graph=True)
            return self._map_from_grad(g)
