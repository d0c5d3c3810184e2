"""Provenance of a run: code version (git sha + dirty flag), package versions, host, device.

Recorded once per run in the ``runs`` table and (as ``code_version``) in every result row, so any
number in a report can be traced to the code and environment that produced it.
"""

from __future__ import annotations

import functools
import json
import platform
import re
import secrets
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (
    "adv2-bench", "torch", "torchvision", "numpy", "pillow", "pydantic", "prefect", "prefect-dask",
    "dask", "distributed", "pyarrow", "duckdb",
)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str, bool | None]:
    """(HEAD sha or 'unknown', dirty flag or None when not a git checkout). Untracked files ignored."""
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return "unknown", None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return sha, (bool(status) if status is not None else None)


def code_version() -> str:
    """``<package version>+g<sha12>[.dirty]`` (``+unknown`` outside a git checkout)."""
    try:
        version = metadata.version("adv2-bench")
    except metadata.PackageNotFoundError:
        version = "0"
    sha, dirty = git_state()
    if sha == "unknown":
        return f"{version}+unknown"
    return f"{version}+g{sha[:12]}{'.dirty' if dirty else ''}"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        out["torch.cuda"] = str(torch.version.cuda)
    except ImportError:  # pragma: no cover
        pass
    return out


def new_run_id(preset: str) -> str:
    """Sortable, unique and a safe path component: ``20260101T120000Z-quick-1a2b3c``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", preset).strip("-")[:24] or "run"
    return f"{stamp}-{safe}-{secrets.token_hex(3)}"


def hostname() -> str:
    return socket.gethostname()


def run_row(
    *,
    run_id: str,
    config_hash: str,
    preset: str,
    config_json: str,
    device: str,
    seed: int,
    started_at: datetime,
    status: str,
    ended_at: datetime | None = None,
    preflight: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``runs`` table row (see adv2core.store.schemas.RUNS)."""
    sha, dirty = git_state()
    return {
        "run_id": run_id,
        "config_hash": config_hash,
        "preset": preset,
        "config_json": config_json,
        "git_sha": sha,
        "git_dirty": dirty,
        "package_versions": json.dumps(package_versions(), sort_keys=True),
        "device": device,
        "seed": seed,
        "started_at": started_at,
        "ended_at": ended_at,
        "status": status,
        "hostname": hostname(),
        "preflight": None if preflight is None else json.dumps(preflight, sort_keys=True, allow_nan=False),
    }
