"""Adaptive ADV^2 (issue 13): against an interpreter ensemble and against feature squeezing.

* :class:`ADV2Ensemble` (registry name ``adv2-ens``) attacks several interpreters jointly. Stage 2:

      L = CE(f(x), c_t) + c_now * sum_k w_k * l_k(g_k(x; c_t), m_k) [+ extra_weight * CE(enc_RTS(x), c_t)]

  with c_now linear c -> growth * c (as CAM/RTS) and l_k the per-pixel MSE (``reduction``). Members and
  weights come from the attack config (``adv2_ens.members`` / ``weights``, default grad + cam). The cell's
  interpreter must be a member: it supplies m_k for itself (the cell's target map) and its map is the
  one the cell evaluates; every other member's m_k is its benign map for y (when the call gives ``y``)
  or else for the model's clean prediction (= y on the paper's correctly classified population). The
  other members are built by :func:`~adv2core.attacks.registry.build_attack` (or passed to it).
* :class:`ADV2FSGrad` / :class:`ADV2FSCAM` / :class:`ADV2FSRTS` (``adv2-fs``): ADV^2 plus the spec-3.4
  feature-squeezing term of :class:`~adv2core.attacks.config.FSTermConfig`, through the straight-through
  squeezers of :mod:`adv2core.defences.squeeze_diff` (bit depth and medians; no NLM, see there).
  Deviation: targeted to the cell's c_t (the paper's version picks its target from a squeezed stage 1,
  i.e. is effectively untargeted), and the bit-depth term compares p(x) with p(bit_d(x)) of the *current*
  iterate instead of a fixed p_ref from stage 1.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

from adv2core.attacks.adv2 import ADV2, ADV2CAM, ADV2RTS, ADV2Grad, Schedule, linear_growth
from adv2core.attacks.base import Objective
from adv2core.attacks.config import ADV2EnsembleConfig, ADV2FSCAMConfig, ADV2FSGradConfig, ADV2FSRTSConfig
from adv2core.attacks.losses import InterpretationLoss, cross_entropy
from adv2core.attacks.result import AttackResult
from adv2core.defences.squeeze_diff import bit_depth_st, median_st, squeeze_distance
from adv2core.errors import ConfigError
from adv2core.interpreters.base import Interpreter
from adv2core.models.classifier import Classifier


# ----------------------------------------------------------------------------------------------------
# Ensemble
# ----------------------------------------------------------------------------------------------------
class ADV2Ensemble(ADV2):
    """ADV^2 against a weighted sum of interpreters (see the module docstring). ``members`` maps every
    configured member except the cell's interpreter to a built interpreter for the same model."""

    name = "adv2-ens"
    config_cls = ADV2EnsembleConfig
    interpreters = None  # checked against cfg.members below

    def __init__(
        self, model: Classifier, interpreter: Interpreter | None = None, config: Any = None, *, seed: int = 0,
        members: Mapping[str, Interpreter] | None = None, **overrides: Any,
    ) -> None:
        super().__init__(model, interpreter, config, seed=seed, **overrides)
        assert self.interpreter is not None
        cfg: Any = self.cfg
        if self.interpreter.name not in cfg.members:
            raise ConfigError(f"adv2-ens attacks {', '.join(cfg.members)}; interpreter {self.interpreter.name!r} is not a "
                              "member (set adv2_ens.members)")
        given = dict(members or {})
        self.members: dict[str, Interpreter] = {}
        for name in cfg.members:
            m = self.interpreter if name == self.interpreter.name else given.get(name)
            if m is None or m.name != name:
                raise ConfigError(f"adv2-ens needs a built {name!r} interpreter for member {name!r}")
            self.members[name] = m
        self.weights = dict(zip(cfg.members, (float(w) for w in cfg.weights)))
        self._y: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, target: torch.Tensor, *, y: torch.Tensor | None = None,
                 target_map: torch.Tensor | None = None, ids: Sequence[str] | None = None) -> AttackResult:
        self._y = y
        try:
            return super().__call__(x, target, y=y, target_map=target_map, ids=ids)
        finally:
            self._y = None

    def _schedule(self) -> Schedule:
        cfg: Any = self.cfg
        return [(cfg.stage2_steps, linear_growth(cfg.c, cfg.c_growth, cfg.stage2_steps))]

    def member_losses(self, x0: torch.Tensor, target_map: torch.Tensor, ids: list[str],
                      y: torch.Tensor | None = None) -> dict[str, InterpretationLoss]:
        """One :class:`InterpretationLoss` per member: the cell's target map for the cell's interpreter,
        the benign map (for ``y``, else the clean prediction) for the others."""
        assert self.interpreter is not None
        cfg: Any = self.cfg
        if y is None:
            with torch.no_grad():
                y = self.model(x0).argmax(dim=1)
        out = {}
        for name, interp in self.members.items():
            m_t = target_map if name == self.interpreter.name else interp.explain(x0, y.to(x0.device), ids=ids)
            out[name] = InterpretationLoss.for_interpreter(interp, m_t, cfg.reduction)
        return out

    def ensemble_objective(self, target: torch.Tensor, losses: Mapping[str, InterpretationLoss],
                           lam: Callable[[int], float]) -> Objective:
        """CE + lam(i) * sum_k w_k l_k [+ extra_weight * sum over RTS members of their encoder CE]."""
        cfg: Any = self.cfg

        def obj(x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            logits = None
            inter = x.new_zeros(x.shape[0])
            extra = x.new_zeros(x.shape[0])
            for name, iloss in losses.items():
                w = self.weights[name]
                if w == 0:
                    continue
                interp = self.members[name]
                fused = getattr(interp, "map_and_extra_loss", None) if cfg.extra_weight > 0 else None
                if fused is not None:
                    m, e = fused(x, target)
                    extra = extra + e
                else:
                    m, lg = iloss.map_and_logits(x, target)
                    logits = lg if lg is not None and logits is None else logits
                inter = inter + w * iloss.distance(m)
            if logits is None:
                logits = self.model(x)
            return cross_entropy(logits, target) + lam(i) * inter + cfg.extra_weight * extra, logits

        return obj

    def _run(self, x0: torch.Tensor, target: torch.Tensor, target_map: torch.Tensor | None, ids: list[str]) -> AttackResult:
        assert target_map is not None
        losses = self.member_losses(x0, target_map, ids, self._y)
        self._losses = losses
        try:
            return super()._run(x0, target, target_map, ids)
        finally:
            self._losses = {}

    def _joint_objective(self, target: torch.Tensor, iloss: InterpretationLoss, lam: Callable[[int], float]) -> Objective:
        return self.ensemble_objective(target, self._losses, lam)


# ----------------------------------------------------------------------------------------------------
# Feature squeezing
# ----------------------------------------------------------------------------------------------------
def fs_term(model: Classifier, x: torch.Tensor, logits: torch.Tensor, cfg: Any) -> torch.Tensor:
    """Per-sample feature-squeezing penalty of :class:`~adv2core.attacks.config.FSTermConfig`."""
    d_bit = squeeze_distance(logits, model(bit_depth_st(x, cfg.bit_depth)))
    total = cfg.bit_weight * torch.relu(d_bit - cfg.margin * cfg.bit_threshold)
    med = x.new_zeros(x.shape[0])
    for k, mix, thr in zip(cfg.median_sizes, cfg.median_mix, cfg.median_thresholds):
        d = squeeze_distance(logits, model(median_st(x, k, cfg.median_backward)))
        med = med + mix * torch.relu(d - cfg.margin * thr)
    return cfg.fs_weight * (total + cfg.median_weight * med)


class _FSMixin:
    """Adds :func:`fs_term` to the stage-2 objective (and to stage 1 when ``fs_stage1``)."""

    model: Classifier
    cfg: Any

    def _with_fs(self, base: Objective) -> Objective:
        def obj(x: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            loss, logits = base(x, i)
            return loss + fs_term(self.model, x, logits, self.cfg), logits

        return obj

    def _stage1_objective(self, target: torch.Tensor) -> Objective:
        base = super()._stage1_objective(target)  # type: ignore[misc]
        return self._with_fs(base) if self.cfg.fs_stage1 else base

    def _joint_objective(self, target: torch.Tensor, iloss: InterpretationLoss, lam: Callable[[int], float]) -> Objective:
        return self._with_fs(super()._joint_objective(target, iloss, lam))  # type: ignore[misc]


class ADV2FSGrad(_FSMixin, ADV2Grad):
    """ADV^2-Grad + feature-squeezing term (``adv2-fs`` against grad)."""

    name = "adv2-fs"
    config_cls = ADV2FSGradConfig


class ADV2FSCAM(_FSMixin, ADV2CAM):
    """ADV^2-CAM + feature-squeezing term (``adv2-fs`` against cam)."""

    name = "adv2-fs"
    config_cls = ADV2FSCAMConfig


class ADV2FSRTS(_FSMixin, ADV2RTS):
    """ADV^2-RTS + feature-squeezing term (``adv2-fs`` against rts / rts-aid)."""

    name = "adv2-fs"
    config_cls = ADV2FSRTSConfig
