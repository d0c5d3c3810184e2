"""Exceptions with one-line messages meant for users (the CLI prints ``str(exc)`` and exits 2)."""

from __future__ import annotations


class Adv2Error(Exception):
    """Base class: a clear, user-facing problem (bad input, missing file, refused checkpoint)."""


class ConfigError(Adv2Error):
    """An invalid configuration value or an unknown name (model, interpreter, attack, preset)."""


class DataError(Adv2Error):
    """A dataset that is missing, empty or unreadable as a whole."""


class CheckpointError(Adv2Error):
    """A checkpoint that is missing, truncated, tampered with or unsafe to unpickle."""
