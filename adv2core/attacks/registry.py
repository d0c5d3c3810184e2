"""Attacks by name: ``pgd``, ``adv2``, ``stadv``, ``stadv-adv2`` (ADV^2 per interpreter), and the adaptive
``adv2-fs`` (ADV^2 + a feature-squeezing term, per interpreter) and ``adv2-ens`` (ADV^2 against several
interpreters at once).

``adv2-ens`` in the flow's (model, interpreter, attack, shard) unit: the unit's interpreter is the
*evaluated* member (its target map and its map in the rows); the other members come from the attack
config (``adv2_ens.members``) and are built here, by :func:`build_attack`, with the preset's interpreter
preset (or passed pre-built through ``members=``). A grid with interpreters [grad, cam] and attack
adv2-ens therefore reports the same joint attack once per member.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel

from adv2core.attacks.adaptive import ADV2FSCAM, ADV2FSRTS, ADV2Ensemble, ADV2FSGrad
from adv2core.attacks.adv2 import ADV2CAM, ADV2RTS, ADV2Grad
from adv2core.attacks.base import Attack
from adv2core.attacks.config import AttacksConfig, interpreter_section, load_preset
from adv2core.attacks.mask import ADV2Mask, StAdvADV2Mask
from adv2core.attacks.pgd import PGD
from adv2core.attacks.stadv import StAdv, StAdvADV2CAM, StAdvADV2Grad, StAdvADV2RTS
from adv2core.errors import ConfigError, validate_config
from adv2core.interpreters.base import Interpreter
from adv2core.models.classifier import Classifier

ATTACK_NAMES = ("pgd", "adv2", "stadv", "stadv-adv2", "adv2-fs", "adv2-ens")
#: The ADV^2 procedure of each interpreter, for the L-inf (``adv2``) and the flow (``stadv-adv2``) attack.
_PER_INTERPRETER: dict[str, tuple[str, dict[str, type[Attack]]]] = {
    "adv2": ("ADV^2", {"grad": ADV2Grad, "cam": ADV2CAM, "rts": ADV2RTS, "rts-aid": ADV2RTS, "mask": ADV2Mask}),
    "stadv-adv2": ("StAdv-ADV^2", {"grad": StAdvADV2Grad, "cam": StAdvADV2CAM, "rts": StAdvADV2RTS, "rts-aid": StAdvADV2RTS,
                                   "mask": StAdvADV2Mask}),
    "adv2-fs": ("FS-adaptive ADV^2", {"grad": ADV2FSGrad, "cam": ADV2FSCAM, "rts": ADV2FSRTS, "rts-aid": ADV2FSRTS}),
}
#: Config section of each per-interpreter attack in an :class:`AttacksConfig`.
_SECTIONS = {"adv2": "adv2", "stadv-adv2": "stadv_adv2", "adv2-fs": "adv2_fs"}


def attack_class(name: str, interpreter_name: str | None = None) -> type[Attack]:
    """The class implementing attack ``name`` against ``interpreter_name`` (ADV^2 variants need it)."""
    if name == "pgd":
        return PGD
    if name == "stadv":
        return StAdv
    if name == "adv2-ens":
        if not interpreter_name:
            raise ConfigError(f"attack {name!r} needs an interpreter (the evaluated member)")
        return ADV2Ensemble
    if name in _PER_INTERPRETER:
        if not interpreter_name:
            raise ConfigError(f"attack {name!r} needs an interpreter")
        label, table = _PER_INTERPRETER[name]
        if interpreter_name not in table:
            raise ConfigError(f"{label} has no procedure for interpreter {interpreter_name!r}; supported: {', '.join(table)}")
        return table[interpreter_name]
    raise ConfigError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACK_NAMES)}")


def interpreter_free(name: str) -> bool:
    """True for attacks that never look at an interpreter (PGD, StAdv): their examples are shared by every
    interpreter of a run; False for the ADV^2 variants and for unknown names."""
    try:
        return not attack_class(name).uses_interpreter
    except ConfigError:  # an ADV^2 variant: its class depends on the interpreter
        return False


def attack_config(name: str, interpreter_name: str | None, preset: AttacksConfig) -> BaseModel:
    """The section of a preset that configures (name, interpreter)."""
    attack_class(name, interpreter_name)  # validates the names
    if name == "pgd":
        return preset.pgd
    if name == "stadv":
        return preset.stadv
    if name == "adv2-ens":
        return preset.adv2_ens
    return getattr(getattr(preset, _SECTIONS[name]), interpreter_section(str(interpreter_name)))


def _ensemble_members(
    model: Classifier, interpreter: Interpreter | None, section: BaseModel | dict, preset: AttacksConfig | None,
    given: Mapping[str, Interpreter] | None,
) -> dict[str, Interpreter]:
    """The members of an ``adv2-ens`` attack other than the cell's interpreter: ``given`` ones first, the
    rest built through the interpreter registry with the preset's interpreter preset (RTS from its cache)."""
    from adv2core.interpreters.registry import build_interpreter, interpreter_spec

    names = section.get("members", ()) if isinstance(section, dict) else getattr(section, "members", ())
    ipreset = preset.interpreter_preset if preset is not None else None
    out = dict(given or {})
    for name in names:
        if name not in out and (interpreter is None or name != interpreter.name):
            out[name] = build_interpreter(interpreter_spec(name, ipreset, model.name), model)
    return out


def build_attack(
    name: str,
    model: Classifier,
    interpreter: Interpreter | None = None,
    cfg: AttacksConfig | BaseModel | dict | str | None = None,
    *,
    seed: int = 0,
    members: Mapping[str, Interpreter] | None = None,
    **overrides: Any,
) -> Attack:
    """Construct attack ``name`` for (model, interpreter).

    ``cfg`` may be a whole preset (an :class:`AttacksConfig`, a preset name such as ``'quick'`` or a YAML
    path; the attack's section is picked), the attack's own config model or a dict of its fields, or
    None (the paper's values). Keyword ``overrides`` replace single fields. ``members``: pre-built
    interpreters for ``adv2-ens`` (by name; missing members are built from the preset's interpreter preset).
    """
    iname = interpreter.name if interpreter is not None else None
    cls = attack_class(name, iname)
    preset: AttacksConfig | None = None
    if cfg is None or isinstance(cfg, (AttacksConfig, str)):
        preset = load_preset(cfg if cfg is not None else "paper")
        section: Any = attack_config(name, iname, preset)
    else:
        section = cfg
    if isinstance(section, BaseModel) and not isinstance(section, cls.config_cls):
        raise ConfigError(f"attack {name!r} ({cls.__name__}) expects a {cls.config_cls.__name__}, got {type(section).__name__}")
    if cls is ADV2Ensemble:
        section = validate_config(ADV2Ensemble.config_cls, section, **overrides)
        if interpreter is not None and interpreter.name not in section.members:
            raise ConfigError(f"adv2-ens attacks {', '.join(section.members)}; interpreter {interpreter.name!r} is not a "
                              "member (set adv2_ens.members)")
        others = _ensemble_members(model, interpreter, section, preset, members)
        return cls(model, interpreter, section, seed=seed, members=others)
    if members:
        raise ConfigError(f"attack {name!r} takes no members (only adv2-ens does)")
    return cls(model, interpreter, section, seed=seed, **overrides)
