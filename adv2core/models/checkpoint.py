"""Safe checkpoint I/O: ``weights_only=True`` always, one-line errors for every failure mode."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from adv2core.errors import CheckpointError


def load_state_dict_file(path: Path) -> dict[str, Any]:
    """Load a checkpoint that holds tensors and plain containers only.

    A pickle that would run code is refused (``weights_only``); a truncated or corrupt file gets one
    line saying so. A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise CheckpointError(f"refused checkpoint {path}: it would unpickle arbitrary objects (weights_only load failed: {reason[:160]})") from None
        raise CheckpointError(f"corrupt checkpoint {path}: {reason[:200]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"corrupt or truncated checkpoint {path}: {reason[:200]}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises assorted types for tampered archives
        raise CheckpointError(f"unreadable checkpoint {path}: {type(exc).__name__}: {str(exc)[:160]}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state_dict of tensors")
    return obj


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``{"state_dict", "meta"}`` atomically (temp file + rename) so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in state.items()}, "meta": meta}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_checkpoint` (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"corrupt, truncated or unsafe checkpoint {path}: {first[:200]}") from None
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise CheckpointError(f"checkpoint {path} has no state_dict")
    return obj["state_dict"], obj.get("meta", {})


def stable_hash(*parts: Any) -> str:
    """A short sha256 over the repr of JSON-like parts: cache keys for checkpoints and configs."""
    import json

    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]
