"""The attack step loop and the :class:`Attack` base class every attack derives from.

Design rules (why the loop looks the way it does):

* **Batched and batch-independent.** Losses are per-sample vectors summed only to call autograd once;
  with models in eval mode there are no cross-sample terms, so a sample's trajectory does not depend on
  its batch (except where the official code couples samples on purpose: MASK ``code_compatible``).
* **No host syncs in step loops.** Freezing a sample (non-finite gradient, optional early stop) and
  best-iterate bookkeeping are ``torch.where`` on device tensors; the reasons are turned into strings
  once, after the loop.
* **Pluggable interpretation term.** :class:`~adv2core.attacks.losses.InterpretationLoss` wraps any
  interpreter's ``differentiable_map`` and any target map with an SSE (Grad) or MSE (CAM/RTS) pixel
  reduction.
* **Two parametrisations, one loop.** :class:`~adv2core.attacks.params.SignParam` (L-inf sign steps on
  the image, PGD-style) and :class:`~adv2core.attacks.params.FlowParam` (Adam on a StAdv flow field) both
  plug into :func:`run_stage`.

This module holds the step loop and the :class:`Attack` base; the result/status types, the losses and
the parametrisations live in :mod:`~adv2core.attacks.result`, :mod:`~adv2core.attacks.losses` and
:mod:`~adv2core.attacks.params`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Sequence

import torch
from pydantic import BaseModel

from adv2core.attacks.config import validate_config
from adv2core.attacks.losses import cross_entropy, cw_margin
from adv2core.attacks.params import Param
from adv2core.attacks.result import AttackResult, Status, expand, where_n
from adv2core.attacks.targets import benign_maps, check_target_map
from adv2core.errors import ConfigError
from adv2core.interpreters.base import Interpreter
from adv2core.models.classifier import Classifier

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
