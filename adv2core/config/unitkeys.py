"""Per-unit dependency keys: the part of a resolved config one stored unit depends on, hashed.

The config hash keys a whole run, so changing one interpreter setting gives every unit a new hash. A
unit's **unit key** hashes only what its rows can depend on, so a unit of a new config whose key equals
that of a complete unit stored under another config is *copied forward* instead of recomputed
(:func:`adv2core.store.copy.copy_unit`, planned by ``flows.plan``).

What each stage's key covers (besides the stage, model, shard and shard count of the unit):

* **common** to every stage: the seed, the ``data`` section (dataset, split, path, options, num_images,
  shard_size, population), ``attacks.batch_size`` (the batches are the population and target-image
  pools), the config and schema versions, and any hashed field not classified below (so a field added
  to the hashed view later is conservatively part of every key);
* **model**: the ``models`` section with ``names`` reduced to the unit's model and ``per_model_weights`` /
  ``custom`` to its entry (weights, train recipe, embedded data, train_if_missing stay);
* **benign** (model, interpreter): common + model + the interpreter's part: its resolved settings
  (``interpreter_params[name]``) and its checkpoint for this model (``interpreters.checkpoints``);
* **examples** (model, interpreter-free attack): common + model + the attack's resolved section;
* **attack** (model, interpreter, attack): common + model + interpreter part + the attack's section (the
  interpreter's sub-section for per-interpreter attacks), the ``target`` section when the run has one
  (target maps are measured against), and for ``adv2-ens`` the parts of its members in the run;
* **transfer** (model, source interpreter, attack): the source attack unit's key parts + the parts of
  *every* interpreter of the run in order (each re-explains the examples);
* **defence** (model, detector, settings hash): common + model + every interpreter part, the whole
  ``attack_params``, attack names/preset and the cross-evaluation section: all of its model's units.

Preset *names* (``interpreters.preset``, ``attacks.preset``) are left out of the per-unit stages: their
values are expanded into the params the keys cover. The keys are new (the config hash is unchanged).
"""

from __future__ import annotations

import copy
import hashlib
from typing import TYPE_CHECKING, Any, Iterable

from adv2core.config.hashing import canonical_json

if TYPE_CHECKING:
    from adv2core.config.resolve import ResolvedConfig
    from adv2core.store.layout import ShardUnit

__all__ = ["KEY_VERSION", "unit_key", "unit_keys"]

#: Bump when the meaning of a unit key changes: older keys then never match (no copy-forward).
KEY_VERSION = 1
#: Attack sections with one sub-section per interpreter (the unit reads only its interpreter's).
_PER_INTERPRETER = ("adv2", "stadv_adv2", "adv2_fs")


class _Parts:
    """The key parts of one resolved config, built once for many units."""

    def __init__(self, rc: ResolvedConfig) -> None:
        view = copy.deepcopy(rc.hashed())
        cfg = view["config"]
        self.models = cfg.pop("models")
        self.interps = cfg["interpreters"]
        self.attacks = cfg["attacks"]
        self.cross_eval = cfg.pop("cross_eval", None)
        i_cls = {k: self.interps.pop(k, None) for k in ("names", "preset", "checkpoints", "params")}
        a_cls = {k: self.attacks.pop(k, None) for k in ("names", "preset", "params")}
        self.i_names = list(i_cls["names"] or [])
        self.i_params = i_cls["params"] or {}
        self.i_ckpts = i_cls["checkpoints"] or {}
        self.a_names = list(a_cls["names"] or [])
        self.a_preset = a_cls["preset"]
        self.a_params = a_cls["params"] or {}
        self.common = view  # what is left: seed, data, batch_size, versions, any unclassified field

    def model(self, m: str) -> dict[str, Any]:
        d = dict(self.models)
        d["names"] = [m]
        d["per_model_weights"] = {k: v for k, v in (d.get("per_model_weights") or {}).items() if k == m}
        if "custom" in d:
            d["custom"] = {k: v for k, v in (d["custom"] or {}).items() if k == m}
        return d

    def interpreter(self, m: str, i: str) -> dict[str, Any]:
        return {"name": i, "params": self.i_params.get(i), "checkpoint": self.i_ckpts.get(i, {}).get(m)}

    def attack(self, m: str, a: str, i: str | None) -> dict[str, Any]:
        from adv2core.attacks.config import interpreter_section
        from adv2core.config.resolve import attack_field

        field = attack_field(a)
        sec = self.a_params.get(field)
        if field in _PER_INTERPRETER and i is not None and isinstance(sec, dict):
            sec = sec.get(interpreter_section(i))
        part: dict[str, Any] = {"name": a, "params": sec}
        if i is not None and "target" in self.a_params:
            part["target"] = self.a_params["target"]
        if field == "adv2_ens" and isinstance(sec, dict):
            part["members"] = [self.interpreter(m, j) for j in sec.get("members", ()) if j in self.i_names]
        return part

    def subset(self, u: ShardUnit) -> dict[str, Any]:
        """Exactly what the rows of ``u`` depend on (the JSON its key hashes)."""
        m = u.model
        head = {"key_version": KEY_VERSION, "stage": u.stage, "shard": u.shard, "num_shards": u.num_shards,
                "common": self.common, "model": self.model(m)}
        if u.stage == "benign":
            return {**head, "interpreter": self.interpreter(m, u.interpreter)}
        if u.stage == "examples":
            return {**head, "attack": self.attack(m, u.attack, None)}
        if u.stage == "attack":
            return {**head, "interpreter": self.interpreter(m, u.interpreter),
                    "attack": self.attack(m, u.attack, u.interpreter)}
        if u.stage == "transfer":
            return {**head, "interpreter": self.interpreter(m, u.interpreter),
                    "attack": self.attack(m, u.attack, u.interpreter),
                    "evaluators": [self.interpreter(m, j) for j in self.i_names]}
        if u.stage == "defence":
            return {**head, "detector": u.interpreter, "settings": u.attack,
                    "interpreters": [self.interpreter(m, j) for j in self.i_names],
                    "attacks": {"names": self.a_names, "preset": self.a_preset, "params": self.a_params},
                    "cross_eval": self.cross_eval}
        raise ValueError(f"no unit key for stage {u.stage!r}")


def unit_keys(rc: ResolvedConfig, units: Iterable[ShardUnit]) -> dict[ShardUnit, str]:
    """The unit key of each unit (32 hex digits of sha256 over the canonical JSON of its subset)."""
    parts = _Parts(rc)
    return {u: hashlib.sha256(canonical_json(parts.subset(u)).encode()).hexdigest()[:32] for u in units}


def unit_key(rc: ResolvedConfig, unit: ShardUnit) -> str:
    """The unit key of one unit (see the module docstring for what each stage's key covers)."""
    return unit_keys(rc, [unit])[unit]
