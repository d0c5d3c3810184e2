"""ADV^2 against MASK (spec 2.4) and its StAdv variant (spec 3.2): a bilevel attack.

MASK's map m*(x) = argmin_m objective(x, m) has no closed form, so the attack keeps an *inner* mask
optimiser running alongside x (:class:`adv2core.interpreters.mask.MaskState`): every outer iteration
takes a few plain inner steps, then a few steps unrolled with ``create_graph`` whose distance to m_t is
the interpretation loss (a truncated hypergradient). Every ``resolve_every`` iterations the map is
solved afresh (the official code on uint8-*truncated* images) and the inner state is reset to it; those
fresh solves are the snapshots the result is selected from (quantised image classified as c_t, minimum
L2 to m_t). A stage 2 shorter than ``resolve_every`` (step-capped test runs) snapshots its last iterate.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from adv2core.attacks.adv2 import ADV2
from adv2core.attacks.base import run_stage
from adv2core.attacks.config import ADV2MaskConfig, StAdvADV2MaskConfig
from adv2core.attacks.losses import cw_margin
from adv2core.attacks.params import Adam, FlowParam, SignParam, flow_loss, init_flow, warp
from adv2core.attacks.result import AttackResult, Status, expand, where_n
from adv2core.attacks.stadv import StAdvADV2
from adv2core.metrics.quantize import quantize_uint8


def _unit(g: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 normalisation (zero stays zero)."""
    return g / expand(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)


class Snapshots:
    """Best-snapshot selection (spec 2.4 evaluation): among fresh MASK solves whose (quantised) image is
    classified as c_t, keep the one whose map is closest (L2) to m_t. Device-side bookkeeping only."""

    def __init__(self, x0: torch.Tensor, target_map: torch.Tensor, target: torch.Tensor) -> None:
        n = x0.shape[0]
        self.target_map, self.target = target_map, target
        self.x = x0.clone()
        self.map = torch.zeros_like(target_map)
        self.last_map = torch.zeros_like(target_map)
        self.dist = torch.full((n,), float("inf"), device=x0.device)
        self.step = torch.full((n,), -1, dtype=torch.long, device=x0.device)

    @property
    def found(self) -> torch.Tensor:
        return self.step >= 0

    def update(self, step: int, x: torch.Tensor, m: torch.Tensor, logits_q: torch.Tensor, active: torch.Tensor) -> None:
        d = (m - self.target_map).flatten(1).square().sum(dim=1)
        better = active & (logits_q.argmax(dim=1) == self.target) & (d < self.dist) & torch.isfinite(d)
        self.x = where_n(better, x, self.x)
        self.map = where_n(better, m, self.map)
        self.last_map = m
        self.dist = torch.where(better, d, self.dist)
        self.step = torch.where(better, torch.full_like(self.step, step), self.step)


class _Bilevel:
    """Shared by both MASK attacks: the fresh solve + snapshot + inner reset."""

    def _resolve(self, x: torch.Tensor, target: torch.Tensor, ids: list[str], state: Any, snaps: Snapshots,
                 status: Status, step: int, quant: str | None, inner: Any) -> Any:
        interp: Any = self.interpreter  # type: ignore[attr-defined]
        model = self.model  # type: ignore[attr-defined]
        xq = quantize_uint8(x, quant) if quant else x
        m = interp.explain(xq, target, ids=ids)
        status.fail(~torch.isfinite(m).flatten(1).all(dim=1), 3)
        with torch.no_grad():
            logits_q = model(xq)
        snaps.update(step, x, m, logits_q, status.active)
        return inner.reset_state(state, torch.nan_to_num(m, nan=0.5))

    def _result(self, x_final: torch.Tensor, target: torch.Tensor, status: Status, snaps: Snapshots, extras: dict) -> AttackResult:
        found = snaps.found
        x_adv = where_n(found, snaps.x, x_final)
        adv_map = where_n(found, snaps.map, snaps.last_map)
        extras["snapshot_distance"] = snaps.dist
        return self._finish(x_adv, target, status, success=found, adv_map=adv_map,  # type: ignore[attr-defined]
                            selected_step=snaps.step, extras=extras)


