"""Config resolving: expand attack/interpreter presets into explicit values, cap loops, absolute paths.

:class:`ResolvedConfig` is what a run stores and what travels to tasks; its hash is computed by
:mod:`adv2core.config.hashing` over the expanded (and pruned) values, so the hash sees values, not
preset names, and never settings the selected attacks/interpreters do not use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

from adv2core import presets
from adv2core.config.hashing import canonical_json, config_hash, hashed_view
from adv2core.config.loading import deep_merge
from adv2core.config.schema import AttacksSection, BenchConfig, InterpretersSection
from adv2core.errors import ConfigError, validate_config


class ResolvedConfig(BaseModel):
    """A :class:`BenchConfig` with attack/interpreter settings expanded, its hash, and absolute paths.

    It is what travels to tasks (as a plain dict via :meth:`to_payload`): small, JSON, picklable.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bench: BenchConfig
    attack_params: dict[str, Any]
    interpreter_params: dict[str, Any]
    config_hash: str
    results_root: str
    reports_root: str
    data_root: str

    @classmethod
    def from_bench(cls, bench: BenchConfig) -> "ResolvedConfig":
        attack_params = _resolve_attacks(bench.attacks, bench.interpreters.names)
        interpreter_params = _resolve_interpreters(bench.interpreters)
        hashed = hashed_view(bench, attack_params, interpreter_params)
        data_root = _data_root(bench.pipeline.data_root)
        results = _expand(bench.pipeline.results) if bench.pipeline.results else data_root / "results"
        reports = _expand(bench.pipeline.reports) if bench.pipeline.reports else data_root / "reports"
        return cls(
            bench=bench,
            attack_params=attack_params,
            interpreter_params=interpreter_params,
            config_hash=config_hash(hashed),
            results_root=str(Path(results).absolute()),
            reports_root=str(Path(reports).absolute()),
            data_root=str(data_root),
        )

    def hashed(self) -> dict[str, Any]:
        """The exact JSON object the hash is computed over."""
        return hashed_view(self.bench, self.attack_params, self.interpreter_params)

    def to_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "ResolvedConfig":
        return cls.model_validate(dict(payload))

    def canonical_json(self) -> str:
        return canonical_json(self.hashed())

    @property
    def num_shards(self) -> int:
        return self.bench.num_shards

    @property
    def cross_eval_attacks(self) -> list[str]:
        if not self.bench.cross_eval.enabled:
            return []
        return list(self.bench.cross_eval.attacks or self.bench.attacks.names)


# ---------------------------------------------------------------------------------------- expansion
def cap_steps(obj: Mapping[str, Any], cap: int | None, schema: Any = None) -> dict[str, Any]:
    """Copy of an expanded config with every loop count capped at ``cap``.

    Loop counts are the fields the schema *marks* (:mod:`adv2core.loops`), never guessed from names.
    ``schema``: a pydantic model class or ``{section: class}``; default the attacks schema
    (:class:`~adv2core.attacks.config.AttacksConfig`)."""
    from adv2core.loops import cap_loops

    if schema is None:
        from adv2core.attacks.config import AttacksConfig

        schema = AttacksConfig
    return cap_loops(obj, schema, cap)


def _preset_yaml(kind: str, preset: str) -> dict[str, Any]:
    """Raw attack or interpreter preset ``preset`` (one-line ConfigError when unknown)."""
    return presets.load(kind, preset)


def _resolve_attacks(sec: AttacksSection, interpreters: list[str]) -> dict[str, Any]:
    """Attack preset -> overrides -> full validated dump -> step cap -> revalidated -> pruned JSON."""
    raw = deep_merge(_preset_yaml("attacks", sec.preset), sec.overrides)
    return _validate_params("attacks", raw, sec.names, sec.step_cap, interpreters)


def _resolve_interpreters(sec: InterpretersSection) -> dict[str, Any]:
    """Interpreter preset -> overrides -> full validated dump -> step cap -> revalidated -> pruned JSON."""
    raw = deep_merge(_preset_yaml("interpreters", sec.preset), sec.overrides)
    return _validate_params("interpreters", raw, sec.names, sec.step_cap, sec.names)


def _validate_params(
    kind: str, raw: dict[str, Any], names: list[str], cap: int | None, interpreters: list[str]
) -> dict[str, Any]:
    """Validate through the owning package's pydantic configs (one-line ConfigError on a bad value)."""
    try:
        full = _full_dump(kind, raw)
        if cap is not None:
            full = _full_dump(kind, cap_steps(full, cap, _schema(kind)))
        return json.loads(canonical_json(_prune(kind, full, names, interpreters)))
    except ConfigError:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ConfigError(f"invalid {kind} config {loc}: {msg}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {kind} config: {str(exc).splitlines()[0]}") from None


