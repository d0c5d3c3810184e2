"""Shared CLI plumbing: one-line errors, JSON output, device choice."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import typer


def emit_json(obj: dict[str, Any]) -> None:
    """Print exactly one JSON object on stdout (progress and logs go to stderr)."""
    sys.stdout.write(json.dumps(obj, default=_default, sort_keys=True) + "\n")
    sys.stdout.flush()


def _default(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def user_errors(fn: Callable) -> Callable:
    """Turn :class:`Adv2Error` (and pydantic validation errors) into ``error: ...`` + exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pydantic import ValidationError

        from adv2core.errors import Adv2Error

        try:
            return fn(*args, **kwargs)
        except Adv2Error as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            where = f" {loc}" if loc else ""
            typer.echo(f"error: invalid config{where}: {first.get('msg')}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def pick_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu; an explicit choice is validated."""
    import torch

    from adv2core.errors import ConfigError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return device
