"""The embedded procedural dataset: one localised shape decides the class, everything else is clutter.

Why procedural: the benchmark must run end to end without downloads, and a dataset whose class is
decided by *one object with a known mask* gives interpreters a ground truth to be judged against
(a faithful map should light up the object; an ADV^2 attack moves the map away from it).

Design (generator version :data:`GENERATOR_VERSION`):

* background: a random base colour + bilinearly upsampled low-resolution noise + a random sinusoidal
  grating + per-pixel noise;
* distractors: small Gaussian blobs and thin strokes, drawn independently of the class and with lower
  contrast than the object;
* object: one of :data:`SHAPE_NAMES` at a random position, scale, mild aspect jitter, small rotation
  (<= 12 deg, so that square/diamond and cross/x-cross stay distinct) and random colour, painted opaquely
  on top (2x super-sampled edges). Colour and position are independent of the class, so only the shape
  decides it.

Generation is vectorised over images (coordinate grids, one loop per class) and deterministic for
``(seed, split, class)`` through CPU :class:`torch.Generator` streams. Images are interleaved by class
(image ``i`` has class ``i % K``), so every contiguous shard is class balanced.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from adv2core.errors import ConfigError
from adv2core.paths import cache_dir
from adv2core.data.types import Batch

#: Bump whenever the pixels a config produces change; part of the cache key and of the manifest.
GENERATOR_VERSION = 1

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")

_Shape = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _box(u: torch.Tensor, v: torch.Tensor, u0: float, u1: float, v0: float, v1: float) -> torch.Tensor:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _plus(u: torch.Tensor, v: torch.Tensor, half_width: float, half_len: float) -> torch.Tensor:
    return ((u.abs() <= half_width) & (v.abs() <= half_len)) | ((v.abs() <= half_width) & (u.abs() <= half_len))


# Every shape lives in normalised object coordinates (u right, v down), inside roughly [-1.2, 1.2]^2.
_SHAPES: dict[str, _Shape] = {
    "disk": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: (u.abs() <= 0.82) & (v.abs() <= 0.82),
    "triangle": lambda u, v: (v <= 0.75) & (u.abs() <= (v + 1.0) / 1.75),
    "cross": lambda u, v: _plus(u, v, 0.3, 1.0),
    "ring": lambda u, v: ((u * u + v * v) <= 1.0) & ((u * u + v * v) >= 0.55**2),
    "diamond": lambda u, v: u.abs() + v.abs() <= 1.08,
    "bar-pair": lambda u, v: (u.abs() <= 1.0) & (((v - 0.55).abs() <= 0.22) | ((v + 0.55).abs() <= 0.22)),
    "l-shape": lambda u, v: _box(u, v, -0.9, -0.35, -1.0, 0.9) | _box(u, v, -0.9, 0.9, 0.35, 0.9),
    "x-cross": lambda u, v: _plus((u + v) / math.sqrt(2.0), (u - v) / math.sqrt(2.0), 0.26, 1.1),
    "half-disk": lambda u, v: (v >= -0.4) & (u * u + (v + 0.4) ** 2 <= 1.2**2),
    "t-shape": lambda u, v: _box(u, v, -0.95, 0.95, -0.9, -0.45) | _box(u, v, -0.25, 0.25, -0.9, 0.95),
    "hourglass": lambda u, v: (v.abs() <= 1.0) & (u.abs() <= 0.9 * v.abs() + 0.06),
}
#: Class names in class-index order; a config with ``num_classes = K`` uses the first K.
SHAPE_NAMES: tuple[str, ...] = tuple(_SHAPES)


class EmbeddedDataConfig(BaseModel):
    """What determines the embedded dataset's pixels (and therefore its cache key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    image_size: int = Field(64, ge=16, le=512)
    num_classes: int = Field(8, ge=2, le=len(SHAPE_NAMES))
    train_per_class: int = Field(400, ge=1)
    test_per_class: int = Field(100, ge=1)

    def per_class(self, split: str) -> int:
        return {"train": self.train_per_class, "test": self.test_per_class}[_check_split(split)]

    @property
    def class_names(self) -> list[str]:
        return list(SHAPE_NAMES[: self.num_classes])

    def cache_key(self) -> str:
        """Short content key: the config plus the generator version."""
        blob = json.dumps({"cfg": self.model_dump(), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} for the embedded dataset; valid: {', '.join(SPLITS)}")
    return split


def _stream_seed(seed: int, split: str, cls: int) -> int:
    """An independent 63-bit seed per (seed, split, class), so streams never overlap."""
    h = hashlib.sha256(f"adv2-embedded:v{GENERATOR_VERSION}:{seed}:{split}:{cls}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _u(g: torch.Generator, shape: Sequence[int], lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=g)


def _render_class(cls: int, n: int, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of class ``cls``: (images uint8 [n,3,S,S], masks uint8 [n,1,S,S]), all in batch."""
    s = size
    scale = s / 64.0  # pixel-valued parameters are tuned at 64 px and scale with the image
    coords = torch.arange(s, dtype=torch.float32) + 0.5
    yy, xx = coords.view(1, s, 1), coords.view(1, 1, s)  # broadcast to [n,S,S]

    # --- background: base colour, smooth noise, a grating -------------------------------------
    bright_obj = torch.rand(n, generator=g) < 0.5  # object brighter than the background, or darker
    base = torch.where(bright_obj[:, None], _u(g, (n, 3), 0.12, 0.45), _u(g, (n, 3), 0.55, 0.88))
    low = max(4, s // 8)
    noise = 0.05 * torch.randn(n, 1, low, low, generator=g) + 0.03 * torch.randn(n, 3, low, low, generator=g)
    noise = F.interpolate(noise, size=(s, s), mode="bilinear", align_corners=False)
    theta, freq = _u(g, (n, 1, 1), 0.0, math.pi), _u(g, (n, 1, 1), 2.0, 7.0)
    phase, amp = _u(g, (n, 1, 1), 0.0, 2 * math.pi), _u(g, (n, 1, 1), 0.02, 0.07)
    grating = amp * torch.sin(2 * math.pi * freq * (xx * theta.cos() + yy * theta.sin()) / s + phase)
    img = base[:, :, None, None] + noise + grating[:, None]

    # --- distractors: blobs and strokes, class independent, low contrast -----------------------
    nb = 6
    present = (torch.rand(n, nb, 1, 1, generator=g) < 0.7).float()
    bc = _u(g, (n, nb, 2, 1, 1), 2.0, s - 2.0)
    sig = _u(g, (n, nb, 1, 1), 1.0, 2.5) * scale
    blob = present * torch.exp(-((xx.unsqueeze(1) - bc[:, :, 0]) ** 2 + (yy.unsqueeze(1) - bc[:, :, 1]) ** 2) / (2 * sig**2))
    bsign = torch.where(torch.rand(n, nb, generator=g) < 0.5, -1.0, 1.0)
    bamp = bsign[..., None] * _u(g, (n, nb, 1), 0.06, 0.14) * _u(g, (n, nb, 3), 0.6, 1.0)  # [n,nb,3]
    img = img + torch.einsum("nkc,nkhw->nchw", bamp, blob)

    ns = 2
    a = _u(g, (n, ns, 2), 2.0, s - 2.0)
    ang = _u(g, (n, ns), 0.0, 2 * math.pi)
    length = _u(g, (n, ns), 0.12, 0.3) * s
    d = torch.stack([ang.cos(), ang.sin()], -1) * length[..., None]  # segment vector [n,ns,2]
    px, py = xx.unsqueeze(1) - a[..., 0, None, None], yy.unsqueeze(1) - a[..., 1, None, None]
    t = ((px * d[..., 0, None, None] + py * d[..., 1, None, None]) / (length**2)[..., None, None]).clamp(0, 1)
    dist = torch.hypot(px - t * d[..., 0, None, None], py - t * d[..., 1, None, None])
    width = _u(g, (n, ns, 1, 1), 0.4, 0.9) * scale
    stroke = (1.0 - (dist - width)).clamp(0, 1)
    ssign = torch.where(torch.rand(n, ns, generator=g) < 0.5, -1.0, 1.0)
    samp = ssign[..., None] * _u(g, (n, ns, 1), 0.06, 0.13) * _u(g, (n, ns, 3), 0.6, 1.0)
    img = img + torch.einsum("nkc,nkhw->nchw", samp, stroke)

    # --- the object: shape on a 2x super-sampled grid ------------------------------------------
    r = _u(g, (n,), 0.13, 0.22) * s
    rx, ry = r * _u(g, (n,), 0.9, 1.1), r * _u(g, (n,), 0.9, 1.1)
    margin = 1.25 * torch.maximum(rx, ry) + 1.0
    cx = margin + torch.rand(n, generator=g) * (s - 2 * margin)
    cy = margin + torch.rand(n, generator=g) * (s - 2 * margin)
    rot = _u(g, (n,), -12.0, 12.0) * (math.pi / 180.0)
    hi = (torch.arange(2 * s, dtype=torch.float32) + 0.5) / 2.0
    dx = hi.view(1, 1, 2 * s) - cx.view(n, 1, 1)
    dy = hi.view(1, 2 * s, 1) - cy.view(n, 1, 1)
    c, sn = rot.cos().view(n, 1, 1), rot.sin().view(n, 1, 1)
    u = (c * dx + sn * dy) / rx.view(n, 1, 1)
    v = (-sn * dx + c * dy) / ry.view(n, 1, 1)
    inside = _SHAPES[SHAPE_NAMES[cls]](u, v).float().unsqueeze(1)  # [n,1,2S,2S]
    alpha = F.avg_pool2d(inside, 2)  # [n,1,S,S] edge coverage
    mask = alpha >= 0.5

    sign = torch.where(bright_obj, 1.0, -1.0)[:, None]
    colour = base + sign * _u(g, (n, 3), 0.22, 0.5)
    shade = 1.0 + 0.06 * (u[:, ::2, ::2] * _u(g, (n, 1, 1), -1, 1) + v[:, ::2, ::2] * _u(g, (n, 1, 1), -1, 1))
    obj = colour[:, :, None, None] * shade.clamp(0.85, 1.15).unsqueeze(1)
    img = img * (1 - alpha) + obj * alpha

    img = img + _u(g, (n, 1, 1, 1), 0.01, 0.03) * torch.randn(n, 3, s, s, generator=g)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, mask.to(torch.uint8)


def generate_split(cfg: EmbeddedDataConfig, split: str) -> dict[str, torch.Tensor]:
    """Generate one split in memory: ``images`` uint8 [N,3,S,S], ``masks`` uint8 [N,1,S,S], ``labels`` int64."""
    _check_split(split)
    k, per, s = cfg.num_classes, cfg.per_class(split), cfg.image_size
    images = torch.empty(per * k, 3, s, s, dtype=torch.uint8)
    masks = torch.empty(per * k, 1, s, s, dtype=torch.uint8)
    labels = torch.arange(per * k, dtype=torch.int64) % k
    chunk = max(1, (1 << 22) // (s * s))  # bounds the [n, 6, S, S] intermediates (~100 MB) at large S
    for cls in range(k):
        g = torch.Generator(device="cpu").manual_seed(_stream_seed(cfg.seed, split, cls))
        for start in range(0, per, chunk):
            m = min(chunk, per - start)
            im, ma = _render_class(cls, m, s, g)
            rows = torch.arange(start, start + m) * k + cls
            images[rows], masks[rows] = im, ma
    return {"images": images, "masks": masks, "labels": labels}


# --- cache ----------------------------------------------------------------------------------------

def _content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the stored tensors (names, dtypes, shapes, bytes) in a fixed order."""
    h = hashlib.sha256()
    for name in ("images", "masks", "labels"):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _expected_manifest(cfg: EmbeddedDataConfig) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "image_size": cfg.image_size,
        "num_classes": cfg.num_classes,
        "class_names": cfg.class_names,
        "counts": {sp: cfg.per_class(sp) * cfg.num_classes for sp in SPLITS},
        "per_class": {sp: cfg.per_class(sp) for sp in SPLITS},
        "config": cfg.model_dump(),
    }


def embedded_cache_path(cfg: EmbeddedDataConfig) -> Path:
    """Where this config's cache lives: ``cache_dir('datasets') / 'embedded-<key>'``."""
    return cache_dir("datasets") / f"embedded-{cfg.cache_key()}"


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write to a unique temp name then rename, so concurrent workers never read half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_split_file(path: Path) -> dict[str, torch.Tensor] | None:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or tampered file: the caller regenerates
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), torch.Tensor) for k in ("images", "masks", "labels")):
        return None
    return data


