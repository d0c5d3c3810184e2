"""Interpreters by name, and the one place they are built.

An :class:`InterpreterSpec` says *what* to build: the name, the validated settings (RTS / MASK; Grad and
CAM have none) and, for RTS, an optional masking-model checkpoint. :func:`interpreter_spec` resolves an
interpreter preset into a spec once; :func:`build_interpreter` turns a spec into an interpreter for a model.
Every caller (the bench cell, the pipeline worker, ``adv2 explain``) goes through these two, so ``adv2
attack``, ``adv2 run`` and ``adv2 explain`` build an interpreter from the same settings the same way.
The interpreter classes themselves never read presets, and RTS never trains: its masking model comes
from :func:`adv2core.interpreters.rts_training.load_or_train_masker` here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from adv2core.errors import ConfigError
from adv2core.interpreters.base import Interpreter
from adv2core.interpreters.config import MaskConfig, RTSAIDConfig, RTSConfig, default_preset, load_interpreter_config
from adv2core.models.classifier import Classifier

_CLASSES = {
    "grad": "adv2core.interpreters.grad:Grad",
    "cam": "adv2core.interpreters.cam:CAM",
    "rts": "adv2core.interpreters.rts:RTS",
    "rts-aid": "adv2core.interpreters.rts:RTSAID",
    "mask": "adv2core.interpreters.mask:MASK",
}
INTERPRETER_NAMES = tuple(_CLASSES)
#: The settings model of the interpreters that have settings (the sections of an interpreter preset).
CONFIG_CLASSES: dict[str, type[BaseModel]] = {"rts": RTSConfig, "mask": MaskConfig, "rts-aid": RTSAIDConfig}
#: Interpreters built from trained weights (a checkpoint path may be given).
TRAINED = ("rts", "rts-aid")


def _check_name(name: str) -> None:
    if name not in _CLASSES:
        raise ConfigError(f"unknown interpreter {name!r}; choose one of: {', '.join(INTERPRETER_NAMES)}")


def interpreter_class(name: str) -> type[Interpreter]:
    _check_name(name)
    mod, cls = _CLASSES[name].split(":")
    return getattr(importlib.import_module(mod), cls)


@dataclass(frozen=True)
class InterpreterSpec:
    """What to build: ``name``, its validated ``config`` (None for Grad/CAM) and an optional
    ``checkpoint`` (RTS's masking model; None: the embedded-model cache)."""

    name: str
    config: BaseModel | None = None
    checkpoint: Path | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        want = CONFIG_CLASSES.get(self.name)
        if want is None and self.config is not None:
            raise ConfigError(f"interpreter {self.name!r} has no settings, got {type(self.config).__name__}")
        if want is not None and not isinstance(self.config, want):
            got = type(self.config).__name__ if self.config is not None else "none"
            raise ConfigError(f"interpreter {self.name!r} needs a {want.__name__}, got {got}")
        if self.checkpoint is not None and self.name not in TRAINED:
            raise ConfigError(f"interpreter {self.name!r} takes no checkpoint (only {', '.join(TRAINED)} does)")


def interpreter_spec(
    name: str,
    preset: str | Path | None = None,
    model_name: str | None = None,
    *,
    config: BaseModel | Mapping[str, Any] | None = None,
    checkpoint: str | Path | None = None,
) -> InterpreterSpec:
    """The spec of interpreter ``name``.

    Settings come from ``config`` (a settings model or a mapping of its fields, e.g. a resolved run
    config's ``interpreter_params[name]``) or else from interpreter preset ``preset`` (a name or a YAML
    path); without either, the model's default preset (``quick`` for embedded models, ``paper`` otherwise).
    """
    _check_name(name)
    cls = CONFIG_CLASSES.get(name)
    cfg: BaseModel | None = None
    if cls is not None:
        if isinstance(config, BaseModel):
            cfg = config
        elif config is not None:
            try:
                cfg = cls(**dict(config))
            except (ValidationError, TypeError) as exc:
                first = str(exc).splitlines()
                raise ConfigError(f"invalid {name} settings: {' '.join(first[:3])}") from None
        else:
            if preset is None and model_name is None:
                raise ConfigError(f"interpreter {name!r} needs settings: pass an interpreter preset or the model name")
            cfg = load_interpreter_config(preset if preset is not None else default_preset(str(model_name)))[name]
    return InterpreterSpec(name, cfg, Path(checkpoint) if checkpoint is not None else None)


def _legacy_spec(name: str, model: Classifier, opts: dict[str, Any]) -> InterpreterSpec:
    """The spec of the older keyword form ``build_interpreter(name, model, cfg=..., checkpoint=...)``
    (scripts under ``benchmarks/`` use it); without settings, the model's default preset."""
    cfg = opts.pop("cfg", None) or opts.pop("mask_cfg", None) or opts.pop("rts_cfg", None)
    checkpoint = opts.pop("checkpoint", None)
    confidence = opts.pop("confidence", None)
    if opts:
        raise ConfigError(f"unknown {name} option(s): {', '.join(sorted(opts))}")
    spec = interpreter_spec(name, None, model.name, config=cfg, checkpoint=checkpoint)
    if confidence is not None and isinstance(spec.config, RTSConfig):
        spec = InterpreterSpec(name, spec.config.model_copy(update={"model_confidence": float(confidence)}), spec.checkpoint)
    return spec


def build_interpreter(
    spec: InterpreterSpec | str,
    model: Classifier,
    *,
    data_cfg: Any | None = None,
    train_if_missing: bool = False,
    progress: bool = False,
    encoder_model: Classifier | None = None,
    **legacy: Any,
) -> Interpreter:
    """Interpreter ``spec`` for ``model``. RTS loads its masking model from ``spec.checkpoint`` or the
    cache of the embedded models (trained on ``data_cfg`` when missing and ``train_if_missing``;
    ``encoder_model``: densenet-mini's companion encoder, default the cached one).

    A name instead of a spec is the older keyword form (``cfg=``, ``checkpoint=``, ``confidence=`` in
    ``legacy``), turned into a spec first."""
    if isinstance(spec, str):
        spec = _legacy_spec(spec, model, dict(legacy))
    elif legacy:
        raise ConfigError(f"unknown interpreter option(s): {', '.join(sorted(legacy))} (settings belong in the spec)")
    if not isinstance(spec, InterpreterSpec):
        raise TypeError(f"build_interpreter takes an InterpreterSpec (see interpreter_spec), got {type(spec).__name__}")
    cls: Any = interpreter_class(spec.name)
    if spec.name == "rts-aid":
        from adv2core.interpreters.aid import load_or_train_aid_masker

        acfg: Any = spec.config
        masker, path = load_or_train_aid_masker(model, acfg, checkpoint=spec.checkpoint, data_cfg=data_cfg,
                                                train_if_missing=train_if_missing, encoder_model=encoder_model)
        return cls(model, masker, confidence=acfg.model_confidence).with_checkpoint(path)
    if spec.name == "rts":
        from adv2core.interpreters.rts_training import load_or_train_masker

        cfg: Any = spec.config
        masker, path = load_or_train_masker(model, cfg, checkpoint=spec.checkpoint, data_cfg=data_cfg,
                                            train_if_missing=train_if_missing, progress=progress,
                                            encoder_model=encoder_model)
        return cls(model, masker, confidence=cfg.model_confidence).with_checkpoint(path)
    if spec.config is not None:
        return cls(model, spec.config)
    return cls(model)