def _schema(kind: str) -> Any:
    """The pydantic schema of an expanded ``attacks`` / ``interpreters`` section (what the step cap walks)."""
    if kind == "attacks":
        from adv2core.attacks.config import AttacksConfig

        return AttacksConfig
    from adv2core.interpreters.config import _SECTIONS

    return dict(_SECTIONS)


def _full_dump(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Every field with its value (defaults included), so the hash sees values, not preset names."""
    if kind == "attacks":
        from adv2core.attacks.config import AttacksConfig

        return validate_config(AttacksConfig, raw).model_dump(mode="json")
    from adv2core.interpreters.config import _SECTIONS, section_input

    sections = dict(_SECTIONS)
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"invalid interpreters config: unknown section(s) {unknown}; expected {sorted(sections)}")
    out: dict[str, Any] = {}
    for key, cls in sections.items():
        try:
            section = cls(**section_input(raw, key))
            # a section may leave unused later additions out of the dump (RTSConfig.params_dump)
            out[key] = section.params_dump() if hasattr(section, "params_dump") else section.model_dump(mode="json")
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            raise ConfigError(f"invalid interpreters config {key}.{loc}: {msg}") from None
    return out


#: Attack sections with one sub-section per interpreter, and the attacks that aim at a target map.
_PER_INTERPRETER_SECTIONS = ("adv2", "stadv_adv2", "adv2_fs")
_TARGETED_SECTIONS = ("adv2", "stadv_adv2", "adv2_fs", "adv2_ens")


def attack_field(attack: str) -> str:
    """Config section of an attack name (``stadv-adv2`` -> ``stadv_adv2``)."""
    return attack.replace("-", "_")


def _prune(kind: str, full: dict[str, Any], names: list[str], interpreters: list[str]) -> dict[str, Any]:
    """Keep only what the selected names use, so unrelated settings never change the hash."""
    if kind == "interpreters":
        return {k: v for k, v in full.items() if k in names}
    from adv2core.attacks.config import interpreter_section  # rts-aid is attacked with rts's section

    keep = {attack_field(a) for a in names}
    out = {k: v for k, v in full.items() if k in keep}
    sections = {interpreter_section(i) for i in interpreters}
    for k in _PER_INTERPRETER_SECTIONS:
        if k in out and isinstance(out[k], dict):
            out[k] = {i: v for i, v in out[k].items() if i in sections}
    if any(attack_field(a) in _TARGETED_SECTIONS for a in names) and "target" in full:
        out["target"] = full["target"]
    return out


def preset_departures(hashed: Mapping[str, Any]) -> list[str]:
    """Where a stored run config (:meth:`ResolvedConfig.hashed`, the ``runs.config_json``) departs from its
    attack and interpreter presets as they resolve today: a step cap, overrides, or a preset edited since.

    One ``"<kind>.<path> <value> (preset <name>: <value>)"`` per differing setting, in key order; a preset
    that no longer resolves gives one line saying so. Empty for a run of the presets as they are."""
    cfg = hashed.get("config") or {}
    out: list[str] = []
    for kind in ("attacks", "interpreters"):
        sec = cfg.get(kind) or {}
        stored, preset = sec.get("params"), sec.get("preset")
        if not isinstance(stored, dict) or not preset:
            continue
        names = list(sec.get("names") or [])
        interps = list((cfg.get("interpreters") or {}).get("names") or []) if kind == "attacks" else names
        try:
            fresh = _validate_params(kind, _preset_yaml(kind, preset), names, None, interps)
        except ConfigError as exc:
            out.append(f"{kind}: preset {preset!r} does not resolve any more ({exc})")
            continue
        out += [f"{kind}.{path} {a!r} (preset {preset}: {b!r})" for path, a, b in _leaf_diff(stored, fresh)]
    return out


def _leaf_diff(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(a) | set(b)):
            out += _leaf_diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if a == b else [(path, a, b)]


# ---------------------------------------------------------------------------------------- paths
def _expand(p: str) -> Path:
    return Path(os.path.expandvars(p)).expanduser()


def _data_root(configured: str | None) -> Path:
    if configured:
        return _expand(configured).absolute()
    return Path(os.environ.get("ADV2_DATA", "data")).expanduser().absolute()
