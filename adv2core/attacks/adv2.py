"""ADV^2 (spec sections 1-2): warm start on the prediction loss, then the joint objective

    L = w_ce * CE(f(x), c_t) + lambda_i * l_int(g(x; c_t), m_t) [+ w_enc * CE(enc(x), c_t)  (RTS)]

with each interpreter's lambda schedule. :class:`JointAttack` is the shared two-stage engine; the
parametrisation (L-inf sign steps here, a StAdv flow field in :mod:`adv2core.attacks.stadv`) and the
schedule are the only things subclasses choose. There is one subclass per interpreter (Grad, CAM, RTS;
MASK's bilevel attack lives in :mod:`adv2core.attacks.mask`); :mod:`adv2core.attacks.registry` picks it.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from adv2core.attacks.base import Attack, Objective, run_stage
from adv2core.attacks.config import ADV2CAMConfig, ADV2GradConfig, ADV2RTSConfig
from adv2core.attacks.losses import InterpretationLoss, cross_entropy
from adv2core.attacks.params import Param, SignParam
from adv2core.attacks.result import AttackResult, Status, where_n
from adv2core.errors import ConfigError
from adv2core.interpreters.base import Interpreter

Schedule = list[tuple[int, Callable[[int], float]]]


def linear_growth(c: float, growth: float, n: int) -> Callable[[int], float]:
    """c_now for step i of n: rises linearly c -> growth*c, incremented *before* use (ends at growth*c)."""
    return lambda i: c * (1.0 + (growth - 1.0) * (i + 1) / n)


def piecewise(lambdas: tuple[float, ...], steps: tuple[int, ...]) -> Schedule:
    """Grad's sub-stages: constant lambda per sub-stage."""
    return [(n, (lambda i, lam=lam: lam)) for lam, n in zip(lambdas, steps)]


class BestIterate:
    """Grad's best-iterate rule (spec 2.1): every ``every`` steps of each sub-stage (step 0 included),
    keep (x, true map) when p_t > threshold and the *evaluation* map's distance to m_t improves.
    All bookkeeping is ``torch.where`` on device."""

    def __init__(
        self, x0: torch.Tensor, interpreter: Interpreter, iloss: InterpretationLoss, target: torch.Tensor,
        ids: list[str], every: int, threshold: float,
    ) -> None:
        n = x0.shape[0]
        self.interpreter, self.iloss, self.target, self.ids = interpreter, iloss, target, ids
        self.every, self.threshold = every, threshold
        self.x = x0.clone()
        self.map = torch.zeros_like(iloss.target_map)
        self.dist = torch.full((n,), float("inf"), device=x0.device)
        self.p = torch.zeros(n, device=x0.device)
        self.step = torch.full((n,), -1, dtype=torch.long, device=x0.device)
        self.offset = 0

    @property
    def found(self) -> torch.Tensor:
        return self.step >= 0

    def __call__(self, i: int, x: torch.Tensor, logits: torch.Tensor, active: torch.Tensor) -> None:
        if i % self.every:
            return
        p_t = torch.softmax(logits.float(), dim=1).gather(1, self.target[:, None]).squeeze(1)
        m = self.interpreter.explain(x, self.target, ids=self.ids)
        d = self.iloss.distance(m)
        better = active & (p_t > self.threshold) & (d < self.dist) & torch.isfinite(d)
        self.x = where_n(better, x, self.x)
        self.map = where_n(better, m.to(self.map.dtype), self.map)
        self.dist = torch.where(better, d, self.dist)
        self.p = torch.where(better, p_t, self.p)
        self.step = torch.where(better, torch.full_like(self.step, self.offset + i), self.step)


