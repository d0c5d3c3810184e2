"""``imagenet-samples``: 20 real ImageNet validation photos from a PyPI wheel, then checked extra photos.

Source: ``foolbox==3.3.4``'s wheel holds ``foolbox/data/imagenet_NN_<label>.jpg`` (20 ImageNet
validation photos, 512x512 or 1024x683, the label in the file name; foolbox's code is MIT, the photos
fall under ImageNet's research terms). ``make`` fetches the wheel with ``pip download --no-deps`` (no
install: foolbox would pull eagerpy, GitPython, requests, scipy) and calls :func:`prepare_imagenet_samples`
(``adv2 data prepare-real --from DIR``), which copies only those 20 files into
``<data root>/datasets/imagenet-samples/`` with a ``manifest.json``: per photo its id, file, source
package and version, path inside the wheel, sha256, licence note, ImageNet label, label name and label
source. Nothing is downloaded at run time: a missing folder is one DataError naming the command.

After those 20 (same ids, first, in the same order, so presets taking the first N keep their images) come
the extra photos of the checked label list ``extra_photo_labels.yaml`` (see :mod:`.extra_photos`):
scikit-image's wheel, the installed matplotlib and, optionally, Debian's ``opencv-doc`` .deb, each in the
same manifest fields with ``label_source`` naming the list. An extra source that is absent leaves its
photos out; the manifest's ``extra_sources`` and ``extra_skipped`` say which and why.

Pre-processing: torchvision's evaluation transform, Resize(256) on the shorter side (antialiased
bilinear) + CenterCrop(224) (scaled for another ``image_size``), images in [0,1]. The loader checks every
file's sha256 against the manifest when it opens the folder (up to 25 files, ~3 MB: milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

from torchvision.transforms import v2

from adv2core.data.folders import NonRGB, _default_workers, _FileDataset
from adv2core.errors import ConfigError, DataError
from adv2core.paths import cache_dir

NAME = "imagenet-samples"
FOOLBOX_VERSION = "3.3.4"
FOOLBOX_WHEEL = f"foolbox-{FOOLBOX_VERSION}-py3-none-any.whl"
PIP_COMMAND = (f"pip download --no-deps foolbox=={FOOLBOX_VERSION} scikit-image==0.26.0 -d DIR && "
               "adv2 data prepare-real --from DIR")
LICENCE = ("photo from the ImageNet (ILSVRC2012) validation set, redistributed in the foolbox wheel (code MIT); "
           "ImageNet terms: non-commercial research and education only")
_MEMBER = re.compile(r"^foolbox/data/imagenet_(\d\d)_(\d+)\.jpg$")
MANIFEST_VERSION = 2  # 2: extra photos, extra_sources, extra_skipped


def samples_dir() -> Path:
    return cache_dir("datasets") / NAME


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _find_wheel(source: Path) -> Path:
    if source.is_file():
        return source
    hits = sorted(source.glob("foolbox-*.whl"))
    exact = [h for h in hits if h.name == FOOLBOX_WHEEL]
    if not (exact or hits):
        raise DataError(f"no {FOOLBOX_WHEEL} under {source}: pip download --no-deps foolbox=={FOOLBOX_VERSION} -d {source}")
    return (exact or hits)[0]


def _write(dest: Path, fname: str, data: bytes) -> None:
    tmp = dest / f".{fname}.tmp-{os.getpid()}"
    tmp.write_bytes(data)
    os.replace(tmp, dest / fname)


def prepare_imagenet_samples(source: str | Path, dest: str | Path | None = None,
                             label_list: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Extract the 20 labelled ImageNet photos from the foolbox wheel (file or folder holding it), then the
    checked extra photos found in that folder or installed (``label_list``: a parsed list, for tests)."""
    from adv2core.data.extra_photos import LABEL_SOURCE, collect_extra_photos
    from adv2core.models.packaged import imagenet_class_names

    source = Path(source).expanduser()
    wheel = _find_wheel(source)
    dest = Path(dest) if dest is not None else samples_dir()
    dest.mkdir(parents=True, exist_ok=True)
    m = re.match(r"foolbox-([^-]+)-", wheel.name)
    version = m.group(1) if m else "unknown"
    names = imagenet_class_names()
    entries = []
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = sorted(n for n in zf.namelist() if _MEMBER.match(n))
            for member in members:
                idx, label = _MEMBER.match(member).groups()
                data = zf.read(member)
                fname = Path(member).name
                _write(dest, fname, data)
                entries.append({
                    "id": f"foolbox-imagenet-{idx}", "file": fname, "source_package": "foolbox",
                    "source_version": version, "source_path": member, "sha256": _sha256(data), "licence": LICENCE,
                    "label": int(label), "label_name": names[int(label)], "label_source": "file name (imagenet_NN_<label>.jpg)",
                })
    except zipfile.BadZipFile:
        raise DataError(f"{wheel} is not a valid wheel (zip)") from None
    if not entries:
        raise DataError(f"{wheel} holds no foolbox/data/imagenet_*.jpg photos")
    taken, sources, skipped = collect_extra_photos(source if source.is_dir() else source.parent, label_list)
    for photo, version, data in taken:
        fname = f"{photo['id']}{Path(photo['member']).suffix.lower()}"
        _write(dest, fname, data)
        entries.append({
            "id": photo["id"], "file": fname, "source_package": photo["source"], "source_version": version,
            "source_path": photo["member"], "sha256": _sha256(data), "licence": photo["licence"],
            "label": photo["label"], "label_name": names[photo["label"]], "label_source": LABEL_SOURCE,
            "label_note": photo["why"],
        })
    manifest = {"dataset": NAME, "manifest_version": MANIFEST_VERSION, "num_classes": 1000,
                "preprocess": "Resize(256, antialias) + CenterCrop(224)", "images": entries,
                "extra_sources": sources, "extra_skipped": skipped}
    tmp = dest / f".manifest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, dest / "manifest.json")
    return dest, manifest


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / "manifest.json"
    if not path.is_file():
        raise DataError(f"{NAME} is not prepared (no {path}): run `make`, or {PIP_COMMAND}")
    try:
        manifest = json.loads(path.read_text())
        images = manifest["images"]
        assert isinstance(images, list) and images
    except (ValueError, KeyError, AssertionError, TypeError):
        raise DataError(f"{path} is not a valid {NAME} manifest: rerun `make` (or {PIP_COMMAND})") from None
    return manifest


