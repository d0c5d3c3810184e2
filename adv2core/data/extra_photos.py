"""The extra real photos of ``imagenet-samples``: a checked label list + readers for the packages holding them.

The list is ``extra_photo_labels.yaml`` (package data, next to this file): per photo its source package,
path inside it, the sha256 of the file that was looked at, ImageNet class index and name, licence and a
one-line justification. Only listed photos are taken, and only when their bytes match the listed sha256.

Sources (all read offline from files already on disk, nothing is installed):

* ``wheel``: ``<dist>-<version>-*.whl`` in the prepare-real folder (preferring the listed version), else
  the installed distribution of that name (``importlib.metadata``);
* ``deb``: ``<name>_<version>_*.deb`` in the folder, read as an ar archive whose ``data.tar.*`` is streamed
  with :mod:`tarfile` (no dpkg needed).

A missing or unreadable source, a missing member or a sha256 mismatch leaves those photos out and is
reported (the caller records it in the manifest); a label list whose names do not match the class indices is an error.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import re
import tarfile
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import yaml

from adv2core.errors import DataError

LABELS_FILE = "extra_photo_labels.yaml"
LABEL_SOURCE = f"checked list adv2core/data/{LABELS_FILE}"
_PHOTO_KEYS = {"id", "source", "member", "sha256", "label", "label_name", "licence", "why"}


def load_label_list(text: str | None = None) -> dict[str, Any]:
    """Parse and check the label list (the packaged one unless ``text`` is given)."""
    from adv2core.models.packaged import imagenet_class_names

    if text is None:
        text = resources.files("adv2core.data").joinpath(LABELS_FILE).read_text()
    data = yaml.safe_load(text)
    names = imagenet_class_names()
    sources, photos = data.get("sources") or {}, data.get("photos") or []
    seen: set[str] = set()
    for p in photos:
        where = f"{LABELS_FILE}: photo {p.get('id')!r}"
        if set(p) != _PHOTO_KEYS:
            raise DataError(f"{where} has keys {sorted(p)}, expected {sorted(_PHOTO_KEYS)}")
        if p["source"] not in sources or sources[p["source"]].get("kind") not in ("wheel", "deb"):
            raise DataError(f"{where}: source {p['source']!r} is not declared (kind wheel or deb)")
        if not (isinstance(p["label"], int) and 0 <= p["label"] < len(names)) or names[p["label"]] != p["label_name"]:
            raise DataError(f"{where}: label {p['label']!r} is not ImageNet class {p['label_name']!r}")
        if p["id"] in seen or not re.fullmatch(r"[0-9a-f]{64}", str(p["sha256"])):
            raise DataError(f"{where}: duplicate id or malformed sha256")
        seen.add(p["id"])
    return {"sources": sources, "photos": photos}


# ------------------------------------------------------------------------------------------ readers
def _wheel_reader(name: str, want_version: str, folder: Path | None):
    """(version, origin, read(member) -> bytes | None) for a wheel in ``folder`` or the installed dist."""
    stem = re.sub(r"[-_.]+", "_", name).lower()
    wheels = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(stem + "-")) if folder else []
    if wheels:
        exact = [w for w in wheels if w.name.lower().startswith(f"{stem}-{want_version}-")]
        wheel = (exact or wheels)[-1]
        version = wheel.name.split("-")[1]

        def read_zip(member: str) -> bytes | None:
            try:
                with zipfile.ZipFile(wheel) as zf:
                    return zf.read(member) if member in zf.namelist() else None
            except zipfile.BadZipFile:
                raise DataError(f"{wheel} is not a valid wheel (zip)") from None

        return version, wheel.name, read_zip
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None

    def read_installed(member: str) -> bytes | None:
        p = Path(dist.locate_file(member))
        return p.read_bytes() if p.is_file() else None

    return dist.version, f"installed {name} {dist.version}", read_installed


class _Bounded:
    """A read-only view of ``size`` bytes of ``f`` from its current position (one ar member)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


