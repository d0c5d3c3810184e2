"""Real-data loaders (ImageNet-val style folders, ISIC 2018 / HAM10000, CIFAR-10) behind one contract.

Every loader is an :class:`~adv2core.data.types.ImageDataset`: stable string ids (relative file paths,
or ``cifar10-test-00042``), batched ``load`` and per-image failure records. A corrupt, truncated or
non-image file never crashes a batch: it becomes an :class:`~adv2core.data.types.ImageError` and the
batch holds the other images with ids and labels still aligned.

Pre-processing follows the spec (section 1.7 / 5):

* ImageNet ``preprocess='direct'`` (default, what the official attack code did): a *direct* bilinear
  resize to ``image_size`` x ``image_size`` with no aspect preservation. The official code used
  ``cv2.resize(..., INTER_LINEAR)``; we use torchvision's bilinear resize on the uint8 tensor with
  ``antialias=False`` (half-pixel centres, no low-pass filter, like cv2), which matches cv2 to about one
  grey level instead of PIL's antialiased "bilinear", which blurs on downscaling.
* ImageNet ``preprocess='center'``: the usual torchvision evaluation transform, Resize(256) (shorter
  side, antialiased bilinear) + CenterCrop(224), scaled proportionally for another ``image_size``.
* ISIC: CenterCrop(224) with no resize and no normalisation (images smaller than the crop are
  zero-padded by torchvision).
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from adv2core.data.types import Batch, ImageError
from adv2core.errors import ConfigError, DataError, one_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
ISIC_CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
NonRGB = Literal["convert", "error"]
Preprocess = Literal["direct", "center"]


def _check_choice(name: str, value: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, valid))}, got {value!r}")
    return value


def decode_rgb(path: Path, non_rgb: NonRGB = "convert") -> torch.Tensor | str:
    """Decode one file to a uint8 [3,H,W] tensor, or return a one-line reason why it cannot be used.

    Truncated files fail here (PIL's ``LOAD_TRUNCATED_IMAGES`` stays off): a half-grey image would
    silently poison attack statistics.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                if non_rgb == "error":
                    return f"image is mode {im.mode}, expected RGB"
                im = im.convert("RGB")
            return TF.pil_to_tensor(im)
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # PIL raises OSError, UnidentifiedImageError, SyntaxError, ValueError ...
        return one_line(exc)


class _FileDataset:
    """Shared machinery: a list of (id, path, label) and a per-image transform on uint8 tensors."""

    name: str
    num_classes: int
    class_names: list[str]
    image_size: int

    def __init__(self, items: list[tuple[str, Path, int]], transform: Callable[[torch.Tensor], torch.Tensor],
                 non_rgb: NonRGB, num_workers: int) -> None:
        self._items = items
        self._ids = [i for i, _, _ in items]
        self._transform = transform
        self.non_rgb = _check_choice("non_rgb", non_rgb, ("convert", "error"))
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = num_workers

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def path(self, index: int) -> Path:
        return self._items[index][1]

    def _one(self, index: int) -> torch.Tensor | ImageError:
        image_id, path, _ = self._items[index]
        out = decode_rgb(path, self.non_rgb)
        if isinstance(out, str):
            return ImageError(image_id, out, str(path))
        try:
            return self._transform(out)
        except Exception as exc:  # e.g. a degenerate 0-pixel image
            return ImageError(image_id, one_line(exc), str(path))

    def load(self, indices: Sequence[int]) -> Batch:
        """Decode these images (a small thread pool when ``num_workers > 1``); failures go to errors."""
        idx = [int(i) for i in indices]
        for i in idx:
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for {self.name} with {len(self)} images")
        idx = [i % len(self) for i in idx]
        if self.num_workers > 1 and len(idx) > 1:
            with ThreadPoolExecutor(max_workers=min(self.num_workers, len(idx))) as pool:
                results = list(pool.map(self._one, idx))
        else:
            results = [self._one(i) for i in idx]
        good = [(i, r) for i, r in zip(idx, results) if isinstance(r, torch.Tensor)]
        errors = [r for r in results if isinstance(r, ImageError)]
        if good:
            images = torch.stack([r for _, r in good]).float().div_(255.0)
        else:
            images = torch.empty(0, 3, self.image_size, self.image_size)
        labels = torch.tensor([self._items[i][2] for i, _ in good], dtype=torch.int64)
        return Batch(images=images, labels=labels, ids=[self._ids[i] for i, _ in good], errors=errors)


def _direct_resize(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(x: torch.Tensor) -> torch.Tensor:
        return TF.resize(x, [size, size], interpolation=v2.InterpolationMode.BILINEAR, antialias=False)
    return f


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


class ImageFolderDataset(_FileDataset):
    """ImageNet-val style images: class sub-folders, or a flat folder plus a ``filename label`` file.

    Args:
        root: the image folder.
        labels_file: if given, a text file with ``filename label`` per line (whitespace separated,
            ``#`` comments and blank lines skipped). Labels are integers (ImageNet val ground truth)
            or class names (mapped with ``class_to_idx`` or sorted). Without it, each sub-folder of
            ``root`` is a class (sorted names, or ``class_to_idx``), searched recursively.
        preprocess: ``'direct'`` (spec-faithful direct resize) or ``'center'`` (Resize+CenterCrop).
        image_size: output side.
        non_rgb: ``'convert'`` grayscale/RGBA/CMYK/palette to RGB, or ``'error'`` to reject them.
        class_to_idx: optional explicit class-name -> index mapping.
        num_classes: for integer labels, K (default ``max label + 1``).
        class_names: optional names in index order (length K).
        num_workers: decoding threads per ``load`` call.
    """

    def __init__(
        self,
        root: str | Path,
        labels_file: str | Path | None = None,
        preprocess: Preprocess = "direct",
        image_size: int = 224,
        non_rgb: NonRGB = "convert",
        class_to_idx: Mapping[str, int] | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        num_workers: int | None = None,
        name: str = "imagenet",
    ) -> None:
        self.name = name
        self.preprocess = _check_choice("preprocess", preprocess, ("direct", "center"))
        if image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {image_size}")
        self.image_size = image_size
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}")
        if labels_file is None:
            items, names = self._from_subfolders(class_to_idx)
        else:
            items, names = self._from_labels_file(Path(labels_file).expanduser(), class_to_idx, num_classes)
        if not items:
            hint = "" if labels_file is not None else " (expected class sub-folders, or pass labels_file)"
            raise DataError(f"no images found under {self.root}{hint}")
        if class_names is not None:
            names = list(class_names)
        self.class_names = names
        self.num_classes = len(names)
        if max(lab for _, _, lab in items) >= self.num_classes:
            raise DataError(f"labels in {self.root} exceed num_classes={self.num_classes}")
        if self.preprocess == "direct":
            transform: Callable[[torch.Tensor], torch.Tensor] = _direct_resize(image_size)
        else:
            transform = v2.Compose([
                v2.Resize(round(image_size * 256 / 224), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
                v2.CenterCrop(image_size),
            ])
        super().__init__(items, transform, non_rgb, _default_workers() if num_workers is None else num_workers)

    def _from_subfolders(self, class_to_idx: Mapping[str, int] | None) -> tuple[list[tuple[str, Path, int]], list[str]]:
        folders = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if class_to_idx is None:
            mapping = {c: i for i, c in enumerate(folders)}
        else:
            mapping = dict(class_to_idx)
            unknown = [c for c in folders if c not in mapping]
            if unknown:
                raise DataError(f"class folder {unknown[0]!r} under {self.root} is not in class_to_idx")
        items: list[tuple[str, Path, int]] = []
        for c in folders:
            for p in sorted((self.root / c).rglob("*")):
                if _is_image(p):
                    items.append((p.relative_to(self.root).as_posix(), p, mapping[c]))
        k = max(mapping.values()) + 1 if mapping else 0
        names = [""] * k
        for c, i in mapping.items():
            names[i] = c
        return items, names

    def _from_labels_file(self, labels_file: Path, class_to_idx: Mapping[str, int] | None,
                          num_classes: int | None) -> tuple[list[tuple[str, Path, int]], list[str]]:
        if not labels_file.is_file():
            raise DataError(f"labels file not found: {labels_file}")
        rows: list[tuple[str, str]] = []
        for n, line in enumerate(labels_file.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{labels_file}:{n}: expected 'filename label', got {line!r}")
            rows.append((parts[0], parts[1]))
        if all(lab.lstrip("-").isdigit() for _, lab in rows):
            labels = [int(lab) for _, lab in rows]
            if any(lab < 0 for lab in labels):
                raise DataError(f"{labels_file}: negative label")
            k = num_classes if num_classes is not None else (max(labels) + 1 if labels else 0)
            names = [str(i) for i in range(k)]
        else:
            mapping = dict(class_to_idx) if class_to_idx is not None else {
                c: i for i, c in enumerate(sorted({lab for _, lab in rows}))}
            missing = [lab for _, lab in rows if lab not in mapping]
            if missing:
                raise DataError(f"{labels_file}: label {missing[0]!r} is not in class_to_idx")
            labels = [mapping[lab] for _, lab in rows]
            k = max(mapping.values()) + 1
            names = [""] * k
            for c, i in mapping.items():
                names[i] = c
        items = [(Path(f).as_posix(), self.root / f, lab) for (f, _), lab in zip(rows, labels)]
        return items, names


class ISICDataset(_FileDataset):
    """ISIC 2018 Task 3 / HAM10000: ``image`` column + one-hot MEL,NV,BCC,AKIEC,BKL,DF,VASC columns.

    Evaluation transform of the official code: CenterCrop(224), no resize, no normalisation.
    """

    def __init__(self, image_dir: str | Path, labels_csv: str | Path, image_size: int = 224,
                 non_rgb: NonRGB = "convert", num_workers: int | None = None) -> None:
        self.name = "isic"
        self.image_dir = Path(image_dir).expanduser()
        labels_csv = Path(labels_csv).expanduser()
        if not self.image_dir.is_dir():
            raise DataError(f"ISIC image folder not found: {self.image_dir}")
        if not labels_csv.is_file():
            raise DataError(f"ISIC labels CSV not found: {labels_csv}")
        self.image_size = image_size
        self.class_names = list(ISIC_CLASSES)
        self.num_classes = len(ISIC_CLASSES)
        items: list[tuple[str, Path, int]] = []
        with labels_csv.open(newline="") as fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            missing = [c for c in ("image", *ISIC_CLASSES) if c not in cols]
            if missing:
                raise DataError(f"{labels_csv}: missing column(s) {', '.join(missing)}")
            for n, row in enumerate(reader, 2):
                try:
                    onehot = [float(row[c]) for c in ISIC_CLASSES]
                except (TypeError, ValueError):
                    raise DataError(f"{labels_csv}:{n}: non-numeric label value") from None
                if sorted(onehot) != [0.0] * 6 + [1.0]:
                    raise DataError(f"{labels_csv}:{n}: labels are not one-hot: {onehot}")
                rel = self._resolve(row["image"].strip())
                items.append((rel, self.image_dir / rel, onehot.index(1.0)))
        if not items:
            raise DataError(f"{labels_csv}: no rows")
        super().__init__(items, v2.CenterCrop(image_size), non_rgb,
                         _default_workers() if num_workers is None else num_workers)

    def _resolve(self, name: str) -> str:
        """The CSV names images without extension (``ISIC_0024306``); find the file that exists."""
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
            return name
        for ext in (".jpg", ".jpeg", ".png", ".JPG"):
            if (self.image_dir / (name + ext)).is_file():
                return name + ext
        return name + ".jpg"  # missing: reported per image at load time


class CIFAR10Dataset:
    """CIFAR-10 (the python version) through torchvision, never downloading."""

    name = "cifar10"
    image_size = 32

    def __init__(self, root: str | Path, split: str = "test") -> None:
        from torchvision.datasets import CIFAR10

        _check_choice("split", split, ("train", "test"))
        self.split = split
        self.root = Path(root).expanduser()
        try:
            ds = CIFAR10(str(self.root), train=split == "train", download=False)
        except RuntimeError:
            if (self.root / "cifar-10-batches-py").is_dir():
                raise DataError(f"CIFAR-10 files under {self.root / 'cifar-10-batches-py'} are incomplete or "
                                "corrupted (md5 mismatch): re-extract cifar-10-python.tar.gz there") from None
            raise DataError(
                f"CIFAR-10 not found under {self.root}: extract cifar-10-python.tar.gz there "
                f"(so that {self.root / 'cifar-10-batches-py'} exists)") from None
        self._data = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # uint8 [N,3,32,32]
        self._labels = torch.as_tensor(ds.targets, dtype=torch.int64)
        self.class_names = list(ds.classes)
        self.num_classes = len(self.class_names)
        self._ids = [f"cifar10-{split}-{i:05d}" for i in range(len(self._labels))]

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def load(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"index out of range for cifar10/{self.split} with {len(self)} images")
        idx = idx % len(self)
        return Batch(self._data[idx].float().div_(255.0), self._labels[idx].clone(),
                     [self._ids[i] for i in idx.tolist()])


__all__ = ["CIFAR10Dataset", "ISICDataset", "ISIC_CLASSES", "ImageFolderDataset", "decode_rgb"]
