"""Target classes and target maps m_t (spec 1.5, 1.6, 3.1).

Every random draw is seeded *per image* from ``(seed, image_id)``, so a sample's target class, target
image and shape never depend on which other images share its batch or shard.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from adv2core.attacks.config import ShapeConfig
from adv2core.errors import ConfigError
from adv2core.interpreters.base import Interpreter


def image_seed(seed: int, image_id: str, purpose: str) -> int:
    """A 63-bit seed for one (run seed, image, purpose) triple: independent streams per purpose."""
    h = hashlib.sha256(f"adv2:{purpose}:{seed}:{image_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def image_rng(seed: int, image_id: str, purpose: str) -> np.random.Generator:
    return np.random.default_rng(image_seed(seed, image_id, purpose))


def target_classes(labels: torch.Tensor, ids: Sequence[str], num_classes: int, seed: int = 0) -> torch.Tensor:
    """c_t = (y + U{1..K-1}) mod K, the offset drawn from a generator seeded by (seed, image_id)."""
    if num_classes < 2:
        raise ConfigError(f"a targeted attack needs at least 2 classes, got {num_classes}")
    if len(ids) != labels.shape[0]:
        raise ConfigError(f"target_classes: {len(ids)} ids for {labels.shape[0]} labels")
    off = [int(image_rng(seed, i, "target-class").integers(1, num_classes)) for i in ids]
    off_t = torch.tensor(off, dtype=torch.long, device=labels.device)
    return (labels.long() + off_t) % num_classes


# ----------------------------------------------------------------------------------------------------
# Target maps
# ----------------------------------------------------------------------------------------------------
def benign_maps(interpreter: Interpreter, x: torch.Tensor, y: torch.Tensor, ids: Sequence[str] | None = None) -> torch.Tensor:
    """The main setting: the interpreter's evaluation map of the benign image for its true class."""
    return interpreter.explain(x, y, ids=list(ids) if ids is not None else None)


@torch.no_grad()
def pick_target_images(
    pool_pred: torch.Tensor,
    pool_labels: torch.Tensor,
    target: torch.Tensor,
    ids: Sequence[str],
    seed: int = 0,
) -> torch.Tensor:
    """Per attacked image, the index of a pool image *correctly* classified as its c_t (-1 if none).

    Spec 1.6 item 2 (the official code draws unseeded; here a per-image seeded generator).
    """
    ok = (pool_pred.cpu() == pool_labels.cpu()).numpy()
    labels = pool_labels.cpu().numpy()
    out = []
    for t, image_id in zip(target.cpu().tolist(), ids):
        cand = np.flatnonzero(ok & (labels == t))
        out.append(int(image_rng(seed, image_id, "target-image").choice(cand)) if cand.size else -1)
    return torch.tensor(out, dtype=torch.long)


def target_image_maps(
    interpreter: Interpreter,
    pool_images: torch.Tensor,
    pool_labels: torch.Tensor,
    pool_ids: Sequence[str],
    target: torch.Tensor,
    ids: Sequence[str],
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps [N,1,h,w], chosen pool index [N]): the map, for c_t, of a pool image classified as c_t.

    Samples without any such pool image get an all-NaN map and index -1; callers mark them as errors.
    """
    model = interpreter.model
    dev = target.device
    with torch.no_grad():
        pred = torch.cat([model(pool_images[i : i + 256].to(dev)).argmax(1) for i in range(0, len(pool_images), 256)])
    idx = pick_target_images(pred, pool_labels, target, ids, seed)
    have = idx >= 0
    side = interpreter.map_size(pool_images.shape[-1])
    maps = torch.full((len(ids), 1, side, side), math.nan, device=dev)
    if bool(have.any()):
        sel = idx[have]
        chosen = pool_images[sel].to(dev)
        m = interpreter.explain(chosen, target[have.to(dev)], ids=[pool_ids[i] for i in sel.tolist()])
        maps[have.to(dev)] = m.to(maps.dtype)
    return maps, idx


def _shape_canvas(rng: np.random.Generator, cfg: ShapeConfig) -> np.ndarray:
    """One random rectangle or circle on a ``canvas`` square: inside ~U(0.9,1), outside ~U(0,0.1)."""
    s = cfg.canvas
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    cx, cy = rng.uniform(*cfg.centre, size=2)
    if rng.random() < 0.5:
        r = rng.uniform(*cfg.radius)
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    else:
        hw, hh = rng.uniform(*cfg.half_side, size=2)
        th = math.radians(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
        u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
        v = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
        inside = (np.abs(u) <= hw) & (np.abs(v) <= hh)
    hi = rng.uniform(*cfg.inside, size=(s, s))
    lo = rng.uniform(*cfg.outside, size=(s, s))
    return np.where(inside, hi, lo).astype(np.float32)


def shape_maps(
    ids: Sequence[str], side: int, *, seed: int = 0, invert: bool = False, cfg: ShapeConfig | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random-shape target maps [N,1,side,side] (spec 3.1), resized bilinearly to the map resolution.

    ``invert`` gives 1 - shape, the MASK convention (its map keeps pixels; saliency is 1 - m).
    """
    cfg = cfg or ShapeConfig()
    canv = np.stack([_shape_canvas(image_rng(seed, i, "shape"), cfg) for i in ids])[:, None]
    t = torch.from_numpy(canv)
    t = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)
    return (1 - t if invert else t).to(device)


def check_target_map(target_map: torch.Tensor, n: int, side: int) -> torch.Tensor:
    """Validate a user-supplied target map batch (shape [N,1,side,side], float)."""
    if target_map.dim() == 3:
        target_map = target_map.unsqueeze(1)
    if tuple(target_map.shape) != (n, 1, side, side):
        raise ConfigError(
            f"target map must have shape [{n},1,{side},{side}] (the interpreter's native resolution), got {list(target_map.shape)}"
        )
    if not target_map.dtype.is_floating_point:
        raise ConfigError(f"target map must be a float tensor, got {target_map.dtype}")
    return target_map
