"""imagenet-samples' extra photos: the checked label list, and prepare-real on small fake packages.

Fast (no model, no real package): the fakes are a foolbox-like wheel, a wheel and a Debian .deb built here
with a few generated JPEG/PNG files, and a label list naming some of their members.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from adv2core.data.extra_photos import LABEL_SOURCE, LABELS_FILE, load_label_list, read_deb_members
from adv2core.data.imagenet_samples import ImageNetSamplesDataset, prepare_imagenet_samples
from adv2core.errors import DataError
from adv2core.models.packaged import imagenet_class_names

PACKAGED = Path(__file__).resolve().parents[1] / "adv2core" / "data" / LABELS_FILE


def _image(color: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, fmt)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _ar_member(name: str, data: bytes) -> bytes:
    head = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return head + data + (b"\n" if len(data) % 2 else b"")


def _tar_xz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _deb(path: Path, members: dict[str, bytes]) -> Path:
    path.write_bytes(b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n")
                     + _ar_member("control.tar.xz", _tar_xz({"./control": b"Package: fake-doc\n"}))
                     + _ar_member("data.tar.xz", _tar_xz(members)))
    return path


# ------------------------------------------------------------------------------- the packaged list
def test_packaged_label_list_indices_match_the_class_names():
    names = imagenet_class_names()
    lst = load_label_list()
    assert len(lst["photos"]) >= 5
    raw = yaml.safe_load(PACKAGED.read_text())
    for p in raw["photos"]:
        assert names[p["label"]] == p["label_name"], p["id"]
        assert p["source"] in raw["sources"] and p["licence"] and p["why"] and len(p["sha256"]) == 64
    # the classes looked up by hand (torchvision's ImageNet-1k order)
    assert {p["id"]: p["label"] for p in raw["photos"]} == {
        "skimage-chelsea": 281, "skimage-coffee": 967, "skimage-camera": 872,
        "matplotlib-grace-hopper": 652, "opencv-doc-orange": 950}


def test_a_wrong_index_or_a_duplicate_is_refused():
    raw = yaml.safe_load(PACKAGED.read_text())
    raw["photos"][0]["label"] += 1  # name no longer matches the index
    with pytest.raises(DataError, match="is not ImageNet class"):
        load_label_list(yaml.safe_dump(raw))
    raw = yaml.safe_load(PACKAGED.read_text())
    raw["photos"].append(dict(raw["photos"][0]))
    with pytest.raises(DataError, match="duplicate"):
        load_label_list(yaml.safe_dump(raw))


# ------------------------------------------------------------------------------- prepare on fakes
@pytest.fixture()
def fake_source(tmp_path):
    """A folder with a foolbox-like wheel (2 photos), a fake wheel and a fake .deb, and a label list."""
    src = tmp_path / "dl"
    src.mkdir()
    _wheel(src / "foolbox-3.3.4-py3-none-any.whl", {
        "foolbox/data/imagenet_00_243.jpg": _image((200, 10, 10)),
        "foolbox/data/imagenet_01_559.jpg": _image((10, 200, 10)),
        "foolbox/data/mnist_00_7.png": _image((0, 0, 0), "PNG"),
    })
    cat, cup, other = _image((120, 90, 40), "PNG"), _image((90, 40, 20)), _image((1, 2, 3))
    _wheel(src / "adv2_fake_photos-1.0-py3-none-any.whl", {
        "fakepkg/data/cat.png": cat, "fakepkg/data/cup.jpg": cup, "fakepkg/data/unlisted.jpg": other,
        "fakepkg/data/changed.jpg": _image((9, 9, 9)),
    })
    orange = _image((250, 160, 0))
    _deb(src / "fake-doc_2.0-1_all.deb", {"./usr/share/doc/fake-doc/orange.jpg": orange,
                                          "./usr/share/doc/fake-doc/other.jpg": other})
    photo = {"licence": "CC0 (fake)", "why": "test photo"}
    text = yaml.safe_dump({
        "sources": {"adv2-fake-photos": {"kind": "wheel", "version": "1.0"},
                    "fake-doc": {"kind": "deb", "version": "2.0-1"},
                    "absent-doc": {"kind": "deb", "version": "1"}},
        "photos": [
            {"id": "fake-cat", "source": "adv2-fake-photos", "member": "fakepkg/data/cat.png", "sha256": _sha(cat),
             "label": 281, "label_name": "tabby", **photo},
            {"id": "fake-changed", "source": "adv2-fake-photos", "member": "fakepkg/data/changed.jpg",
             "sha256": _sha(b"the file that was looked at"), "label": 967, "label_name": "espresso", **photo},
            {"id": "fake-orange", "source": "fake-doc", "member": "usr/share/doc/fake-doc/orange.jpg",
             "sha256": _sha(orange), "label": 950, "label_name": "orange", **photo},
            {"id": "fake-cup", "source": "adv2-fake-photos", "member": "fakepkg/data/cup.jpg", "sha256": _sha(cup),
             "label": 968, "label_name": "cup", **photo},
            {"id": "absent-tripod", "source": "absent-doc", "member": "x/tripod.jpg", "sha256": "0" * 64,
             "label": 872, "label_name": "tripod", **photo},
        ],
    })
    return src, load_label_list(text)


def test_prepare_adds_listed_extras_after_the_foolbox_photos(tmp_path, fake_source):
    src, lst = fake_source
    dest, manifest = prepare_imagenet_samples(src, tmp_path / "out", label_list=lst)
    entries = manifest["images"]
    assert [e["id"] for e in entries] == ["foolbox-imagenet-00", "foolbox-imagenet-01", "fake-cat", "fake-orange",
                                          "fake-cup"]
    for e in entries[:2]:
        assert e["label_source"].startswith("file name") and e["source_package"] == "foolbox"
    for e in entries[2:]:
        assert e["label_source"] == LABEL_SOURCE and e["label_note"] == "test photo" and e["licence"] == "CC0 (fake)"
        assert _sha((dest / e["file"]).read_bytes()) == e["sha256"]
    by_id = {e["id"]: e for e in entries}
    assert by_id["fake-cat"]["source_package"] == "adv2-fake-photos" and by_id["fake-cat"]["source_version"] == "1.0"
    assert by_id["fake-cat"]["source_path"] == "fakepkg/data/cat.png" and by_id["fake-cat"]["label_name"] == "tabby"
    assert by_id["fake-orange"]["source_version"] == "2.0-1" and by_id["fake-orange"]["label"] == 950
    # the unlisted members of the same packages are not taken; the altered one is skipped with its reason
    files = sorted(p.name for p in dest.iterdir())
    assert not any("unlisted" in f or "other" in f or "changed" in f or "mnist" in f for f in files)
    skipped = {s["id"]: s["reason"] for s in manifest["extra_skipped"]}
    assert set(skipped) == {"fake-changed", "absent-tripod"}
    assert "sha256" in skipped["fake-changed"] and "missing" in skipped["absent-tripod"]
    src_status = {k: v["status"] for k, v in manifest["extra_sources"].items()}
    assert src_status == {"adv2-fake-photos": "used", "fake-doc": "used", "absent-doc": "missing"}
    assert json.loads((dest / "manifest.json").read_text()) == manifest
    # the loader reads the mixed folder (PNG and JPEG) in manifest order
    ds = ImageNetSamplesDataset(root=dest, num_workers=0)
    batch = ds.load(range(len(ds)))
    assert batch.ids == [e["id"] for e in entries] and batch.labels.tolist() == [243, 559, 281, 950, 968]
    assert batch.images.shape == (5, 3, 224, 224)


def test_a_truncated_deb_leaves_only_its_photos_out(tmp_path, fake_source):
    src, lst = fake_source
    deb = src / "fake-doc_2.0-1_all.deb"
    deb.write_bytes(deb.read_bytes()[:-200])
    _, manifest = prepare_imagenet_samples(src, tmp_path / "out", label_list=lst)
    assert [e["id"] for e in manifest["images"]][2:] == ["fake-cat", "fake-cup"]
    assert manifest["extra_sources"]["fake-doc"]["status"] == "unreadable"
    assert {s["id"] for s in manifest["extra_skipped"]} == {"fake-changed", "fake-orange", "absent-tripod"}


def test_prepare_without_the_extra_packages_keeps_the_foolbox_photos(tmp_path, fake_source):
    src, lst = fake_source
    for p in src.iterdir():
        if not p.name.startswith("foolbox"):
            p.unlink()
    _, manifest = prepare_imagenet_samples(src / "foolbox-3.3.4-py3-none-any.whl", tmp_path / "out", label_list=lst)
    assert [e["id"] for e in manifest["images"]] == ["foolbox-imagenet-00", "foolbox-imagenet-01"]
    assert {v["status"] for v in manifest["extra_sources"].values()} == {"missing"}
    assert len(manifest["extra_skipped"]) == 5


def test_read_deb_members_streams_only_the_wanted_files(tmp_path):
    a, b = _image((1, 1, 1)), _image((2, 2, 2))
    deb = _deb(tmp_path / "x_1_all.deb", {"./a/one.jpg": a, "./a/two.jpg": b})
    assert read_deb_members(deb, {"a/two.jpg", "a/none.jpg"}) == {"a/two.jpg": b}
    (tmp_path / "bad.deb").write_bytes(b"not an ar archive")
    with pytest.raises(DataError, match="no ar header"):
        read_deb_members(tmp_path / "bad.deb", {"a/one.jpg"})
