"""The plan of a run: every unit of its graph, and those still missing from the store for its config hash.

Resumability lives in the data layer, not in Prefect caching (stack-notes 1.2): a unit with a complete
manifest is skipped, unless its stored images no longer match the dataset (then it is forced). A unit
missing for this config hash whose *unit key* (:mod:`adv2core.config.unitkeys`: the hash of the config
subset it depends on) matches a complete unit of another config is copied forward
(:func:`adv2core.store.copy.copy_unit`) when a run plans, instead of being recomputed.

With ``gates.on_refused: skip`` the rows of a transfer unit depend on the interpreters refused at
preparation (they are not evaluators), which happens after planning and which no unit key covers. Such a
unit records them in its manifest (``refused``); it is never a copy-forward source, and for its own config
it counts as complete only in a run that refuses at least those interpreters for its model
(:attr:`Plan.provisional`, :func:`drop_refused`); otherwise it is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adv2core.attacks.registry import interpreter_free
from adv2core.config import ResolvedConfig
from adv2core.errors import ConfigError
from adv2core.store import ResultStore, ShardUnit
from flows.defences import DefencePlan, plan_defences
from tasks.benign import benign_unit, benign_units
from tasks.examples import examples_unit, examples_units
from tasks.transfer import transfer_units

__all__ = ["Plan", "drop_refused", "make_plan"]


@dataclass
class Plan:
    """What a run will do. Units are the store's shard-units; groups are cross-evaluation tasks."""

    attack_units: list[ShardUnit]
    pending_attack: list[ShardUnit]
    transfer_groups: list[tuple[str, int]]
    pending_transfer: list[tuple[str, int]]
    num_images: int
    dataset_size: int
    skipped_attack: int = 0
    skipped_transfer: int = 0
    examples_units: list[ShardUnit] = field(default_factory=list)  # interpreter-free attacks, once per shard
    pending_examples: list[ShardUnit] = field(default_factory=list)
    benign_units: list[ShardUnit] = field(default_factory=list)  # benign maps, once per (model, interp, shard)
    pending_benign: list[ShardUnit] = field(default_factory=list)
    stale: int = 0  # complete units whose images no longer match the dataset (recomputed)
    forced: frozenset = frozenset()  # those units and (model, shard) groups: rewrite even though complete
    defence: DefencePlan = field(default_factory=DefencePlan)
    copied: dict[str, int] = field(default_factory=dict)  # units copied forward from another config, by stage
    complete: frozenset = frozenset()  # the units already stored for this config hash (stale ones excluded)
    refused: dict[str, dict[str, str]] = field(default_factory=dict)  # model -> {interpreter: reason} (skipped)
    # stored transfer units written while interpreters were refused: unit -> those interpreters (no rows as
    # evaluators). Not in ``complete``: valid only for a run refusing at least those (decided after preparation)
    provisional: dict = field(default_factory=dict)

    def skip_for(self, model: str) -> list[str]:
        """The interpreters refused for ``model`` (``gates.on_refused=skip``): no task may use them."""
        return sorted(self.refused.get(model, {}))

    @property
    def total_tasks(self) -> int:
        return len(self.benign_units) + len(self.examples_units) + len(self.attack_units) + len(self.transfer_groups) + len(self.defence.units)

    @property
    def done_tasks(self) -> int:
        skipped_first = len(self.benign_units) + len(self.examples_units) - len(self.pending_benign) \
            - len(self.pending_examples)
        return skipped_first + self.skipped_attack + self.skipped_transfer + self.defence.skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "benign_units": len(self.benign_units), "pending_benign": len(self.pending_benign),
            "examples_units": len(self.examples_units), "pending_examples": len(self.pending_examples),
            "attack_units": len(self.attack_units), "pending_attack": len(self.pending_attack),
            "transfer_tasks": len(self.transfer_groups), "pending_transfer": len(self.pending_transfer),
            "num_images": self.num_images, "dataset_size": self.dataset_size, "stale": self.stale,
            "defence_units": len(self.defence.units), "pending_defence": len(self.defence.pending),
            "copied": dict(self.copied),
            **({"refused": {m: sorted(r) for m, r in self.refused.items()}} if self.refused else {}),
        }


