"""Orchestration of the defence stage (kept out of :mod:`flows.benchmark`, which calls it).

The run reads: prepare -> attack -> cross-evaluate -> **defences** -> report. The defence stage starts
once the attack and cross-evaluation stages are done: each (model, detector) unit reads *all* shards of
its model (its calibration is per model, see :mod:`adv2core.defences.stage`) and the cross-evaluation
stage's stored maps. A unit whose model lost an attack shard is skipped with a failure entry, like a
cross-evaluation task whose source failed. Resumability is the store's, by the units' own keys
(config hash, model, detector, detector settings hash): a complete unit is never recomputed unless the
plan found its model's attack units stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from adv2core.config import ResolvedConfig
from adv2core.errors import one_line
from adv2core.store import ResultStore, ShardUnit


@dataclass
class DefencePlan:
    units: list[ShardUnit] = field(default_factory=list)
    pending: list[ShardUnit] = field(default_factory=list)
    forced: frozenset = frozenset()

    @property
    def skipped(self) -> int:
        return len(self.units) - len(self.pending)


def plan_defences(rc: ResolvedConfig, complete: set[ShardUnit], stale: set[ShardUnit]) -> DefencePlan:
    """The run's defence units, the missing ones, and those to rewrite (their model had stale shards)."""
    if not rc.bench.detectors:
        return DefencePlan()
    from tasks.defences import defence_units

    units = defence_units(rc)
    stale_models = {u.model for u in stale}
    forced = frozenset(u for u in units if u.model in stale_models)
    return DefencePlan(units, [u for u in units if u not in complete or u in forced], forced)


def _info(u: ShardUnit) -> dict[str, Any]:
    return {"stage": "defence", "model": u.model, "interpreter": u.interpreter, "attack": "all", "shard": "all"}


def run_defence_stage(rc: ResolvedConfig, payload: dict[str, Any], run: dict[str, Any], engine: Any, tracker: Any,
                      plan: DefencePlan, attack_units: list[ShardUnit], ready: set[str],
                      failures: list[dict[str, Any]], done_status: list[str | None],
                      refused: Mapping[str, Any] | None = None) -> None:
    """Submit every pending defence unit whose model's attack units are all complete; collect the results.
    ``refused``: model -> interpreters refused at preparation (the units read only the others)."""
    if not plan.pending:
        return
    from tasks.defences import defence_task

    complete = ResultStore(rc.results_root).completed_units(rc.config_hash, stage="attack")
    futs: dict[Any, ShardUnit] = {}
    for u in plan.pending:
        missing = [a for a in attack_units if a.model == u.model and a not in complete]
        if u.model not in ready or missing:
            failures.append({"stage": "defence", "model": u.model, "detector": u.interpreter,
                             "error": "skipped: an attack shard it needs failed"})
            tracker.advance(_info(u), False)
            continue
        futs[engine.submit(defence_task, payload, run, u.model, u.interpreter, u in plan.forced,
                           sorted((refused or {}).get(u.model, ())), gpu=True)] = u
    for fut in engine.as_completed(list(futs)):
        u = futs[fut]
        ok, val = engine.outcome(fut)
        if ok:
            done_status.append(val.get("status"))
        else:
            failures.append({"stage": "defence", "model": u.model, "detector": u.interpreter, "error": one_line(val)})
        tracker.advance(val if ok else _info(u), ok)
