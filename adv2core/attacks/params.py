"""Attack parametrisations: how the optimised variable maps to an image, its penalty and its update.

:class:`SignParam` (L-inf sign steps on the image, PGD-style) and :class:`FlowParam` (Adam on a StAdv
flow field, with the flow-smoothness penalty) both plug into :func:`adv2core.attacks.base.run_stage`.
:class:`Adam` is elementwise, so samples never influence each other and frozen ones can be masked out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from adv2core.attacks.targets import image_seed


class Adam:
    """Functional elementwise Adam (optionally AMSGrad), torch's formula; state per element, so samples
    never influence each other and frozen samples can simply be masked out."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, amsgrad: bool = False) -> None:
        self.lr, (self.b1, self.b2), self.eps, self.amsgrad = lr, betas, eps, amsgrad
        self.t = 0
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.vmax: torch.Tensor | None = None

    def step(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.m is None:
            self.m, self.v = torch.zeros_like(p), torch.zeros_like(p)
            self.vmax = torch.zeros_like(p) if self.amsgrad else None
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        denom = self.v
        if self.amsgrad:
            self.vmax = torch.maximum(self.vmax, self.v)
            denom = self.vmax
        bc1, bc2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        return p - (self.lr / bc1) * self.m / ((denom / bc2).sqrt() + self.eps)


class Param(ABC):
    """How the optimised variable v maps to an image, what it costs, and how it steps."""

    @abstractmethod
    def init(self) -> torch.Tensor: ...

    @abstractmethod
    def image(self, v: torch.Tensor) -> torch.Tensor: ...

    def penalty(self, v: torch.Tensor) -> torch.Tensor | None:
        return None

    def new_optimizer(self) -> Any:
        return None

    @abstractmethod
    def step(self, v: torch.Tensor, g: torch.Tensor, opt: Any) -> torch.Tensor: ...


class SignParam(Param):
    """v = the image; x <- clip01(x0 + clip_eps(x - alpha sign(g) - x0)) (spec 1.3)."""

    def __init__(self, x0: torch.Tensor, eps: float, alpha: float, clip: bool = True) -> None:
        self.x0, self.eps, self.alpha, self.clip = x0, eps, alpha, clip

    def init(self) -> torch.Tensor:
        return self.x0.clone()

    def image(self, v: torch.Tensor) -> torch.Tensor:
        return v

    def project(self, x: torch.Tensor) -> torch.Tensor:
        x = self.x0 + (x - self.x0).clamp(-self.eps, self.eps)
        return x.clamp(0.0, 1.0) if self.clip else x

    def step(self, v: torch.Tensor, g: torch.Tensor, opt: Any) -> torch.Tensor:
        return self.project(v - self.alpha * g.sign())


def identity_grid(n: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Pixel coordinates [N,2,H,W] (channel 0 = x/column, 1 = y/row)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys])[None].expand(n, 2, h, w)


def warp(x0: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of x0 at (pixel grid + flow), coordinates clamped to the image (spec 3.2)."""
    n, _, h, w = x0.shape
    pos = identity_grid(n, h, w, x0.device, x0.dtype) + flow
    px = pos[:, 0].clamp(0, w - 1) * (2.0 / max(w - 1, 1)) - 1.0
    py = pos[:, 1].clamp(0, h - 1) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([px, py], dim=-1)
    return F.grid_sample(x0, grid, mode="bilinear", padding_mode="border", align_corners=True)


_DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))
_FOUR = ((-1, 0), (1, 0), (0, -1), (0, 1))


def flow_loss(flow: torch.Tensor, neighbourhood: str = "diagonal") -> torch.Tensor:
    """Per-sample L_flow = sum_p sum_{q in N(p)} sqrt(du^2 + dv^2 + 1e-8), replicate padding at borders.

    ``diagonal`` is the official code's neighbourhood (a quirk); ``4-connected`` is the StAdv paper's.
    """
    offsets = _DIAGONAL if neighbourhood == "diagonal" else _FOUR
    h, w = flow.shape[-2:]
    pad = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    total = flow.new_zeros(flow.shape[0])
    for dy, dx in offsets:
        nb = pad[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        total = total + ((nb - flow).square().sum(dim=1) + 1e-8).sqrt().flatten(1).sum(dim=1)
    return total


def init_flow(ids: Sequence[str], h: int, w: int, r: float, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Flow U(-r, r) [N,2,H,W], each image's draw seeded by (seed, image_id) (batch-independent)."""
    parts = []
    for i in ids:
        g = torch.Generator().manual_seed(image_seed(seed, i, "stadv-flow"))
        parts.append(torch.rand(2, h, w, generator=g, dtype=torch.float32))
    return ((torch.stack(parts) * 2 - 1) * r).to(device=device, dtype=dtype)


class FlowParam(Param):
    """v = a flow field; x = warp(x0, v); penalty tau * L_flow; Adam (amsgrad) on v."""

    def __init__(
        self, x0: torch.Tensor, flow0: Callable[[], torch.Tensor], *, lr: float, amsgrad: bool, tau: float, neighbourhood: str
    ) -> None:
        self.x0, self.flow0 = x0, flow0
        self.lr, self.amsgrad, self.tau, self.neighbourhood = lr, amsgrad, tau, neighbourhood

    def init(self) -> torch.Tensor:
        return self.flow0()

    def image(self, v: torch.Tensor) -> torch.Tensor:
        return warp(self.x0, v)

    def penalty(self, v: torch.Tensor) -> torch.Tensor | None:
        return self.tau * flow_loss(v, self.neighbourhood) if self.tau > 0 else None

    def new_optimizer(self) -> Adam:
        return Adam(self.lr, amsgrad=self.amsgrad)

    def step(self, v: torch.Tensor, g: torch.Tensor, opt: Adam) -> torch.Tensor:
        return opt.step(v, g)