def read_deb_members(deb: Path, members: set[str]) -> dict[str, bytes]:
    """The wanted files (paths without a leading ``./``) of a .deb's data archive, streamed."""
    found: dict[str, bytes] = {}
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataError(f"{deb} is not a Debian package (no ar header)")
        while len(found) < len(members):
            head = f.read(60)
            if len(head) < 60:
                break
            name, size = head[:16].decode("ascii", "replace").strip().rstrip("/"), int(head[48:58])
            if not name.startswith("data.tar"):
                f.seek(size + (size & 1), 1)
                continue
            try:
                with tarfile.open(fileobj=_Bounded(f, size), mode="r|*") as tar:
                    for info in tar:
                        path = info.name[2:] if info.name.startswith("./") else info.name
                        if path in members and info.isfile():
                            found[path] = tar.extractfile(info).read()
                            if len(found) == len(members):
                                break
            except (tarfile.TarError, EOFError, OSError) as e:
                raise DataError(f"{deb}: cannot read {name} ({type(e).__name__}: {e})") from None
            break
    return found


def _deb_reader(name: str, want_version: str, folder: Path | None, members: set[str]):
    """(version, origin, read) for ``<name>_<version>_*.deb`` in ``folder``; the members are read at once."""
    debs = sorted(folder.glob(f"{name}_*.deb")) if folder else []
    if not debs:
        return None
    exact = [d for d in debs if d.name.startswith(f"{name}_{want_version}_")]
    deb = (exact or debs)[-1]
    found = read_deb_members(deb, members)
    return deb.name.split("_")[1], deb.name, found.get


# ------------------------------------------------------------------------------------------ collect
def collect_extra_photos(folder: Path | None, label_list: dict[str, Any] | None = None):
    """Read the listed photos that are present and match their sha256.

    Returns ``(taken, sources, skipped)``: ``taken`` a list of ``(photo, source_version, data)`` in list
    order; ``sources`` per source name {kind, version, origin, status} with status ``used`` or
    ``missing`` or ``unreadable``; ``skipped`` a list of {id, reason} for listed photos that were not taken.
    """
    lst = label_list if label_list is not None else load_label_list()
    sources: dict[str, dict[str, Any]] = {}
    readers: dict[str, Any] = {}
    for sname, spec in lst["sources"].items():
        kind, want = spec["kind"], str(spec.get("version", ""))
        try:
            if kind == "wheel":
                r = _wheel_reader(sname, want, folder)
            else:
                r = _deb_reader(sname, want, folder, {p["member"] for p in lst["photos"] if p["source"] == sname})
        except DataError as e:  # e.g. a truncated download: leave its photos out, say why
            sources[sname] = {"kind": kind, "status": "unreadable", "version": None, "origin": str(e),
                              "fetch": spec.get("fetch")}
            continue
        if r is None:
            sources[sname] = {"kind": kind, "status": "missing", "version": None, "origin": None,
                              "fetch": spec.get("fetch")}
            continue
        version, origin, read = r
        readers[sname] = (version, read)
        sources[sname] = {"kind": kind, "status": "used", "version": version, "origin": origin,
                          "checked_version": want}
    taken, skipped = [], []
    for p in lst["photos"]:
        if p["source"] not in readers:
            skipped.append({"id": p["id"], "reason": f"source {p['source']} {sources[p['source']]['status']}"})
            continue
        version, read = readers[p["source"]]
        try:
            data = read(p["member"])
        except DataError as e:
            skipped.append({"id": p["id"], "reason": str(e)})
            continue
        if data is None:
            skipped.append({"id": p["id"], "reason": f"{p['member']} not in {sources[p['source']]['origin']}"})
        elif hashlib.sha256(data).hexdigest() != p["sha256"]:
            skipped.append({"id": p["id"], "reason": f"{p['member']} in {sources[p['source']]['origin']} "
                                                     "differs from the checked file (sha256)"})
        else:
            taken.append((p, version, data))
    return taken, sources, skipped
