"""Safe checkpoint I/O: ``weights_only=True`` always, CRC-checked archives, one-line errors for every failure mode."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from adv2core.errors import CheckpointError


def _reason(exc: BaseException, limit: int = 200) -> str:
    """The informative line of a torch.load error (torch leads with boilerplate about weights_only)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln or "unsupported" in ln:
            return ln[:limit]
    return (lines[0] if lines else type(exc).__name__)[:limit]


def _verify_archive(path: Path) -> None:
    """Check the CRC-32 of every member of a zip-format checkpoint before unpickling it.

    Why: ``torch.load`` does not verify the CRCs, so flipped bytes inside a tensor record load
    silently as wrong weights (measured on torch 2.x). Costs one read of the file (~ms per MB).
    Legacy (non-zip) checkpoints carry no checksum and are left to ``torch.load``.
    """
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"corrupt or truncated checkpoint {path}: {_reason(exc)}") from None
    if bad is not None:
        raise CheckpointError(f"corrupt or tampered checkpoint {path}: checksum mismatch in {bad}")


def _safe_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` after the archive check, with every failure as one line."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    _verify_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise CheckpointError(f"refused checkpoint {path}: it would unpickle arbitrary objects "
                                  f"({_reason(exc, 160)})") from None
        raise CheckpointError(f"corrupt checkpoint {path}: {_reason(exc)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt or truncated checkpoint {path}: {_reason(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises assorted types for tampered archives
        raise CheckpointError(f"unreadable checkpoint {path}: {type(exc).__name__}: {_reason(exc, 160)}") from None


def load_state_dict_file(path: Path) -> dict[str, Any]:
    """Load a checkpoint that holds tensors and plain containers only.

    A pickle that would run code is refused (``weights_only``); a truncated, corrupt or tampered file
    (CRC mismatch) gets one line saying so. A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is
    unwrapped.
    """
    path = Path(path)
    obj = _safe_load(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state_dict of tensors")
    return obj


#: The only globals a pickle of plain numpy arrays needs (numpy 1.x and 2.x module names).
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves numpy's array-reconstruction globals and nothing else (no code can run)."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy arrays)")
        import numpy as np

        if name == "_reconstruct":
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        return getattr(np, name)


def load_numpy_pickle(path: Path) -> Any:
    """Unpickle a file of numpy arrays in plain containers; anything else is a one-line CheckpointError.

    Only ``numpy.ndarray``/``numpy.dtype`` and numpy's array-reconstruction function may be named by
    the pickle, so a tampered file (``os.system``, ``builtins.eval`` ...) is refused before anything
    runs; object arrays (which could smuggle other objects) are refused after loading.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with path.open("rb") as fh:
            obj = _NumpyOnlyUnpickler(fh).load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"refused pickle {path}: {str(exc).splitlines()[0][:160]}") from None
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt pickles raise assorted types
        raise CheckpointError(f"unreadable pickle {path}: {type(exc).__name__}: {_reason(exc, 160)}") from None

    def walk(o: Any) -> None:
        if isinstance(o, np.ndarray):
            if o.dtype.hasobject:
                raise CheckpointError(f"refused pickle {path}: it holds an object array")
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return obj


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``{"state_dict", "meta"}`` atomically (temp file + rename) so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    # Serialised through a buffer: torch.save names the archive after the file it writes to, so saving to
    # the temp name directly would make equal weights give different bytes (and sha256) per process.
    buf = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in state.items()}, "meta": meta}, buf)
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (checkpoint provenance in the ``runs`` table): the store's own hasher."""
    from adv2core.store.writer import sha256_file

    return sha256_file(Path(path))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_checkpoint` (weights_only, CRC-checked)."""
    path = Path(path)
    obj = _safe_load(path)
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