class ADV2Mask(_Bilevel, ADV2):
    """ADV^2 against MASK v2 (spec 2.4). Paper defaults: stage 1 400 sign steps on the CW margin
    (eps 0.031, alpha 1/255); stage 2 1000 outer iterations, each: a prediction step
    r <- r - 0.05 g/||g||_2 on the margin; 4 plain + 4 unrolled inner Adam steps on m; an
    interpretation step along the unit-L2 hypergradient whose size is bisected (10 times) over
    [0, 0.08] ([0, 0.04] from 90 % of the iterations) as the largest keeping the margin < -10
    *per sample* (``code_compatible=True``: the official batch-summed condition); every 50 iterations a
    fresh MASK solve on the uint8-truncated image resets the inner state and is a snapshot.
    Success = some snapshot's quantised image is classified as c_t; the result is the one with the map
    closest to m_t."""

    config_cls = ADV2MaskConfig
    interpreters = ("mask",)
    cfg: ADV2MaskConfig

    def _run(self, x0: torch.Tensor, target: torch.Tensor, target_map: torch.Tensor | None, ids: list[str]) -> AttackResult:
        cfg = self.cfg
        interp: Any = self.interpreter
        assert target_map is not None
        n = x0.shape[0]
        status = Status(n, x0.device)
        trace1: list[torch.Tensor] = []
        p1 = SignParam(x0, cfg.eps, cfg.alpha, clip=cfg.stage1_clip)
        x = run_stage(p1.init(), cfg.stage1_steps, p1, self._margin_objective(target), status, target,
                      early_stop=cfg.early_stop, trace=trace1)
        status.stopped = torch.zeros_like(status.stopped)
        proj = SignParam(x0, cfg.eps, cfg.alpha, clip=True).project
        x = proj(x)

        state = interp.init_state(x, target, ids)
        snaps = Snapshots(x0, target_map, target)
        late_from = math.ceil(cfg.ls_late_fraction * cfg.stage2_steps)
        lint_trace: list[torch.Tensor] = []
        margin_trace: list[torch.Tensor] = []
        step_trace: list[torch.Tensor] = []
        for i in range(cfg.stage2_steps):
            if i % cfg.resolve_every == cfg.resolve_every - 1:
                state = self._resolve(x, target, ids, state, snaps, status, cfg.stage1_steps + i, cfg.resolve_quantize, interp)
            # prediction step: L2-normalised descent on the CW margin
            xr = x.detach().requires_grad_(True)
            margin = cw_margin(self.model(xr), target)
            (g,) = torch.autograd.grad(margin.sum(), xr)
            active = status.check(margin.detach(), g)
            x = where_n(active, proj(x - cfg.pred_step * _unit(torch.nan_to_num(g))), x).detach()
            # inner solver: plain steps, then unrolled steps whose distance to m_t is l_int
            xr = x.detach().requires_grad_(True)
            z = interp.prepare(xr)  # once per iteration, shared by the plain and the unrolled steps
            state = interp.plain_steps(x, target, state, cfg.inner_plain, z=z)
            state, lint = interp.unrolled_steps(xr, target, state, cfg.inner_unrolled, target_map, z=z)
            (d,) = torch.autograd.grad(lint.sum(), xr)
            active = status.check(lint.detach(), d)
            d = _unit(torch.nan_to_num(d))
            # line search: the largest step keeping the margin below the threshold
            step = self._line_search(x, d, target, proj, cfg.ls_max_late if i >= late_from else cfg.ls_max, active)
            x = where_n(active, proj(x - expand(step, x) * d), x).detach()
            status.steps = status.steps + active.long()
            lint_trace.append(lint.detach())
            margin_trace.append(margin.detach())
            step_trace.append(step)
        if cfg.stage2_steps < cfg.resolve_every:  # too short for a periodic snapshot: judge the last iterate
            self._resolve(x, target, ids, state, snaps, status, cfg.stage1_steps + cfg.stage2_steps, cfg.resolve_quantize, interp)
        extras = {
            "loss_trace_stage1": torch.stack(trace1),
            "lint_trace": torch.stack(lint_trace),
            "margin_trace": torch.stack(margin_trace),
            "ls_step_trace": torch.stack(step_trace),
        }
        return self._result(x, target, status, snaps, extras)

    @torch.no_grad()
    def _line_search(self, x: torch.Tensor, d: torch.Tensor, target: torch.Tensor, proj, hi_max: float, active: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        n = x.shape[0]
        lo = torch.zeros(n, device=x.device, dtype=x.dtype)
        hi = torch.full((n,), hi_max, device=x.device, dtype=x.dtype)
        for _ in range(cfg.ls_bisections):
            mid = (lo + hi) / 2
            m = cw_margin(self.model(proj(x - expand(mid, x) * d)), target)
            if cfg.code_compatible:
                # the official condition: one scalar for the whole batch (spec 2.4 bug)
                ok = (torch.where(active, m, torch.zeros_like(m)).sum() < cfg.margin_threshold).expand(n)
            else:
                ok = m < cfg.margin_threshold
            lo = torch.where(ok, mid, lo)
            hi = torch.where(ok, hi, mid)
        return lo


class StAdvADV2Mask(_Bilevel, StAdvADV2):
    """StAdv-ADV^2 against MASK (spec 3.2). Paper defaults: 400 Adam(0.01, amsgrad) steps on the flow
    with max(margin, -5) + 5e-4 L_flow; then 1000 steps, each 4 + 4 inner custom-Adam steps on m
    (lr 0.01) and an Adam(0.005, amsgrad) step on the flow for 500 l_int + max(margin, -5) +
    0.004 L_flow (0.005 for DenseNet); a fresh MASK solve (no quantisation) every 50 steps resets the
    inner state and is a snapshot; the result is the best snapshot as in :class:`ADV2Mask`."""

    config_cls = StAdvADV2MaskConfig
    interpreters = ("mask",)
    cfg: StAdvADV2MaskConfig

    def _run(self, x0: torch.Tensor, target: torch.Tensor, target_map: torch.Tensor | None, ids: list[str]) -> AttackResult:
        cfg = self.cfg
        interp: Any = self.interpreter
        assert target_map is not None
        n, _, h, w = x0.shape
        status = Status(n, x0.device)
        p1 = FlowParam(x0, lambda: init_flow(ids, h, w, cfg.init_range, self.seed, x0.device, x0.dtype),
                       lr=cfg.lr, amsgrad=cfg.amsgrad, tau=cfg.tau, neighbourhood=cfg.neighbourhood)
        trace1: list[torch.Tensor] = []
        flow = run_stage(p1.init(), cfg.stage1_steps, p1, self._margin_objective(target, cfg.margin_clip), status,
                         target, early_stop=cfg.early_stop, trace=trace1)
        status.stopped = torch.zeros_like(status.stopped)

        inner = type(interp)(interp.model, interp.cfg.model_copy(update={"lr": cfg.inner_lr}))
        flow_w = cfg.flow_weight_densenet if getattr(self.model, "family", "") == "densenet" else cfg.flow_weight
        state = inner.init_state(x0, target, ids)
        snaps = Snapshots(x0, target_map, target)
        adam = Adam(cfg.stage2_lr, amsgrad=cfg.amsgrad)
        trace2: list[torch.Tensor] = []
        for i in range(cfg.stage2_steps):
            x = warp(x0, flow).detach()
            if i % cfg.resolve_every == cfg.resolve_every - 1:
                state = self._resolve(x, target, ids, state, snaps, status, cfg.stage1_steps + i, cfg.resolve_quantize, inner)
            fr = flow.detach().requires_grad_(True)
            xf = warp(x0, fr)  # equals x; carries the graph to the flow
            z = inner.prepare(xf)  # once per iteration, shared by the plain and the unrolled steps
            state = inner.plain_steps(x, target, state, cfg.inner_plain, z=z)
            state, lint = inner.unrolled_steps(xf, target, state, cfg.inner_unrolled, target_map, z=z)
            loss = cfg.int_weight * lint + cw_margin(self.model(xf), target, cfg.margin_clip) + flow_w * flow_loss(fr, cfg.neighbourhood)
            (g,) = torch.autograd.grad(loss.sum(), fr)
            active = status.check(loss.detach(), g)
            g = torch.where(expand(active, g), g, torch.zeros_like(g))
            flow = where_n(active, adam.step(flow.detach(), g), flow.detach())
            status.steps = status.steps + active.long()
            trace2.append(loss.detach())
        if cfg.stage2_steps < cfg.resolve_every:
            x = warp(x0, flow).detach()
            self._resolve(x, target, ids, state, snaps, status, cfg.stage1_steps + cfg.stage2_steps, cfg.resolve_quantize, inner)
        extras = {"loss_trace_stage1": torch.stack(trace1), "loss_trace_stage2": torch.stack(trace2), "flow": flow}
        return self._result(warp(x0, flow).detach(), target, status, snaps, extras)
