"""Attack losses: per-sample classification terms (cross-entropy, CW margin) and the pluggable
interpretation term of ADV^2 (:class:`InterpretationLoss`: any interpreter's differentiable map against a
target map, SSE for Grad or MSE for CAM/RTS).

Every loss is a per-sample vector [N]; the step loop sums it only to call autograd once, so a sample's
trajectory does not depend on its batch.
"""

from __future__ import annotations

from typing import Callable, Literal, Protocol

import torch
import torch.nn.functional as F

from adv2core.errors import ConfigError
from adv2core.interpreters.base import Interpreter


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample CE to ``target``; smoothing puts 1-eps on the target and eps/(K-1) elsewhere (Grad v3)."""
    if label_smoothing <= 0:
        return F.cross_entropy(logits, target, reduction="none")
    k = logits.shape[1]
    logp = F.log_softmax(logits, dim=1)
    q = torch.full_like(logp, label_smoothing / (k - 1)).scatter(1, target[:, None], 1.0 - label_smoothing)
    return -(q * logp).sum(dim=1)


def cw_margin(logits: torch.Tensor, target: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """Per-sample CW margin max_{j != t} z_j - z_t (negative = target wins), optionally max(., clip)."""
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf"))
    m = others.amax(dim=1) - z_t
    return m if clip is None else m.clamp_min(clip)


class InterpretationTerm(Protocol):
    """What an ADV^2 attack needs from the interpretation side (see :class:`InterpretationLoss`)."""

    target_map: torch.Tensor

    def map_and_logits(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def distance(self, maps: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


class InterpretationLoss:
    """l_int(x, c) = reduce_pixels (map(x, c) - m_t)^2 per sample: 'sse' (Grad) or 'mse' (CAM, RTS).

    ``map_fn`` is any differentiable map (an interpreter's ``differentiable_map``); ``fused_fn``, when
    given, returns (map, logits) from one forward pass (CAM), saving the classifier forward.
    """

    def __init__(
        self,
        map_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        target_map: torch.Tensor,
        reduction: Literal["sse", "mse"] = "mse",
        fused_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        if reduction not in ("sse", "mse"):
            raise ConfigError(f"unknown interpretation-loss reduction {reduction!r} (expected 'sse' or 'mse')")
        self.map_fn = map_fn
        self.target_map = target_map.detach()
        self.reduction = reduction
        self.fused_fn = fused_fn

    @classmethod
    def for_interpreter(
        cls, interpreter: Interpreter, target_map: torch.Tensor, reduction: Literal["sse", "mse"] = "mse"
    ) -> "InterpretationLoss":
        return cls(interpreter.differentiable_map, target_map, reduction, getattr(interpreter, "maps_and_logits", None))

    def distance(self, maps: torch.Tensor) -> torch.Tensor:
        d = (maps - self.target_map.to(maps.dtype)).flatten(1).square()
        return d.sum(dim=1) if self.reduction == "sse" else d.mean(dim=1)

    def map_and_logits(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.fused_fn is not None:
            return self.fused_fn(x, target)
        return self.map_fn(x, target), None

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.distance(self.map_and_logits(x, target)[0])