def make_plan(rc: ResolvedConfig, store: ResultStore, run_id: str | None = None) -> Plan:
    """All units of the run and the ones still missing for this config hash.

    With ``run_id`` (a run is starting) missing units are first copied forward where another config
    stored the same unit key, under that run id; without it the plan only reads the store."""
    from tasks import worker

    worker.setup_worker(rc)
    ds = worker.get_dataset(rc)
    n_avail = len(ds)
    if n_avail == 0:
        raise ConfigError(f"dataset {rc.bench.data.dataset!r} ({rc.bench.data.split}) has no images")
    n = min(rc.bench.data.num_images, n_avail)
    num_shards = rc.num_shards
    if n < num_shards:
        raise ConfigError(f"data.num_images={rc.bench.data.num_images} but the dataset has only {n_avail} images "
                          f"(fewer than {num_shards} shards); lower data.num_images or data.shard_size")
    b = rc.bench
    units = [
        ShardUnit(rc.config_hash, "attack", m, i, a, s, num_shards)
        for m in b.models.names for i in b.interpreters.names for a in b.attacks.names for s in range(num_shards)
    ]
    complete = store.completed_units(rc.config_hash)
    # transfer units written while interpreters were refused lack those evaluators: not complete for a run
    # that refuses none (which this plan assumes until preparation; drop_refused then re-decides them)
    provisional = {u: r for u, r in store.recorded_refusals(rc.config_hash).items() if u in complete}
    complete -= provisional.keys()
    groups = [(m, s) for m in b.models.names for s in range(num_shards)] if rc.cross_eval_attacks else []
    copied: dict[str, int] = {}
    if run_id is not None:
        everything = [*benign_units(rc), *examples_units(rc), *units,
                      *(t for g in groups for t in transfer_units(rc, *g))]
        if rc.bench.detectors:
            from tasks.defences import defence_units

            everything += defence_units(rc)
        for u in copy_forward(rc, store, [u for u in everything if u not in complete], run_id):
            complete.add(u)
            provisional.pop(u, None)
            copied[u.stage] = copied.get(u.stage, 0) + 1
    stale = _stale_units(rc, store, ds, complete)
    complete -= stale
    pending = [u for u in units if u not in complete]
    pending_groups = [g for g in groups if any(u not in complete for u in transfer_units(rc, *g))]
    forced = frozenset(stale) | frozenset((u.model, u.shard) for u in stale)
    ex_units = examples_units(rc)
    needed = {examples_unit(rc, u.model, u.attack, u.shard) for u in pending if interpreter_free(u.attack)}
    pending_ex = [e for e in ex_units if e in needed and (e not in complete or e in forced)]
    ben_units = benign_units(rc)
    needed = {benign_unit(rc, u.model, u.interpreter, u.shard) for u in pending}
    pending_ben = [e for e in ben_units if e in needed and (e not in complete or e in forced)]
    return Plan(units, pending, groups, pending_groups, n, n_avail,
                skipped_attack=len(units) - len(pending), skipped_transfer=len(groups) - len(pending_groups),
                examples_units=ex_units, pending_examples=pending_ex, benign_units=ben_units,
                pending_benign=pending_ben,
                stale=len(stale), forced=forced, defence=plan_defences(rc, complete, stale), copied=copied,
                complete=frozenset(complete), provisional=provisional)


def copy_forward(rc: ResolvedConfig, store: ResultStore, missing: list[ShardUnit], run_id: str) -> list[ShardUnit]:
    """Copy each missing unit whose unit key a complete unit of another config holds; returns those copied.

    A source that turns out incomplete, or a copy that fails, leaves its unit missing (it is computed)."""
    from adv2core.config.unitkeys import unit_keys
    from adv2core.store import StoreError
    from adv2core.store.copy import copy_unit, keyed_units

    if not missing:
        return []
    keys = unit_keys(rc, missing)
    sources = keyed_units(store, set(keys.values()), rc.config_hash)
    done = []
    for u in missing:
        for src in sources.get(keys[u], []):
            try:
                if copy_unit(store, src, u, run_id):
                    done.append(u)
                    break
            except StoreError:
                break
    return done


