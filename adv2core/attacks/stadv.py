"""Spatially transformed attacks (spec 3.2): StAdv and its ADV^2 variants.

The perturbation is a per-pixel flow field F [N,2,H,W] (pixels, initialised U(-0.1, 0.1) from a
per-image seed); x_adv = bilinear resampling of x0 at grid + F with clamped coordinates, so x_adv is a
convex combination of benign pixels and always in [0,1]. There is no eps-ball: the flow loss
tau * L_flow (diagonal neighbours with replicate padding, the official code's choice) keeps it smooth,
and Adam (amsgrad) optimises F.
"""

from __future__ import annotations

from typing import Any

import torch

from adv2core.attacks.adv2 import JointAttack, Schedule, linear_growth, piecewise
from adv2core.attacks.base import Attack, run_stage
from adv2core.attacks.config import (
    StAdvADV2CAMConfig,
    StAdvADV2GradConfig,
    StAdvADV2RTSConfig,
    StAdvConfig,
)
from adv2core.attacks.params import FlowParam, Param, flow_loss, init_flow
from adv2core.attacks.result import AttackResult, Status


def _flow_param(cfg: Any, x0: torch.Tensor, ids: list[str], seed: int, lr: float | None = None, tau: float | None = None) -> FlowParam:
    return FlowParam(
        x0, lambda: init_flow(ids, x0.shape[-2], x0.shape[-1], cfg.init_range, seed, x0.device, x0.dtype),
        lr=cfg.lr if lr is None else lr, amsgrad=cfg.amsgrad,
        tau=cfg.tau if tau is None else tau, neighbourhood=cfg.neighbourhood,
    )


class StAdv(Attack):
    """Plain StAdv (spec 3.2): Adam(lr 0.01, amsgrad) on the flow for 300 steps, loss CE(c_t) +
    tau * L_flow with tau = 5e-4, flow initialised U(-0.1, 0.1). Success = final argmax == c_t."""

    name = "stadv"
    config_cls = StAdvConfig
    cfg: StAdvConfig

    def _run(self, x0: torch.Tensor, target: torch.Tensor, target_map, ids: list[str]) -> AttackResult:
        status = Status(x0.shape[0], x0.device)
        param = _flow_param(self.cfg, x0, ids, self.seed)
        trace: list[torch.Tensor] = []
        flow = run_stage(param.init(), self.cfg.steps, param, self._ce_objective(target), status, target,
                         early_stop=self.cfg.early_stop, trace=trace)
        x_adv = param.image(flow).detach()
        extras = {"flow": flow, "flow_loss": flow_loss(flow, self.cfg.neighbourhood), "loss_trace": torch.stack(trace)}
        return self._finish(x_adv, target, status, extras=extras)


class StAdvADV2(JointAttack):
    """StAdv-ADV^2: the flow parametrisation with each interpreter's schedule (spec 3.2 table); the
    subclass for an interpreter comes from :func:`adv2core.attacks.registry.attack_class`."""

    name = "stadv-adv2"

    def _param(self, x0: torch.Tensor, ids: list[str], stage: int) -> Param:
        # Stage 2 continues from stage 1's flow (``init`` is only used by stage 1); every stage and
        # sub-stage starts a fresh Adam (run_stage creates it).
        return _flow_param(self.cfg, x0, ids, self.seed)


class StAdvADV2Grad(StAdvADV2):
    """StAdv-ADV^2 against Grad: 450 StAdv steps, then lambda = (0.003, 0.01, 0.05, 0.2) x
    (301, 201, 101, 101) steps of CE + lambda * SSE + tau * L_flow, a fresh Adam(0.01, amsgrad) per
    sub-stage; best iterate with p_t > 0.75 (true-ReLU map) every 10 steps."""

    config_cls = StAdvADV2GradConfig
    interpreters = ("grad",)

    def _schedule(self) -> Schedule:
        return piecewise(self.cfg.lambdas, self.cfg.stage2_steps)


class StAdvADV2CAM(StAdvADV2):
    """StAdv-ADV^2 against CAM: 200 StAdv steps, then 600 steps (new Adam 0.01) of
    2 * CE + tau * L_flow + c_now * MSE(CAM), c_now 5 -> 10; reported at the last step."""

    config_cls = StAdvADV2CAMConfig
    interpreters = ("cam",)

    def _schedule(self) -> Schedule:
        return [(self.cfg.stage2_steps, linear_growth(self.cfg.c, self.cfg.c_growth, self.cfg.stage2_steps))]


class StAdvADV2RTS(StAdvADV2CAM):
    """StAdv-ADV^2 against RTS: 200 + 600 steps of CE + 0.1 * CE(enc) + tau * L_flow + c_now * MSE."""

    config_cls = StAdvADV2RTSConfig
    interpreters = ("rts", "rts-aid")

