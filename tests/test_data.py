"""Tests for adv2core.data: the embedded dataset, real-data loaders, sharding and the registry."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from adv2core.data import (
    Batch,
    CIFAR10Dataset,
    DATASET_NAMES,
    EmbeddedDataConfig,
    EmbeddedDataset,
    ImageDataset,
    ImageFolderDataset,
    ISICDataset,
    ISIC_CLASSES,
    SHAPE_NAMES,
    embedded_cache_path,
    generate_split,
    get_dataset,
    iter_batches,
    prepare_embedded,
    shard_indices,
)
from adv2core.errors import ConfigError, DataError

TINY = EmbeddedDataConfig(seed=3, train_per_class=8, test_per_class=8)


@pytest.fixture(autouse=True)
def _data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every cache goes to a temporary data root, never the repository's data/."""
    root = tmp_path / "adv2data"
    monkeypatch.setenv("ADV2_DATA", str(root))
    return root


# --------------------------------------------------------------------------------------------------
# embedded dataset
# --------------------------------------------------------------------------------------------------

def test_generation_is_deterministic_and_seed_dependent() -> None:
    a, b = generate_split(TINY, "test"), generate_split(TINY, "test")
    for k in ("images", "masks", "labels"):
        assert torch.equal(a[k], b[k])
    other = generate_split(TINY.model_copy(update={"seed": 4}), "test")
    assert not torch.equal(a["images"], other["images"])
    assert not torch.equal(a["masks"], other["masks"])
    train = generate_split(TINY, "train")
    # train and test are independent streams: no test image repeats in train
    flat_tr, flat_te = train["images"].flatten(1), a["images"].flatten(1)
    assert not (flat_te[:, None] == flat_tr[None]).all(-1).any()


def test_dataset_ids_and_contract(_data_root: Path) -> None:
    ds = EmbeddedDataset("test", TINY)
    assert isinstance(ds, ImageDataset)
    assert len(ds) == 8 * TINY.num_classes
    assert ds.ids[123 % len(ds)] == f"emb-s3-test-{123 % len(ds):06d}"
    assert len(set(ds.ids)) == len(ds)
    assert ds.class_names == list(SHAPE_NAMES[:8]) and ds.num_classes == 8 >= 8
    again = EmbeddedDataset("test", TINY)
    assert again.ids == ds.ids
    b = ds.load([5, 0, 17])
    assert isinstance(b, Batch) and b.ids == [ds.ids[5], ds.ids[0], ds.ids[17]]
    assert b.images.shape == (3, 3, 64, 64) and b.images.dtype == torch.float32
    assert 0.0 <= float(b.images.min()) and float(b.images.max()) <= 1.0
    assert b.masks is not None and b.masks.shape == (3, 1, 64, 64)
    assert set(b.masks.unique().tolist()) <= {0.0, 1.0}
    assert b.errors == []
    x, y, m = ds.tensors()
    assert torch.equal(x[[5, 0, 17]], b.images) and torch.equal(y[[5, 0, 17]], b.labels)
    assert torch.equal(m[[5, 0, 17]], b.masks)
    # images are exactly the stored uint8 / 255
    raw = generate_split(TINY, "test")
    assert torch.equal(x, raw["images"].float() / 255)
    with pytest.raises(IndexError):
        ds.load([len(ds)])
    with pytest.raises(ConfigError):
        EmbeddedDataset("val", TINY)


def test_class_balance_and_interleaving() -> None:
    cfg = TINY.model_copy(update={"num_classes": 12})
    labels = generate_split(cfg, "train")["labels"]
    assert torch.equal(torch.bincount(labels, minlength=12), torch.full((12,), 8))
    # every contiguous block of K images holds each class once: shards stay balanced
    assert torch.equal(labels.view(-1, 12).sort(dim=1).values, torch.arange(12).expand(8, 12))


