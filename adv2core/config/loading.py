"""Config loading: run preset -> ``--config`` file (deep-merged) -> ``--set key.sub=value`` overrides.

Presets are read through :mod:`adv2core.presets` (shipped with the package via importlib.resources,
or ``$ADV2_CONFIG_DIR``); the result is validated into a :class:`~adv2core.config.schema.BenchConfig`.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from adv2core import presets
from adv2core.config.schema import BenchConfig
from adv2core.errors import ConfigError, validate_config


def load_config(
    preset: str | None = "quick",
    config_file: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
) -> BenchConfig:
    """Preset YAML -> file (deep-merged) -> ``key.sub=value`` overrides -> validated BenchConfig."""
    data: dict[str, Any] = {}
    if preset:
        data = presets.load("presets", preset)
        data.setdefault("preset", preset)
    if config_file is not None:
        extra = presets.read_file(Path(config_file).expanduser(), "config file")
        base = extra.pop("extends", None)
        if base and not preset:
            data = presets.load("presets", base)
            data.setdefault("preset", base)
        data = deep_merge(data, extra)
    for item in overrides:
        apply_override(data, item)
    return validate_config(BenchConfig, data, what="config")


def preset_path(name: str) -> Any:
    """Where run preset ``name`` is read from (a Path or an importlib.resources Traversable)."""
    where = presets.locate("presets", name)
    if where is None:
        presets.load("presets", name)  # raises the one-line 'unknown preset ...; choose one of' error
    return where


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``extra`` wins; lists are replaced, not concatenated."""
    out = copy.deepcopy(dict(base))
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], yaml-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not path or any(not re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in path):
        raise ConfigError(f"override key {key!r} must be dot-separated names")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set one ``key.sub=value`` in a raw config dict (intermediate mappings are created)."""
    path, value = parse_override(item)
    node = data
    for p in path[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node = nxt
    node[path[-1]] = value