def _read_manifest(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _dataset_digest(split_sha: dict) -> str:
    """One digest for the whole dataset: what checkpoints and result configs are keyed by."""
    return hashlib.sha256("".join(f"{sp}:{split_sha.get(sp)};" for sp in SPLITS).encode()).hexdigest()


def _ensure(cfg: EmbeddedDataConfig, want: str | None = None) -> tuple[Path, dict, dict[str, torch.Tensor] | None]:
    """Validate or (re)build the cache; return (dir, manifest, tensors of split ``want`` if asked)."""
    root = embedded_cache_path(cfg)
    root.mkdir(parents=True, exist_ok=True)
    expected = _expected_manifest(cfg)
    manifest = _read_manifest(root / "manifest.json")
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    ok = manifest is not None and all(manifest.get(k) == v for k, v in expected.items())
    ok = ok and manifest.get("content_sha256") == _dataset_digest(manifest.get("sha256", {}))
    if ok:
        for sp in SPLITS:
            data = _load_split_file(root / f"{sp}.pt")
            if data is None or _content_sha256(data) != manifest.get("sha256", {}).get(sp):
                ok = False
                break
            loaded[sp] = data
    if not ok:
        loaded = {sp: generate_split(cfg, sp) for sp in SPLITS}
        manifest = dict(expected, files={sp: f"{sp}.pt" for sp in SPLITS},
                        sha256={sp: _content_sha256(loaded[sp]) for sp in SPLITS})
        manifest["content_sha256"] = _dataset_digest(manifest["sha256"])
        for sp in SPLITS:
            _atomic_write(root / f"{sp}.pt", lambda p, d=loaded[sp]: torch.save(d, p))
        _atomic_write(root / "manifest.json", lambda p: p.write_text(json.dumps(manifest, indent=2, sort_keys=True)))
    assert manifest is not None
    return root, manifest, (loaded[want] if want else None)


def prepare_embedded(cfg: EmbeddedDataConfig | None = None) -> tuple[Path, dict]:
    """Generate (or reuse) the cached embedded dataset; returns (cache folder, manifest).

    The cache is reused only when the manifest matches the config and generator version and every
    stored tensor still hashes to the manifest's sha256; otherwise it is regenerated in place.
    """
    root, manifest, _ = _ensure(cfg or EmbeddedDataConfig())
    return root, manifest


class EmbeddedDataset:
    """One split of the embedded dataset (an :class:`~adv2core.data.types.ImageDataset`), masks included."""

    name = "embedded"

    def __init__(self, split: str = "test", cfg: EmbeddedDataConfig | None = None) -> None:
        self.cfg = cfg or EmbeddedDataConfig()
        self.split = _check_split(split)
        self.root, self.manifest, data = _ensure(self.cfg, self.split)
        assert data is not None
        self._images: torch.Tensor = data["images"]
        self._masks: torch.Tensor = data["masks"]
        self._labels: torch.Tensor = data["labels"]
        self.num_classes = self.cfg.num_classes
        self.class_names = self.cfg.class_names
        self.image_size = self.cfg.image_size
        self._ids = [f"emb-s{self.cfg.seed}-{split}-{i:06d}" for i in range(len(self._labels))]

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def load(self, indices: Sequence[int] | torch.Tensor) -> Batch:
        """A batch of these indices (never fails per image: the data is in memory and verified)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"index out of range for embedded/{self.split} with {len(self)} images")
        idx = idx % max(len(self), 1)
        return Batch(
            images=self._images[idx].float().div_(255.0),
            labels=self._labels[idx].clone(),
            ids=[self._ids[i] for i in idx.tolist()],
            masks=self._masks[idx].float(),
        )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whole split for fast training: (images float [N,3,S,S] in [0,1], labels int64 [N], masks float [N,1,S,S])."""
        return self._images.float().div_(255.0), self._labels.clone(), self._masks.float()

    def __repr__(self) -> str:
        return f"EmbeddedDataset(split={self.split!r}, n={len(self)}, cfg={self.cfg!r})"


__all__ = [
    "GENERATOR_VERSION",
    "SHAPE_NAMES",
    "EmbeddedDataConfig",
    "EmbeddedDataset",
    "embedded_cache_path",
    "generate_split",
    "prepare_embedded",
]