def test_masks_mark_the_object() -> None:
    d = generate_split(TINY, "test")
    img, mask = d["images"].float() / 255, d["masks"].float()
    area = mask.sum(dim=(1, 2, 3))
    assert (area > 20).all(), "every image has a visible object"
    assert (area < 0.3 * 64 * 64).all()
    # object pixels contrast with a ring of background just outside the mask (independent of how it
    # was drawn): the object is the salient thing in the image
    near = F.max_pool2d(mask, 7, stride=1, padding=3)
    inner = F.max_pool2d(mask, 3, stride=1, padding=1)
    ring = near - inner
    mean_in = (img * mask).sum((2, 3)) / mask.sum((2, 3))
    mean_ring = (img * ring).sum((2, 3)) / ring.sum((2, 3)).clamp_min(1)
    contrast = (mean_in - mean_ring).abs().mean(1)  # mean over channels
    assert (contrast > 0.12).all(), contrast.min()


def test_shape_decides_the_class() -> None:
    """Hole at the centre for ring/bar-pair, solid for disk/square (a property of the shape only)."""
    d = generate_split(TINY, "test")
    m, labels = d["masks"][:, 0].float(), d["labels"]
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    cy = (m * ys).sum((1, 2)) / m.sum((1, 2))
    cx = (m * xs).sum((1, 2)) / m.sum((1, 2))
    at_centroid = m[torch.arange(len(m)), cy.round().long(), cx.round().long()]
    name = {n: i for i, n in enumerate(SHAPE_NAMES)}
    for solid in ("disk", "square", "diamond"):
        assert (at_centroid[labels == name[solid]] == 1).all(), solid
    for hollow in ("ring", "bar-pair"):
        assert (at_centroid[labels == name[hollow]] == 0).all(), hollow
    # position is not the class: object centres of one class spread across the image
    for c in range(TINY.num_classes):
        sel = labels == c
        assert float(cx[sel].max() - cx[sel].min()) > 8 or float(cy[sel].max() - cy[sel].min()) > 8


def test_image_size_is_configurable() -> None:
    cfg = TINY.model_copy(update={"image_size": 40, "test_per_class": 2})
    d = generate_split(cfg, "test")
    assert d["images"].shape == (16, 3, 40, 40) and d["masks"].shape == (16, 1, 40, 40)
    assert (d["masks"].flatten(1).sum(1) > 5).all()


def test_config_is_frozen_and_strict() -> None:
    with pytest.raises(Exception):
        EmbeddedDataConfig(sed=1)  # type: ignore[call-arg]
    with pytest.raises(Exception):
        TINY.seed = 5  # type: ignore[misc]
    assert TINY.cache_key() != TINY.model_copy(update={"seed": 4}).cache_key()


def _mtimes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in root.iterdir()}


def test_cache_is_reused_and_manifest_is_complete(_data_root: Path) -> None:
    root, manifest = prepare_embedded(TINY)
    assert root == embedded_cache_path(TINY)
    assert root.parent == _data_root.resolve() / "datasets" and root.name.startswith("embedded-")
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == 3 and manifest["image_size"] == 64 and manifest["num_classes"] == 8
    assert manifest["counts"] == {"train": 64, "test": 64}
    assert manifest["class_names"] == list(SHAPE_NAMES[:8])
    assert set(manifest["sha256"]) == {"train", "test"} and "generator_version" in manifest
    stored = torch.load(root / "test.pt", weights_only=True)
    assert stored["images"].dtype == torch.uint8 and stored["masks"].dtype == torch.uint8
    assert stored["labels"].dtype == torch.int64
    fresh = generate_split(TINY, "test")
    assert all(torch.equal(stored[k], fresh[k]) for k in fresh)
    before = _mtimes(root)
    root2, manifest2 = prepare_embedded(TINY)
    assert root2 == root and manifest2 == manifest
    assert _mtimes(root) == before, "a matching cache is not rewritten"
    # a different config gets its own folder
    assert prepare_embedded(TINY.model_copy(update={"seed": 9}))[0] != root


