"""Exceptions with one-line messages meant for users (the CLI prints ``str(exc)`` and exits 2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

M = TypeVar("M", bound="BaseModel")


class Adv2Error(Exception):
    """Base class: a clear, user-facing problem (bad input, missing file, refused checkpoint)."""


class ConfigError(Adv2Error):
    """An invalid configuration value or an unknown name (model, interpreter, attack, preset)."""


class DataError(Adv2Error):
    """A dataset that is missing, empty or unreadable as a whole."""


class CheckpointError(Adv2Error):
    """A checkpoint that is missing, truncated, tampered with or unsafe to unpickle."""


class ReportError(Adv2Error):
    """A report cannot be built (unknown run id, no runs in the results root)."""


def one_line(exc: BaseException, *, typed: bool = True) -> str:
    """An exception as one line for a user-facing message or a stored error field.

    ``typed``: ``"TypeName: first line of the message"`` (the type alone for an empty message); else the
    bare first line, an ``OSError``'s reason (``strerror``) preferred over its full text."""
    if not typed:
        text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return text.splitlines()[0]
    lines = str(exc).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def validate_config(cls: type[M], data: Any = None, /, *, what: str | None = None, **overrides: Any) -> M:
    """Build pydantic model ``cls`` from a mapping or an instance plus keyword ``overrides``; a validation
    error becomes one ConfigError line ``invalid <what>: <key.path>: <reason> (+N more)`` (``what``
    defaults to the class name; an unknown key reads ``unknown key``)."""
    from pydantic import BaseModel, ValidationError

    name = what or cls.__name__
    if data is None:
        base: dict[str, Any] = {}
    elif isinstance(data, BaseModel):
        base = data.model_dump()
    elif isinstance(data, Mapping):
        base = dict(data)
    else:
        raise ConfigError(f"invalid {name}: expected a mapping, got {type(data).__name__}")
    try:
        return cls.model_validate({**base, **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        msg = "unknown key" if err.get("type") == "extra_forbidden" else str(err.get("msg", "invalid value"))
        msg = msg.removeprefix("Value error, ")
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"invalid {name}: {loc}: {msg}{more}") from None
