"""The one place that finds and reads preset YAML files.

Three kinds of presets exist: ``presets`` (whole benchmark runs: smoke, quick, paper, ...), ``attacks``
(attack hyper-parameters) and ``interpreters`` (RTS / MASK settings). They ship as package data in
``adv2core/configs/<kind>/<name>.yaml`` and are read through :mod:`importlib.resources`, so an installed
(non-editable) package finds them wherever it lives.

``ADV2_CONFIG_DIR`` (read at every call, not at import) names a folder laid out the same way
(``<dir>/<kind>/<name>.yaml``); a file there takes precedence over the shipped one of the same kind and
name, and its names are listed next to the shipped ones. Every problem is a one-line
:class:`~adv2core.errors.ConfigError`.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from adv2core.errors import ConfigError

KINDS = ("presets", "attacks", "interpreters")
ENV_VAR = "ADV2_CONFIG_DIR"
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_LABEL = {"presets": "preset", "attacks": "attack preset", "interpreters": "interpreter preset"}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown preset kind {kind!r}; expected one of: {', '.join(KINDS)}")


def override_dir() -> Path | None:
    """The ``ADV2_CONFIG_DIR`` folder, or None when the variable is unset or empty."""
    raw = os.environ.get(ENV_VAR, "").strip()
    return Path(raw).expanduser() if raw else None


def packaged(kind: str) -> Traversable:
    """The shipped folder of one kind (inside the installed ``adv2core`` package)."""
    _check_kind(kind)
    return resources.files("adv2core").joinpath("configs", kind)


def names(kind: str) -> list[str]:
    """Every preset name of ``kind``: shipped ones plus those in ``ADV2_CONFIG_DIR``."""
    found: set[str] = set()
    shipped = packaged(kind)
    if shipped.is_dir():
        found |= {p.name[:-5] for p in shipped.iterdir() if p.name.endswith(".yaml")}
    over = override_dir()
    if over is not None and (over / kind).is_dir():
        found |= {p.stem for p in (over / kind).glob("*.yaml")}
    return sorted(found)


def locate(kind: str, name: str) -> Traversable | None:
    """Where preset ``name`` of ``kind`` is read from (override first), or None when it does not exist."""
    _check_kind(kind)
    if not _NAME.fullmatch(name or ""):
        raise ConfigError(f"invalid {_LABEL[kind]} name {name!r}")
    over = override_dir()
    if over is not None and (over / kind / f"{name}.yaml").is_file():
        return over / kind / f"{name}.yaml"
    shipped = packaged(kind).joinpath(f"{name}.yaml")
    return shipped if shipped.is_file() else None


def exists(kind: str, name: str) -> bool:
    return locate(kind, name) is not None


def parse_yaml(text: str, what: str) -> dict[str, Any]:
    """A YAML mapping (empty file -> {}); anything else is a one-line ConfigError naming ``what``."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise ConfigError(f"{what} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping at the top level")
    return data


def read_file(path: str | Path | Traversable, what: str) -> dict[str, Any]:
    """A YAML mapping from a file path (user files: ``--config``, a preset given as a path)."""
    if isinstance(path, str):
        path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return parse_yaml(text, f"{what} {path}")


def load(kind: str, name: str) -> dict[str, Any]:
    """The raw mapping of preset ``name`` of ``kind``; an unknown name lists the choices."""
    where = locate(kind, name)
    if where is None:
        choices = ", ".join(names(kind)) or "(none found)"
        raise ConfigError(f"unknown {_LABEL[kind]} {name!r}; choose one of: {choices}")
    return read_file(where, f"{_LABEL[kind]} {name!r}")


__all__ = ["ENV_VAR", "KINDS", "exists", "load", "locate", "names", "override_dir", "packaged", "parse_yaml", "read_file"]