class JointAttack(Attack):
    """Two-stage ADV^2 engine shared by the sign (L-inf) and flow (StAdv) variants.

    Subclasses provide the parametrisation (:meth:`_param`), the stage-2 schedule (:meth:`_schedule`)
    and the weights; best-iterate selection is on when the config has ``select_every``.
    """

    uses_interpreter = True
    #: CE weight in stage 2 (StAdv-CAM uses 2)
    ce_weight_key: ClassVar[str | None] = None

    def _param(self, x0: torch.Tensor, ids: list[str], stage: int) -> Param:
        raise NotImplementedError

    def _schedule(self) -> Schedule:
        raise NotImplementedError

    def _stage1_objective(self, target: torch.Tensor) -> Objective:
        return self._ce_objective(target)

    def _joint_objective(self, target: torch.Tensor, iloss: InterpretationLoss, lam: Callable[[int], float]) -> Objective:
        cfg: Any = self.cfg
        ce_w = float(getattr(cfg, "ce_weight", 1.0))
        extra_w = float(getattr(cfg, "extra_weight", 0.0))
        ls = float(getattr(cfg, "label_smoothing", 0.0))
        interp = self.interpreter
        assert interp is not None

        fused_extra = getattr(interp, "map_and_extra_loss", None) if extra_w > 0 else None

        def obj(x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            extra = None
            if fused_extra is not None:  # map and extra term from one pass of the interpreter's network
                m, extra = fused_extra(x, target)
                logits = None
            else:
                m, logits = iloss.map_and_logits(x, target)
            if logits is None:
                logits = self.model(x)
            loss = ce_w * cross_entropy(logits, target, ls) + lam(i) * iloss.distance(m)
            if extra_w > 0:
                if extra is None:
                    extra = interp.extra_attack_loss(x, target)
                if extra is None:
                    raise ConfigError(f"interpreter {interp.name!r} has no extra attack loss (set extra_weight: 0)")
                loss = loss + extra_w * extra
            return loss, logits

        return obj

    def _run(self, x0: torch.Tensor, target: torch.Tensor, target_map: torch.Tensor | None, ids: list[str]) -> AttackResult:
        cfg: Any = self.cfg
        interp = self.interpreter
        assert interp is not None and target_map is not None
        status = Status(x0.shape[0], x0.device)
        iloss = InterpretationLoss.for_interpreter(interp, target_map, cfg.reduction)
        trace1: list[torch.Tensor] = []
        trace2: list[torch.Tensor] = []

        p1 = self._param(x0, ids, 1)
        v = run_stage(p1.init(), cfg.stage1_steps, p1, self._stage1_objective(target), status, target,
                      early_stop=cfg.early_stop, trace=trace1)
        status.stopped = torch.zeros_like(status.stopped)  # early stop applies to the warm start only

        p2 = self._param(x0, ids, 2)
        if isinstance(p2, SignParam):
            # Grad's stage 1 skips the [0,1] clip; a stored iterate must still be a valid image.
            v = p2.project(v)
        select = None
        if hasattr(cfg, "select_every"):
            select = BestIterate(x0, interp, iloss, target, ids, cfg.select_every, cfg.select_p_threshold)
            select.offset = cfg.stage1_steps
        for n, lam in self._schedule():
            v = run_stage(v, n, p2, self._joint_objective(target, iloss, lam), status, target, hook=select, trace=trace2)
            if select is not None:
                select.offset += n
        x_final = p2.image(v).detach()
        extras: dict[str, Any] = {"loss_trace_stage1": torch.stack(trace1), "loss_trace_stage2": torch.stack(trace2)}
        if not isinstance(p2, SignParam):
            extras["flow"] = v
        if select is None:
            return self._finish(x_final, target, status, extras=extras)
        found = select.found
        x_adv = where_n(found, select.x, x_final)
        final_map = interp.explain(x_final, target, ids=ids)
        adv_map = where_n(found, select.map, final_map.to(select.map.dtype))
        extras["best_p_target"] = select.p
        return self._finish(x_adv, target, status, success=found, adv_map=adv_map, selected_step=select.step, extras=extras)


class ADV2(JointAttack):
    """ADV^2 with L-inf sign steps (spec 2): the base of :class:`ADV2Grad`, :class:`ADV2CAM`,
    :class:`ADV2RTS` and :class:`~adv2core.attacks.mask.ADV2Mask`. The class for an interpreter comes from
    :func:`adv2core.attacks.registry.attack_class` (``build_attack("adv2", model, interpreter)``)."""

    name = "adv2"

    def _param(self, x0: torch.Tensor, ids: list[str], stage: int) -> Param:
        cfg: Any = self.cfg
        clip = cfg.stage1_clip if stage == 1 else True
        alpha = cfg.alpha if stage == 1 else (getattr(cfg, "stage2_alpha", None) or cfg.alpha)
        return SignParam(x0, cfg.eps, alpha, clip=clip)


class ADV2Grad(ADV2):
    """ADV^2 against Grad (spec 2.1). Paper defaults: eps 0.031, alpha 1/255; stage 1 300 CE steps
    projected on the eps-ball *without* the [0,1] clip (``stage1_clip=False``, a code quirk); stage 2
    lambda = (0.001, 0.004, 0.01, 0.05) x (301, 201, 101, 101) steps on CE + lambda * SSE(surrogate map,
    m_t); every 10 steps keep the iterate with p_t > 0.8 and the smallest SSE of the *true*-ReLU map.
    Success = such an iterate exists. ``label_smoothing=0.05`` gives the v3 variant."""

    config_cls = ADV2GradConfig
    interpreters = ("grad",)

    def _schedule(self) -> Schedule:
        return piecewise(self.cfg.lambdas, self.cfg.stage2_steps)


class ADV2CAM(ADV2):
    """ADV^2 against CAM (spec 2.2). Paper defaults: stage 1 400 CE steps; stage 2 1200 steps of
    CE + c_now * MSE(CAM, m_t), c_now linear 5 -> 10 (incremented before use); result = last step."""

    config_cls = ADV2CAMConfig
    interpreters = ("cam",)

    def _schedule(self) -> Schedule:
        return [(self.cfg.stage2_steps, linear_growth(self.cfg.c, self.cfg.c_growth, self.cfg.stage2_steps))]


class ADV2RTS(ADV2CAM):
    """ADV^2 against RTS (spec 2.3). Paper defaults: stage 1 300 CE steps on the black box; stage 2
    1000 steps of CE + c_now * MSE(RTS mask, m_t) + 0.1 * CE(RTS encoder head, c_t), c_now 5 -> 10."""

    config_cls = ADV2RTSConfig
    interpreters = ("rts", "rts-aid")