@pytest.mark.parametrize("damage", ["tamper", "delete", "truncate", "manifest"])
def test_cache_regenerates_when_damaged(damage: str) -> None:
    root, manifest = prepare_embedded(TINY)
    path = root / "train.pt"
    if damage == "tamper":
        data = torch.load(path, weights_only=True)
        data["images"][0, 0, 0, 0] ^= 1
        torch.save(data, path)
    elif damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        (root / "manifest.json").write_text("{not json")
    _, manifest2 = prepare_embedded(TINY)
    assert manifest2["sha256"] == manifest["sha256"]
    data = torch.load(path, weights_only=True)
    assert torch.equal(data["images"], generate_split(TINY, "train")["images"])
    # a dataset object built on a damaged cache sees the regenerated data too
    if damage == "tamper":
        data["labels"][0] = 5
        torch.save(data, path)
    ds = EmbeddedDataset("train", TINY)
    assert torch.equal(ds.tensors()[1], generate_split(TINY, "train")["labels"])


# --------------------------------------------------------------------------------------------------
# folder / ISIC / CIFAR loaders
# --------------------------------------------------------------------------------------------------

def _pattern(w: int, h: int, seed: int = 0) -> Image.Image:
    """An RGB image with a green stripe in the left eighth and smooth gradients elsewhere."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), rng.uniform(0.2, 0.8))], axis=2) * 200
    arr[:, : w // 8] = (0, 255, 0)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _truncated_jpeg(path: Path) -> None:
    _pattern(120, 90).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for c in ("n02_zebra", "n01_apple"):
        (root / c).mkdir(parents=True)
    _pattern(448, 224, 1).save(root / "n01_apple" / "a1.JPEG")
    _pattern(300, 200, 2).save(root / "n01_apple" / "a2.png")
    _pattern(224, 448, 3).save(root / "n02_zebra" / "z1.jpg")
    _truncated_jpeg(root / "n02_zebra" / "z2_truncated.jpg")
    (root / "n02_zebra" / "z3_not_image.jpg").write_text("this is not an image\n")
    (root / "n02_zebra" / "notes.txt").write_text("ignored: not an image extension\n")
    _pattern(250, 250, 4).convert("L").save(root / "n02_zebra" / "z4_gray.png")
    _pattern(250, 250, 5).convert("RGBA").save(root / "n02_zebra" / "z5_rgba.png")
    _pattern(250, 250, 6).convert("CMYK").save(root / "n02_zebra" / "z6_cmyk.jpg")
    return root


def _cv2_linear_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """An independent numpy version of cv2.resize(INTER_LINEAR): half-pixel centres, edge clamping."""
    h, w = img.shape[:2]

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = axis(out_h, h)
    x0, x1, fx = axis(out_w, w)
    f = img.astype(np.float64)
    top = f[y0][:, x0] * (1 - fx)[None, :, None] + f[y0][:, x1] * fx[None, :, None]
    bot = f[y1][:, x0] * (1 - fx)[None, :, None] + f[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def test_class_folders_both_preprocess_conventions(class_folders: Path) -> None:
    direct = ImageFolderDataset(class_folders, preprocess="direct", num_workers=0)
    center = ImageFolderDataset(class_folders, preprocess="center", num_workers=0)
    assert isinstance(direct, ImageDataset)
    assert direct.class_names == ["n01_apple", "n02_zebra"] and direct.num_classes == 2
    assert direct.ids == ["n01_apple/a1.JPEG", "n01_apple/a2.png", "n02_zebra/z1.jpg", "n02_zebra/z2_truncated.jpg",
                          "n02_zebra/z3_not_image.jpg", "n02_zebra/z4_gray.png", "n02_zebra/z5_rgba.png",
                          "n02_zebra/z6_cmyk.jpg"]
    bd, bc = direct.load([0, 1, 2]), center.load([0, 1, 2])
    for b in (bd, bc):
        assert b.images.shape == (3, 3, 224, 224) and b.labels.tolist() == [0, 0, 1] and not b.errors
        assert 0 <= float(b.images.min()) and float(b.images.max()) <= 1
    assert not torch.allclose(bd.images, bc.images)
    # direct keeps the whole (squashed) image: the left green stripe survives; the centre crop of the
    # 2:1 image a1 cuts it away
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    assert (bd.images[0, :, :, :20] - green).abs().max() < 0.02
    assert ((bc.images[0] - green).abs().sum(0) < 0.05).sum() == 0
    # and it is the cv2 INTER_LINEAR resize (no antialias), within rounding
    src = np.asarray(Image.open(class_folders / "n01_apple" / "a2.png"))
    ref = torch.from_numpy(_cv2_linear_reference(src, 224, 224)).permute(2, 0, 1) / 255
    assert (bd.images[1].double() - ref).abs().max() <= 1.01 / 255
    # centre: Resize(256) on the shorter side then the middle 224 (independent PIL computation, loose)
    pil = Image.open(class_folders / "n01_apple" / "a2.png").resize((384, 256), Image.BILINEAR)
    crop = np.asarray(pil)[16:240, 80:304].astype(np.float64) / 255
    assert np.abs(bc.images[1].permute(1, 2, 0).numpy() - crop).mean() < 0.01


def test_bad_files_become_errors_and_the_batch_survives(class_folders: Path) -> None:
    ds = ImageFolderDataset(class_folders, num_workers=2)
    b = ds.load(range(len(ds)))
    bad = {e.image_id: e for e in b.errors}
    assert set(bad) == {"n02_zebra/z2_truncated.jpg", "n02_zebra/z3_not_image.jpg"}
    assert "truncated" in bad["n02_zebra/z2_truncated.jpg"].reason
    assert all("\n" not in e.reason and e.path and Path(e.path).exists() for e in b.errors)
    assert len(b) == 6 and b.images.shape[0] == 6 and b.labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert b.ids == [i for i in ds.ids if i not in bad]
    # non-RGB inputs were converted: grey stays grey
    gray = b.images[b.ids.index("n02_zebra/z4_gray.png")]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    # the same batch decoded serially is identical (thread pool changes nothing)
    serial = ImageFolderDataset(class_folders, num_workers=0).load(range(len(ds)))
    assert torch.equal(serial.images, b.images) and serial.ids == b.ids
    # a batch of only bad images is an empty batch, not an exception
    only_bad = ds.load([3, 4])
    assert len(only_bad) == 0 and only_bad.images.shape == (0, 3, 224, 224) and len(only_bad.errors) == 2


def test_non_rgb_error_mode(class_folders: Path) -> None:
    ds = ImageFolderDataset(class_folders, non_rgb="error", num_workers=0)
    b = ds.load(range(len(ds)))
    reasons = {e.image_id: e.reason for e in b.errors}
    assert reasons["n02_zebra/z4_gray.png"] == "image is mode L, expected RGB"
    assert reasons["n02_zebra/z5_rgba.png"] == "image is mode RGBA, expected RGB"
    assert reasons["n02_zebra/z6_cmyk.jpg"] == "image is mode CMYK, expected RGB"
    assert b.ids == ["n01_apple/a1.JPEG", "n01_apple/a2.png", "n02_zebra/z1.jpg"]
    with pytest.raises(ConfigError):
        ImageFolderDataset(class_folders, non_rgb="keep")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ImageFolderDataset(class_folders, preprocess="crop")  # type: ignore[arg-type]


def test_flat_folder_with_labels_file(tmp_path: Path) -> None:
    root = tmp_path / "val"
    root.mkdir()
    for i in range(3):
        _pattern(100 + 10 * i, 80, i).save(root / f"ILSVRC2012_val_{i:08d}.JPEG")
    (root / "ILSVRC2012_val_99999999.JPEG").write_bytes(b"")  # not in the labels file: ignored
    labels = tmp_path / "val.txt"
    labels.write_text("# filename label\nILSVRC2012_val_00000002.JPEG 7\n\nILSVRC2012_val_00000000.JPEG 65\n"
                      "ILSVRC2012_val_00000001.JPEG\t999\nmissing.JPEG 3\n")
    ds = ImageFolderDataset(root, labels_file=labels, num_classes=1000, num_workers=0)
    assert ds.num_classes == 1000 and len(ds) == 4
    assert ds.ids == ["ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000000.JPEG",
                      "ILSVRC2012_val_00000001.JPEG", "missing.JPEG"]
    b = ds.load([0, 3, 1, 2])
    assert b.ids == ["ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000000.JPEG", "ILSVRC2012_val_00000001.JPEG"]
    assert b.labels.tolist() == [7, 65, 999] and b.images.shape == (3, 3, 224, 224)
    assert [(e.image_id, e.reason) for e in b.errors] == [("missing.JPEG", "file not found")]
    # class-name labels are mapped through sorted names
    named = tmp_path / "named.txt"
    named.write_text("ILSVRC2012_val_00000000.JPEG zebra\nILSVRC2012_val_00000001.JPEG apple\n")
    ds2 = ImageFolderDataset(root, labels_file=named, num_workers=0, image_size=96)
    assert ds2.class_names == ["apple", "zebra"] and ds2.load([0, 1]).labels.tolist() == [1, 0]
    assert ds2.load([0]).images.shape == (1, 3, 96, 96)
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 1 extra\n")
    with pytest.raises(DataError, match="bad.txt:1"):
        ImageFolderDataset(root, labels_file=bad)
    with pytest.raises(DataError):
        ImageFolderDataset(root, labels_file=tmp_path / "nope.txt")


def test_missing_or_empty_roots_are_one_line_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        ImageFolderDataset(tmp_path / "does-not-exist")
    assert "\n" not in str(e.value)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset(tmp_path / "empty")


def test_isic_csv_center_crop_without_resize(tmp_path: Path) -> None:
    img_dir = tmp_path / "ISIC2018_Task3_Training_Input"
    img_dir.mkdir()
    names = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    for i, n in enumerate(names):
        _pattern(600, 450, i).save(img_dir / f"{n}.jpg", quality=100)
    _truncated_jpeg(img_dir / "ISIC_0000003.jpg")
    csv_path = tmp_path / "labels.csv"
    rows = ["image," + ",".join(ISIC_CLASSES)]
    for n, cls in zip(names + ["ISIC_0000003"], [0, 6, 2, 1]):
        rows.append(n + "," + ",".join("1.0" if j == cls else "0.0" for j in range(7)))
    csv_path.write_text("\n".join(rows) + "\n")
    ds = ISICDataset(img_dir, csv_path, num_workers=0)
    assert ds.num_classes == 7 and ds.class_names == list(ISIC_CLASSES)
    assert ds.ids == [f"{n}.jpg" for n in names + ["ISIC_0000003"]]
    b = ds.load(range(4))
    assert b.labels.tolist() == [0, 6, 2] and b.images.shape == (3, 3, 224, 224)
    assert [e.image_id for e in b.errors] == ["ISIC_0000003.jpg"]
    src = np.asarray(Image.open(img_dir / "ISIC_0000001.jpg")).astype(np.float32) / 255
    top, left = (450 - 224) // 2, (600 - 224) // 2
    crop = torch.from_numpy(src[top:top + 224, left:left + 224]).permute(2, 0, 1)
    assert torch.allclose(b.images[1], crop, atol=1e-6), "centre crop, no resize, no normalisation"
    bad = tmp_path / "bad.csv"
    bad.write_text("image,MEL,NV\nISIC_0000000,1,0\n")
    with pytest.raises(DataError, match="missing column"):
        ISICDataset(img_dir, bad)
    notonehot = tmp_path / "two.csv"
    notonehot.write_text(rows[0] + "\nISIC_0000000,1,1,0,0,0,0,0\n")
    with pytest.raises(DataError, match="one-hot"):
        ISICDataset(img_dir, notonehot)


def test_cifar10_missing_root_message(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        CIFAR10Dataset(tmp_path / "nowhere", "test")
    msg = str(e.value)
    assert "\n" not in msg and "cifar-10-batches-py" in msg and "nowhere" in msg
    (tmp_path / "broken" / "cifar-10-batches-py").mkdir(parents=True)
    with pytest.raises(DataError, match="corrupted"):
        CIFAR10Dataset(tmp_path / "broken", "test")


def test_cifar10_wrapper_on_fake_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    base = tmp_path / "cifar" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(5, 3072), dtype=np.uint8)
    with open(base / "test_batch", "wb") as fh:
        pickle.dump({"data": data, "labels": [3, 1, 4, 1, 5]}, fh)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # fake files have other md5s
    ds = CIFAR10Dataset(tmp_path / "cifar", "test")
    assert isinstance(ds, ImageDataset) and len(ds) == 5 and ds.num_classes == 10
    assert ds.ids[4] == "cifar10-test-00004"
    b = ds.load([4, 0])
    assert b.labels.tolist() == [5, 3] and b.images.shape == (2, 3, 32, 32)
    assert torch.equal(b.images[1], torch.from_numpy(data[0].reshape(3, 32, 32)).float() / 255)


# --------------------------------------------------------------------------------------------------
# sharding and registry
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,k", [(0, 1), (1, 3), (10, 3), (64, 8), (101, 7), (5, 5)])
def test_shards_cover_every_index_exactly_once(n: int, k: int) -> None:
    shards = [shard_indices(n, s, k) for s in range(k)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert shards == [a.tolist() for a in np.array_split(np.arange(n), k)]
    assert shard_indices(n, k - 1, k) == shards[-1]  # deterministic


@pytest.mark.parametrize("shard,k", [(-1, 3), (3, 3), (0, 0)])
def test_bad_shard_is_a_config_error(shard: int, k: int) -> None:
    with pytest.raises(ConfigError):
        shard_indices(10, shard, k)


def test_iter_batches() -> None:
    ds = EmbeddedDataset("test", TINY)
    idx = shard_indices(len(ds), 1, 3)
    batches = list(iter_batches(ds, idx, 5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 1]
    assert [i for b in batches for i in b.ids] == [ds.ids[i] for i in idx]
    with pytest.raises(ConfigError):
        list(iter_batches(ds, idx, 0))


def test_registry(class_folders: Path) -> None:
    assert set(DATASET_NAMES) == {"embedded", "imagenet", "isic", "cifar10", "imagenet-samples"}
    with pytest.raises(ConfigError) as e:
        get_dataset("mnist")
    assert all(n in str(e.value) for n in DATASET_NAMES)
    ds = get_dataset("embedded", "train", seed=3, train_per_class=8, test_per_class=8)
    assert isinstance(ds, EmbeddedDataset) and ds.cfg == TINY and ds.split == "train"
    assert get_dataset("embedded", cfg=TINY).ids == EmbeddedDataset("test", TINY).ids
    with pytest.raises(ConfigError, match="num_classes"):
        get_dataset("embedded", num_classes=99)
    inet = get_dataset("imagenet", root=class_folders, preprocess="center")
    assert isinstance(inet, ImageFolderDataset) and inet.preprocess == "center"
    with pytest.raises(ConfigError, match="unknown option"):
        get_dataset("imagenet", root=class_folders, resize=3)
    with pytest.raises(DataError):  # default location under the (empty) data root
        get_dataset("cifar10")
    with pytest.raises(ConfigError, match="split"):
        get_dataset("cifar10", "val")