def drop_refused(rc: ResolvedConfig, plan: Plan, refused: dict[str, dict[str, str]]) -> None:
    """Remove the work of interpreters refused at preparation (``gates.on_refused=skip``) from ``plan``.

    Per model, its refused interpreters lose their benign and attack units (stored ones too: they are no
    longer counted), examples units only they needed, and their transfer units (as sources; the transfer
    task is told not to evaluate under them either, :meth:`Plan.skip_for`); the model's defence units read
    only its kept interpreters, and its ensemble unit is dropped when fewer than two are kept (there is no
    disagreement to score); a stored defence unit counts as complete only when it was written under exactly
    this model's refusals. A (model, shard) cross-evaluation is pending only if
    a unit of a kept source is missing — a stored transfer unit written while interpreters were refused
    (:attr:`Plan.provisional`) counts as complete only when this run refuses at least those for its model
    (it has no rows of the others) — so a rerun that refuses again recomputes nothing."""
    refused = {m: dict(r) for m, r in refused.items() if r}
    if not refused:
        return
    plan.refused = refused

    def kept(u: ShardUnit) -> bool:
        return u.interpreter not in refused.get(u.model, {})

    plan.attack_units = [u for u in plan.attack_units if kept(u)]
    plan.pending_attack = [u for u in plan.pending_attack if kept(u)]
    plan.skipped_attack = len(plan.attack_units) - len(plan.pending_attack)
    plan.benign_units = [u for u in plan.benign_units if kept(u)]
    plan.pending_benign = [u for u in plan.pending_benign if kept(u)]
    used = {(u.model, u.attack, u.shard) for u in plan.attack_units}
    needed = {(u.model, u.attack, u.shard) for u in plan.pending_attack}
    plan.examples_units = [e for e in plan.examples_units if (e.model, e.attack, e.shard) in used]
    plan.pending_examples = [e for e in plan.pending_examples if (e.model, e.attack, e.shard) in needed]
    valid = {u for u, r in plan.provisional.items()
             if r <= set(refused.get(u.model, {})) and (u.model, u.shard) not in plan.forced}
    done = plan.complete | valid
    plan.pending_transfer = [g for g in plan.transfer_groups
                             if any(u not in done for u in transfer_units(rc, *g) if kept(u))]
    plan.skipped_transfer = len(plan.transfer_groups) - len(plan.pending_transfer)
    d = plan.defence
    n_kept = {m: sum(1 for n in rc.bench.interpreters.names if n not in refused.get(m, {}))
              for m in rc.bench.models.names}
    units = [u for u in d.units if not (u.interpreter == "ensemble" and n_kept[u.model] < 2)]
    exact = {u for u, r in plan.provisional.items()
             if u.stage == "defence" and r == frozenset(refused.get(u.model, {})) and u not in d.forced}
    # up to date = written under exactly this model's refusals (a unit stored without any, for a model that
    # refuses one now, scored with that interpreter's maps: rewritten)
    pending = [u for u in units if not (u in exact or (u not in d.pending and u.model not in refused))]
    plan.defence = DefencePlan(units, pending, d.forced)


def _stale_units(rc: ResolvedConfig, store: ResultStore, ds: Any, complete: set[ShardUnit]) -> set[ShardUnit]:
    """Complete units whose stored image ids differ from the shard's current images.

    The hash covers a folder dataset's path, not its files: if images were added or removed there, a
    shard's rows would silently describe other images. One DuckDB query over the ``samples`` ids finds
    such units (and one over the ``examples`` ids); they are recomputed (overwritten in place), and their
    cross-evaluation and evaluations with them.
    """
    from adv2core.store import run_sql
    from tasks import worker

    attack_done = [u for u in complete if u.stage == "attack"]
    ex_done = [u for u in complete if u.stage == "examples"]
    if not attack_done and not ex_done:
        return set()
    t = run_sql(store.root, "SELECT model, interpreter, attack, shard, list(image_id ORDER BY image_id) AS ids "
                            "FROM samples WHERE config_hash = ? GROUP BY ALL", [rc.config_hash])
    stored = {(r["model"], r["interpreter"], r["attack"], r["shard"]): r["ids"] for r in t.to_pylist()}
    expected = {s: sorted(ds.ids[i] for i in worker.shard_dataset_indices(rc, len(ds), s))
                for s in range(rc.num_shards)}
    stale = {u for u in attack_done if stored.get((u.model, u.interpreter, u.attack, u.shard)) != expected[u.shard]}
    if ex_done:  # examples stored for other images are recomputed, with every unit evaluating them
        t = run_sql(store.root, "SELECT model, attack, shard, list(image_id ORDER BY image_id) AS ids FROM examples "
                                "WHERE config_hash = ? GROUP BY ALL", [rc.config_hash])
        got = {(r["model"], r["attack"], r["shard"]): r["ids"] for r in t.to_pylist()}
        bad = {u for u in ex_done if got.get((u.model, u.attack, u.shard)) != expected[u.shard]}
        stale |= bad | {u for u in attack_done if any((e.model, e.attack, e.shard) == (u.model, u.attack, u.shard)
                                                      for e in bad)}
    stale |= {examples_unit(rc, u.model, u.attack, u.shard) for u in stale
              if u.stage == "attack" and interpreter_free(u.attack)} & set(ex_done)
    # benign rows hold only the attacked images: their units follow the attack units of their shard
    stale |= {benign_unit(rc, u.model, u.interpreter, u.shard) for u in stale if u.stage == "attack"} & complete
    stale |= {u for u in complete if u.stage == "transfer" and any(
        (a.model, a.shard) == (u.model, u.shard) for a in stale)}
    return stale
