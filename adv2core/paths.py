"""Where generated data, checkpoints and results live.

Everything generated goes under one data root so a user can move or wipe it in one place:
``$ADV2_DATA`` if set, else ``./data`` relative to the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """The root for caches (datasets, checkpoints) and results; created on demand."""
    root = Path(os.environ.get("ADV2_DATA", "data")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def cache_dir(kind: str) -> Path:
    """A sub-folder of the data root for one kind of cache (``datasets``, ``checkpoints`` ...)."""
    d = data_root() / kind
    d.mkdir(parents=True, exist_ok=True)
    return d