class ImageNetSamplesDataset(_FileDataset):
    """The prepared photos as an :class:`~adv2core.data.types.ImageDataset` (ids from the manifest)."""

    def __init__(self, root: str | Path | None = None, image_size: int = 224, non_rgb: NonRGB = "convert",
                 num_workers: int | None = None, verify: bool = True) -> None:
        from adv2core.models.packaged import imagenet_class_names

        if image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {image_size}")
        self.name = NAME
        self.root = Path(root).expanduser() if root is not None else samples_dir()
        self.manifest = read_manifest(self.root)
        self.image_size = image_size
        self.class_names = list(imagenet_class_names())
        self.num_classes = len(self.class_names)
        items = []
        for e in self.manifest["images"]:
            p = self.root / e["file"]
            if verify:
                if not p.is_file():
                    raise DataError(f"{NAME}: {p} is missing: rerun `make` (or {PIP_COMMAND})")
                if _sha256(p.read_bytes()) != e["sha256"]:
                    raise DataError(f"{NAME}: {p} does not match its manifest sha256: rerun `make` (or {PIP_COMMAND})")
            items.append((e["id"], p, int(e["label"])))
        transform = v2.Compose([
            v2.Resize(round(image_size * 256 / 224), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(image_size),
        ])
        super().__init__(items, transform, non_rgb, _default_workers() if num_workers is None else num_workers)
