"""Attack results and per-sample status: what every attack returns, and the on-device bookkeeping of
which samples failed (with a reason code), stopped early, and how many steps each took.

Reasons stay integer codes on the device during the step loops (no host syncs) and become strings once,
after the loop (:meth:`Status.reasons`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

#: Failure codes -> reasons (codes live on device during the loop; strings are built afterwards).
FAIL_REASONS: dict[int, str] = {
    1: "non-finite gradient",
    2: "non-finite loss",
    3: "non-finite interpreter map",
    4: "non-finite line-search direction",
}


@dataclass
class AttackResult:
    """What every attack returns (all tensors on the input's device, batch first).

    ``success`` follows the attack's own rule (final argmax, best iterate with p_t above a threshold,
    best quantised snapshot); the bench cell re-evaluates everything on the uint8-quantised image.
    """

    x_adv: torch.Tensor  # [N,3,H,W] in [0,1]
    success: torch.Tensor  # bool [N]
    steps: torch.Tensor  # int64 [N]: update steps actually taken by each sample
    failed: torch.Tensor  # bool [N]: frozen because of a numerical failure
    reasons: list[str | None]  # per sample, None unless failed
    target: torch.Tensor  # int64 [N] target classes
    logits: torch.Tensor | None = None  # [N,K] logits of x_adv (unquantised)
    adv_map: torch.Tensor | None = None  # [N,1,h,w] the map the attack selected / reached, if any
    selected_step: torch.Tensor | None = None  # int64 [N] step of the selected iterate (-1 = none)
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.x_adv.shape[0]


class Status:
    """Per-sample state during an attack: failed (with code), early-stopped, step counter."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.failed = torch.zeros(n, dtype=torch.bool, device=device)
        self.stopped = torch.zeros(n, dtype=torch.bool, device=device)
        self.code = torch.zeros(n, dtype=torch.int8, device=device)
        self.steps = torch.zeros(n, dtype=torch.long, device=device)

    @property
    def active(self) -> torch.Tensor:
        return ~(self.failed | self.stopped)

    def fail(self, bad: torch.Tensor, code: int) -> None:
        new = bad & ~self.failed
        self.code = torch.where(new, torch.full_like(self.code, code), self.code)
        self.failed = self.failed | new

    def check(self, loss: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Mark samples with a non-finite loss or gradient as failed; returns the active mask."""
        self.fail(~torch.isfinite(loss), 2)
        self.fail(~torch.isfinite(grad).flatten(1).all(dim=1), 1)
        return self.active

    def reasons(self) -> list[str | None]:
        return [FAIL_REASONS.get(c) if c else None for c in self.code.tolist()]


def expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [N] mask broadcastable against ``like`` [N,...]."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def where_n(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample select: ``a`` where ``mask`` [N] is True, else ``b``."""
    return torch.where(expand(mask, a), a, b)
