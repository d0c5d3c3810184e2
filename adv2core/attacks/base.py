"""Shared machinery of every attack: result type, per-sample status, losses, parametrisations, step loop.

Design rules (why the loop looks the way it does):

* **Batched and batch-independent.** Losses are per-sample vectors summed only to call autograd once;
  with models in eval mode there are no cross-sample terms, so a sample's trajectory does not depend on
  its batch (except where the official code couples samples on purpose: MASK ``code_compatible``).
* **No host syncs in step loops.** Freezing a sample (non-finite gradient, optional early stop) and
  best-iterate bookkeeping are ``torch.where`` on device tensors; the reasons are turned into strings
  once, after the loop.
* **Pluggable interpretation term.** :class:`InterpretationLoss` wraps any interpreter's
  ``differentiable_map`` and any target map with an SSE (Grad) or MSE (CAM/RTS) pixel reduction.
* **Two parametrisations, one loop.** :class:`SignParam` (L-inf sign steps on the image, PGD-style) and
  :class:`FlowParam` (Adam on a StAdv flow field) both plug into :func:`run_stage`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Protocol, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from adv2core.attacks.config import validate_config
from adv2core.attacks.targets import benign_maps, check_target_map, image_seed
from adv2core.errors import ConfigError
from adv2core.interpreters.base import Interpreter
from adv2core.models.classifier import Classifier

# ----------------------------------------------------------------------------------------------------
# Result and per-sample status
# ----------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------
# Parametrisations
# ----------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------
# The step loop
# ----------------------------------------------------------------------------------------------------
Objective = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
Hook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def run_stage(
    v: torch.Tensor,
    steps: int,
    param: Param,
    objective: Objective,
    status: Status,
    target: torch.Tensor,
    *,
    hook: Hook | None = None,
    early_stop: bool = False,
    check_every: int = 50,
    trace: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``steps`` updates of v on ``objective(x, i) -> (loss [N], logits [N,K])`` plus the param's penalty.

    Per step: forward, one backward of the summed per-sample loss, non-finite check (freezes the sample
    with a reason), ``hook(i, x, logits, active)`` on the *pre-update* iterate (best-iterate selection),
    optional per-sample early stop (argmax == target), masked update. The only host sync is the optional
    all-stopped check every ``check_every`` steps when early stopping is on. ``trace`` collects the
    per-sample total loss of every step (device tensors, no sync).
    """
    opt = param.new_optimizer()
    for i in range(steps):
        vr = v.detach().requires_grad_(True)
        x = param.image(vr)
        loss, logits = objective(x, i)
        pen = param.penalty(vr)
        if pen is not None:
            loss = loss + pen
        (g,) = torch.autograd.grad(loss.sum(), vr)
        if trace is not None:
            trace.append(loss.detach())
        active = status.check(loss.detach(), g)
        if hook is not None:
            hook(i, x.detach(), logits.detach(), active)
        if early_stop:
            status.stopped = status.stopped | (active & (logits.detach().argmax(dim=1) == target))
            active = status.active
        g = torch.where(expand(active, g), g, torch.zeros_like(g))
        v = where_n(active, param.step(v.detach(), g, opt), v.detach())
        status.steps = status.steps + active.long()
        if early_stop and (i + 1) % check_every == 0 and not bool(status.active.any()):
            break
    return v.detach()


# ----------------------------------------------------------------------------------------------------
# Attack base
# ----------------------------------------------------------------------------------------------------
class Attack(ABC):
    """Base of all attacks (torchattacks-like): model, interpreter and hyper-parameters in the constructor.

    ``Attack(model, interpreter, config=None, seed=0, **overrides)``: ``config`` is the attack's config
    model (or a dict), keyword overrides replace single fields, and validation errors are one-line
    :class:`ConfigError` s. Call it as ``attack(x, target, y=..., target_map=..., ids=...)``.
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[BaseModel]]
    #: whether the attack needs an interpreter and a target map (ADV^2 variants)
    uses_interpreter: ClassVar[bool] = False
    #: interpreter names the attack supports (None = any)
    interpreters: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self,
        model: Classifier,
        interpreter: Interpreter | None = None,
        config: BaseModel | dict | None = None,
        *,
        seed: int = 0,
        **overrides: Any,
    ) -> None:
        self.model = model
        self.interpreter = interpreter
        self.cfg = validate_config(self.config_cls, config, **overrides)
        self.seed = seed
        if self.uses_interpreter:
            if interpreter is None:
                raise ConfigError(f"attack {self.name!r} needs an interpreter")
            if self.interpreters is not None and interpreter.name not in self.interpreters:
                raise ConfigError(
                    f"attack {type(self).__name__} does not support interpreter {interpreter.name!r} (supports: {', '.join(self.interpreters)})"
                )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg!r})"

    def __call__(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        *,
        y: torch.Tensor | None = None,
        target_map: torch.Tensor | None = None,
        ids: Sequence[str] | None = None,
    ) -> AttackResult:
        """Attack ``x`` [N,3,H,W] in [0,1] towards classes ``target`` [N].

        ADV^2 attacks need ``target_map`` (native map resolution) or ``y`` (then the benign map of y
        is used, the paper's main setting). ``ids`` seed per-image randomness; without them the batch
        position is used (then results depend on batch composition).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"attack input must be [N,3,H,W], got {list(x.shape)}")
        n = x.shape[0]
        target = target.to(x.device).long()
        if target.shape != (n,):
            raise ConfigError(f"target must have shape [{n}], got {list(target.shape)}")
        ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
        if len(ids) != n:
            raise ConfigError(f"{len(ids)} ids for {n} images")
        if self.uses_interpreter:
            assert self.interpreter is not None
            side = self.interpreter.map_size(x.shape[-1])
            if target_map is None:
                if y is None:
                    raise ConfigError(f"attack {self.name!r} needs target_map or the true labels y (benign-map target)")
                target_map = benign_maps(self.interpreter, x, y.to(x.device), ids)
            target_map = check_target_map(target_map.to(x.device), n, side)
        t0 = time.perf_counter()
        res = self._run(x.detach(), target, target_map, ids)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        res.seconds = time.perf_counter() - t0
        return res

    @abstractmethod
    def _run(self, x0: torch.Tensor, target: torch.Tensor, target_map: torch.Tensor | None, ids: list[str]) -> AttackResult: ...

    # -- helpers shared by subclasses ----------------------------------------------------------
    def _ce_objective(self, target: torch.Tensor, label_smoothing: float = 0.0, weight: float = 1.0) -> Objective:
        def obj(x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.model(x)
            return weight * cross_entropy(logits, target, label_smoothing), logits

        return obj

    def _margin_objective(self, target: torch.Tensor, clip: float | None = None) -> Objective:
        def obj(x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.model(x)
            return cw_margin(logits, target, clip), logits

        return obj

    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _finish(
        self, x_adv: torch.Tensor, target: torch.Tensor, status: Status, **kw: Any
    ) -> AttackResult:
        """Common result: logits of x_adv and, unless given, success = final argmax == target."""
        logits = kw.pop("logits", None)
        if logits is None:
            logits = self._logits(x_adv)
        success = kw.pop("success", None)
        if success is None:
            success = logits.argmax(dim=1) == target
        success = success & ~status.failed
        return AttackResult(
            x_adv=x_adv.detach(), success=success, steps=status.steps.clone(), failed=status.failed.clone(),
            reasons=status.reasons(), target=target, logits=logits, **kw,
        )
