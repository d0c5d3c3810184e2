"""Interpreters by name. Heavy ones (RTS needs a trained masking model) build through ``create``."""

from __future__ import annotations

import importlib
from typing import Any

from adv2core.errors import ConfigError
from adv2core.interpreters.base import Interpreter
from adv2core.models.classifier import Classifier

_CLASSES = {
    "grad": "adv2core.interpreters.grad:Grad",
    "cam": "adv2core.interpreters.cam:CAM",
    "rts": "adv2core.interpreters.rts:RTS",
    "mask": "adv2core.interpreters.mask:MASK",
}
INTERPRETER_NAMES = tuple(_CLASSES)


def interpreter_class(name: str) -> type[Interpreter]:
    if name not in _CLASSES:
        raise ConfigError(f"unknown interpreter {name!r}; choose one of: {', '.join(INTERPRETER_NAMES)}")
    mod, cls = _CLASSES[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def build_interpreter(name: str, model: Classifier, **opts: Any) -> Interpreter:
    """Construct interpreter ``name`` for ``model``; classes with a ``create`` classmethod use it
    (RTS loads or trains its cached masking model there)."""
    cls = interpreter_class(name)
    factory = getattr(cls, "create", None)
    return factory(model, **opts) if callable(factory) else cls(model, **opts)
