"""The attack graph of a run: benign maps, examples -> attack units -> cross-evaluation, as inputs complete.

* **benign**: one task per (model, interpreter, shard) (:mod:`tasks.benign`), submitted first: the maps
  every attack unit of the shard and the cross-evaluation read.
* **examples**: one task per (model, interpreter-free attack, shard) (PGD, StAdv; :mod:`tasks.examples`),
  submitted first.
* **attack**: one task per (model, interpreter, attack, shard), submitted when its benign unit (and, for
  an interpreter-free attack, its examples unit: it only measures those examples) is stored.
* **cross-evaluation**: one task per (model, shard), submitted as soon as all its cross-evaluated attack
  units are complete, so the stages overlap.

A failed unit blocks only what depends on it; it is recorded in ``failures`` and a rerun resumes it.
Both engines of :mod:`flows.benchmark` run this loop; it only submits and collects task futures.
"""

from __future__ import annotations

from typing import Any

from adv2core.config import ResolvedConfig
from adv2core.errors import one_line
from adv2core.store import ShardUnit
from flows.progress import Tracker


def _info(u: ShardUnit) -> dict[str, Any]:
    return {"stage": u.stage, "model": u.model, "interpreter": u.interpreter, "attack": u.attack, "shard": u.shard}


def run_attack_graph(rc: ResolvedConfig, payload: dict[str, Any], run: dict[str, Any], engine: Any, tracker: Tracker,
                     plan: Any, ready: set[str], failures: list[dict[str, Any]], done_status: list[str | None],
                     devices: set[str]) -> None:
    """Run the plan's pending examples, attack and cross-evaluation tasks to completion (or failure)."""
    from tasks.attack import attack_shard
    from tasks.benign import benign_shard, benign_unit
    from tasks.examples import examples_unit, interpreter_free
    from tasks.transfer import transfer_shard

    waiting: dict[tuple[str, int], set[ShardUnit]] = {g: set() for g in plan.pending_transfer}
    for u in plan.pending_attack:
        if (u.model, u.shard) in waiting and u.attack in rc.cross_eval_attacks:
            waiting[(u.model, u.shard)].add(u)
    blocked: set[tuple[str, int]] = set()
    transfer_futs: dict[Any, tuple[str, int]] = {}
    futs: dict[Any, ShardUnit] = {}
    first = [*plan.pending_benign, *plan.pending_examples]  # what attack units read
    after: dict[ShardUnit, list[ShardUnit]] = {e: [] for e in first}
    needs: dict[ShardUnit, set[ShardUnit]] = {}  # attack unit -> its prerequisites not yet stored

    def submit(u: ShardUnit) -> None:
        if u.stage == "benign":
            fut = engine.submit(benign_shard, payload, run, u.model, u.interpreter, u.shard, u in plan.forced, gpu=True)
        else:
            fut = engine.submit(attack_shard, payload, run, u.model, u.interpreter, u.attack, u.shard,
                                u in plan.forced, gpu=True)
        futs[fut] = u

    def submit_transfer(g: tuple[str, int]) -> None:
        transfer_futs[engine.submit(transfer_shard, payload, run, g[0], g[1], g in plan.forced, plan.skip_for(g[0]),
                                    gpu=True)] = g

    def finished(u: ShardUnit, ok: bool) -> None:
        """Release the cross-evaluation of (model, shard) once its last source is done."""
        g = (u.model, u.shard)
        if g in waiting and u in waiting[g]:
            waiting[g].discard(u)
            if not ok:
                blocked.add(g)
            elif not waiting[g] and g not in blocked:
                submit_transfer(g)

    for e in first:
        if e.model in ready:
            submit(e)
        else:
            tracker.advance(_info(e), False)
    for u in plan.pending_attack:
        if u.model not in ready:
            blocked.add((u.model, u.shard))
            tracker.advance(_info(u), False)
            continue
        pre = {benign_unit(rc, u.model, u.interpreter, u.shard)}
        if interpreter_free(u.attack):
            pre.add(examples_unit(rc, u.model, u.attack, u.shard))
        pre &= set(after)
        for e in pre:
            after[e].append(u)
        if pre:
            needs[u] = pre  # submitted when they are stored
        else:
            submit(u)
    for g in plan.pending_transfer:  # all its sources were already complete
        if not waiting[g] and g[0] in ready:
            submit_transfer(g)
    while futs:
        for fut in engine.as_completed(list(futs)):
            u = futs.pop(fut)
            ok, val = engine.outcome(fut)
            info = val if ok else _info(u)
            if ok:
                done_status.append(val.get("status"))
                if val.get("device"):
                    devices.add(str(val["device"]))
            else:
                failures.append({**info, "error": one_line(val)})
            tracker.advance(info, ok)
            if u in after:  # a benign or examples unit: release (or fail) what waits for it
                released = False
                for d in after.pop(u):
                    if d not in needs:  # already failed through another prerequisite
                        continue
                    if not ok:
                        del needs[d]
                        failures.append({**_info(d), "error": f"skipped: its {u.stage} unit failed"})
                        tracker.advance(_info(d), False)
                        finished(d, False)
                        continue
                    needs[d].discard(u)
                    if not needs[d]:
                        del needs[d]
                        submit(d)
                        released = True
                if released:
                    break  # collect again, now with the new futures
                continue
            finished(u, ok)
    for g in plan.pending_transfer:
        if g in blocked or g[0] not in ready:
            failures.append({"stage": "transfer", "model": g[0], "shard": g[1],
                             "error": "skipped: an attack shard it needs failed"})
            tracker.advance({"stage": "transfer", "model": g[0], "shard": g[1]}, False)
    for fut in engine.as_completed(list(transfer_futs)):
        m, s = transfer_futs[fut]
        ok, val = engine.outcome(fut)
        if ok:
            done_status.append(val.get("status"))
        else:
            failures.append({"stage": "transfer", "model": m, "shard": s, "error": one_line(val)})
        tracker.advance(val if ok else {"stage": "transfer", "model": m, "shard": s}, ok)
