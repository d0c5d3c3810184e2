"""Targeted L-inf PGD, the prediction-only baseline of spec section 4."""

from __future__ import annotations

import torch

from adv2core.attacks.base import Attack, run_stage
from adv2core.attacks.config import PGDConfig
from adv2core.attacks.params import SignParam
from adv2core.attacks.result import AttackResult, Status


class PGD(Attack):
    """Targeted PGD: x <- clip01(x0 + clip_eps(x - alpha sign(grad CE(f(x), c_t)))), started at x0.

    Paper defaults (spec 4): eps = 0.031, alpha = 1/255, no random start, [0,1] clip; the official
    baseline runs 3000 steps and reports the step-1200 snapshot, hence ``steps=1200``.
    Success = argmax f(x_adv) == c_t after the last step.
    """

    name = "pgd"
    config_cls = PGDConfig
    cfg: PGDConfig

    def _run(self, x0: torch.Tensor, target: torch.Tensor, target_map, ids) -> AttackResult:
        cfg = self.cfg
        status = Status(x0.shape[0], x0.device)
        param = SignParam(x0, cfg.eps, cfg.alpha, clip=cfg.clip)
        trace: list[torch.Tensor] = []
        x = run_stage(param.init(), cfg.steps, param, self._ce_objective(target), status, target,
                      early_stop=cfg.early_stop, trace=trace)
        return self._finish(x, target, status, extras={"loss_trace": torch.stack(trace)})
