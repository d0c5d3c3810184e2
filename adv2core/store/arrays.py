"""Heavy per-image arrays (perturbations, maps, ids) stored as one ``.npz`` per shard-unit.

Perturbations are stored as an int16 delta on the uint8 grid, relative to the round-to-nearest
quantisation of the clean image::

    delta = rint(255 * x_adv) - rint(255 * x)          # int16, within [-255, 255]
    x_adv_q = (rint(255 * x) + delta) / 255             # exact: the image success was decided on

``rint`` is round-half-to-even, the same rule as ``torch.round``, so producers quantising with torch
and readers re-applying with numpy agree bit for bit. Storing the delta (not ``x_adv``) keeps the file
small after compression because most pixels move by at most eps*255 ~ 8 levels.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from adv2core.store.layout import check_component


def quantise(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest uint8 levels (as int16) of an image in [0, 1]."""
    x = np.asarray(x, dtype=np.float32)
    return np.rint(np.clip(x, 0.0, 1.0) * np.float32(255.0)).astype(np.int16)


def encode_perturbation(x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
    """int16 delta between the quantised adversarial and the quantised clean image."""
    x, x_adv = np.asarray(x), np.asarray(x_adv)
    if x.shape != x_adv.shape:
        raise ValueError(f"shape mismatch: x {x.shape} vs x_adv {x_adv.shape}")
    return quantise(x_adv) - quantise(x)


def apply_perturbation(x: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The quantised adversarial image (float32 in [0, 1]) from the clean image and a stored delta."""
    levels = quantise(x).astype(np.int32) + np.asarray(delta, dtype=np.int32)
    if levels.min(initial=0) < 0 or levels.max(initial=0) > 255:
        raise ValueError("delta does not belong to this image: levels leave [0, 255]")
    return (levels.astype(np.float32) / np.float32(255.0)).astype(np.float32)


def npz_bytes(arrays: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """Serialise arrays with ``np.savez_compressed``; returns (bytes, leading length or None).

    Object arrays are refused: loading them needs pickle, which readers never allow.
    """
    clean: dict[str, np.ndarray] = {}
    lengths = set()
    for name, arr in arrays.items():
        check_component("array name", name)
        a = np.asarray(arr)
        if a.dtype == object:
            raise ValueError(f"array {name!r} has dtype object; store strings as a fixed-width str array")
        clean[name] = a
        if a.ndim:
            lengths.add(a.shape[0])
    buf = io.BytesIO()
    np.savez_compressed(buf, **clean)
    return buf.getvalue(), (lengths.pop() if len(lengths) == 1 else None)


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Load every array of one shard's ``.npz`` (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def examples_digest(ids, perturbation: np.ndarray, targets: np.ndarray) -> str:
    """Identity of a set of stored adversarial examples: their ids, exact int16 perturbations and targets.
    Two units with the same digest hold the same examples (PGD's, shared by every interpreter)."""
    import hashlib

    h = hashlib.sha256("\x00".join(ids).encode())
    h.update(np.ascontiguousarray(perturbation).tobytes())
    h.update(np.ascontiguousarray(targets, dtype=np.int64).tobytes())
    return h.hexdigest()
