"""Attacks by name: ``pgd``, ``adv2``, ``stadv``, ``stadv-adv2`` (the last two ADV^2 ones per interpreter)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from adv2core.attacks.adv2 import ADV2CAM, ADV2RTS, ADV2Grad
from adv2core.attacks.base import Attack
from adv2core.attacks.config import AttacksConfig, load_preset
from adv2core.attacks.mask import ADV2Mask, StAdvADV2Mask
from adv2core.attacks.pgd import PGD
from adv2core.attacks.stadv import StAdv, StAdvADV2CAM, StAdvADV2Grad, StAdvADV2RTS
from adv2core.errors import ConfigError
from adv2core.interpreters.base import Interpreter
from adv2core.models.classifier import Classifier

ATTACK_NAMES = ("pgd", "adv2", "stadv", "stadv-adv2")
#: The ADV^2 procedure of each interpreter, for the L-inf (``adv2``) and the flow (``stadv-adv2``) attack.
_PER_INTERPRETER: dict[str, tuple[str, dict[str, type[Attack]]]] = {
    "adv2": ("ADV^2", {"grad": ADV2Grad, "cam": ADV2CAM, "rts": ADV2RTS, "mask": ADV2Mask}),
    "stadv-adv2": ("StAdv-ADV^2", {"grad": StAdvADV2Grad, "cam": StAdvADV2CAM, "rts": StAdvADV2RTS, "mask": StAdvADV2Mask}),
}


def attack_class(name: str, interpreter_name: str | None = None) -> type[Attack]:
    """The class implementing attack ``name`` against ``interpreter_name`` (ADV^2 variants need it)."""
    if name == "pgd":
        return PGD
    if name == "stadv":
        return StAdv
    if name in _PER_INTERPRETER:
        if not interpreter_name:
            raise ConfigError(f"attack {name!r} needs an interpreter")
        label, table = _PER_INTERPRETER[name]
        if interpreter_name not in table:
            raise ConfigError(f"{label} has no procedure for interpreter {interpreter_name!r}; supported: {', '.join(table)}")
        return table[interpreter_name]
    raise ConfigError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACK_NAMES)}")


def attack_config(name: str, interpreter_name: str | None, preset: AttacksConfig) -> BaseModel:
    """The section of a preset that configures (name, interpreter)."""
    attack_class(name, interpreter_name)  # validates the names
    if name == "pgd":
        return preset.pgd
    if name == "stadv":
        return preset.stadv
    section = preset.adv2 if name == "adv2" else preset.stadv_adv2
    return getattr(section, str(interpreter_name))


def build_attack(
    name: str,
    model: Classifier,
    interpreter: Interpreter | None = None,
    cfg: AttacksConfig | BaseModel | dict | str | None = None,
    *,
    seed: int = 0,
    **overrides: Any,
) -> Attack:
    """Construct attack ``name`` for (model, interpreter).

    ``cfg`` may be a whole preset (an :class:`AttacksConfig`, a preset name such as ``'quick'`` or a YAML
    path; the attack's section is picked), the attack's own config model or a dict of its fields, or
    None (the paper's values). Keyword ``overrides`` replace single fields.
    """
    iname = interpreter.name if interpreter is not None else None
    cls = attack_class(name, iname)
    if cfg is None or isinstance(cfg, (AttacksConfig, str)):
        section: Any = attack_config(name, iname, load_preset(cfg if cfg is not None else "paper"))
    else:
        section = cfg
    if isinstance(section, BaseModel) and not isinstance(section, cls.config_cls):
        raise ConfigError(f"attack {name!r} ({cls.__name__}) expects a {cls.config_cls.__name__}, got {type(section).__name__}")
    return cls(model, interpreter, section, seed=seed, **overrides)
