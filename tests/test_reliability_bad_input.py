"""Bad input: each case gives one clear line (exit code 2 from the CLI), or, for a fault in one image
or one sample, an error/failed row while the rest of the shard and the run complete.

CLI cases run the real typer app in-process (``CliRunner``: the same code path as the ``adv2``
command, without paying for a new interpreter per case); pipeline cases use the inline engine.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from adv2cli.main import app
from adv2core.config import load_config
from adv2core.errors import CheckpointError
from adv2core.models.checkpoint import load_checkpoint, load_state_dict_file, save_checkpoint
from adv2core.store import ResultStore, run_sql
from adv2core.store.layout import arrays_path, manifest_path, table_path
from flows.benchmark import BenchmarkFailed, run_benchmark
from reliability_support import (
    all_units,
    check_committed_units,
    check_files,
    counts,
    expected_counts,
    manifests,
    run_args,
    tasks_for,
    tiny_config,
    unit,
)
from tasks import worker


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def _one_error_line(result, *needles: str) -> str:
    """Exit code 2 and exactly one ``error: ...`` line on stderr, containing every needle."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


# ---------------------------------------------------------------------------------------- config values
@pytest.mark.parametrize("override, needles", [
    ("models.names=[resnet-nope]", ["unknown model", "resnet-nope"]),
    ("interpreters.names=[gradcam-nope]", ["unknown interpreter", "gradcam-nope"]),
    ("attacks.names=[fgsm-nope]", ["unknown attack", "fgsm-nope"]),
    ("attacks.overrides.pgd.eps=0", ["pgd.eps"]),
    ("attacks.overrides.pgd.eps=-0.1", ["pgd.eps"]),
    ("attacks.overrides.pgd.eps=1.5", ["pgd.eps"]),
    ("attacks.overrides.adv2.grad.eps=0", ["adv2.grad.eps"]),
    ("attacks.overrides.adv2.cam.eps=2", ["adv2.cam.eps"]),
    ("attacks.overrides.pgd.steps=0", ["pgd.steps"]),
    ("attacks.overrides.pgd.steps=-3", ["pgd.steps"]),
    ("attacks.overrides.adv2.cam.stage1_steps=0", ["adv2.cam.stage1_steps"]),
    ("attacks.step_cap=0", ["attacks.step_cap"]),
    ("data.num_images=0", ["data.num_images"]),
    ("data.shard_size=0", ["data.shard_size"]),
])
def test_bad_config_value_is_one_line_and_writes_nothing(tmp_path, override, needles):
    res = _cli(*run_args(tmp_path / "results", override))
    _one_error_line(res, *needles)
    assert not (tmp_path / "results").exists()  # refused before any work


def _folder_overrides(folder: Path, **opts) -> list[str]:
    o = ", ".join(f"{k}: {v}" for k, v in {"image_size": 64, "num_workers": 0, **opts}.items())
    # random-pixel folders and an embedded model: accuracy is meaningless here, so the preflight gates are
    # off and every drawn image is attacked (these tests count rows of unreadable images, not trust)
    return ["data.dataset=imagenet", f"data.path={folder}", f"data.options={{{o}}}", "gates.enabled=false",
            "data.population=all"]


# the Prefect engine (~20 s: a private server) in make test-heavy; the killed Prefect run of
# r_crash_resume scenario 1 keeps a Prefect-engine run in make test
@pytest.mark.parametrize("engine", ["inline", pytest.param("prefect", marks=pytest.mark.heavy)])
def test_missing_dataset_path(tmp_path, engine):
    missing = tmp_path / "no-such-imagenet" / "val"
    if engine == "prefect":
        from flows.testing import shared_prefect_server

        shared_prefect_server(os.environ["PREFECT_HOME"])
    res = _cli(*run_args(tmp_path / "results", *_folder_overrides(missing), engine=engine))
    _one_error_line(res, "not found", str(missing))


def test_empty_dataset(tmp_path):
    folder = tmp_path / "val"
    (folder / "n01440764").mkdir(parents=True)
    (folder / "n01440764" / "README.txt").write_text("not an image")
    res = _cli(*run_args(tmp_path / "results", *_folder_overrides(folder)))
    _one_error_line(res, "no images", str(folder))


def test_unwritable_results_root(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _one_error_line(_cli(*run_args(blocker / "results")), "not writable", str(blocker / "results"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_results_root(tmp_path):
    root = tmp_path / "results"
    root.mkdir()
    root.chmod(0o500)
    try:
        _one_error_line(_cli(*run_args(root)), "not writable")
    finally:
        root.chmod(0o700)


# ---------------------------------------------------------------------------------------- image files
def _embedded_images(n: int) -> list[np.ndarray]:
    from adv2core.data.synthetic import EmbeddedDataConfig, EmbeddedDataset

    ds = EmbeddedDataset("test", EmbeddedDataConfig(**load_config("smoke").data.options))
    x = ds.load(list(range(n))).images
    return [(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in x]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def image_folder(tmp_path):
    """An ImageNet-style folder (class sub-folders) with a good, a truncated, a grayscale, an RGBA and a
    corrupt image. Sorted order: shard 0 = good + truncated, shard 1 = gray + RGBA, shard 2 = corrupt."""
    imgs = _embedded_images(4)
    root = tmp_path / "val"
    for c in ("0", "1", "2"):
        (root / c).mkdir(parents=True)
    (root / "0" / "a_good.png").write_bytes(_png(Image.fromarray(imgs[0])))
    full = _png(Image.fromarray(imgs[1]))
    (root / "0" / "b_truncated.png").write_bytes(full[: len(full) // 2])
    (root / "1" / "c_gray.png").write_bytes(_png(Image.fromarray(imgs[2]).convert("L")))
    (root / "1" / "d_rgba.png").write_bytes(_png(Image.fromarray(imgs[3]).convert("RGBA")))
    (root / "2" / "e_corrupt.jpg").write_bytes(random.Random(0).randbytes(3000))
    return root


def _embedded_models_on_folders() -> str:
    """The embedded models stay the test-cache ones (trained on the smoke preset's embedded data)."""
    o = ", ".join(f"{k}: {v}" for k, v in load_config("smoke").data.options.items())
    return f"models.embedded_data={{{o}}}"


@pytest.mark.slow
@pytest.mark.parametrize("non_rgb, errors", [
    ("convert", {"0/b_truncated.png", "2/e_corrupt.jpg"}),
    ("error", {"0/b_truncated.png", "2/e_corrupt.jpg", "1/c_gray.png", "1/d_rgba.png"}),
])
def test_bad_images_become_error_rows_and_the_rest_completes(tmp_path, image_folder, non_rgb, errors):
    root = tmp_path / "results"
    rc = tiny_config(root, *_folder_overrides(image_folder, non_rgb=non_rgb), _embedded_models_on_folders(),
                     "data.num_images=5", "data.shard_size=2")
    summary = run_benchmark(rc, engine="inline")
    assert summary["status"] == "completed" and not summary["failures"]
    h = rc.config_hash
    exp = expected_counts(rc)
    good = 5 - len(errors)
    got = counts(root, h)
    assert got["samples"] == exp["samples"] and got["attack_units"] == exp["attack_units"]
    assert got["transfer_units"] == exp["transfer_units"]  # every shard completes, even an all-error one
    b = rc.bench
    assert got["transfer"] == len(b.models.names) * len(rc.cross_eval_attacks) * len(b.interpreters.names) ** 2 * good
    rows = run_sql(root, "SELECT image_id, status, error, success, l1 FROM samples WHERE config_hash = ?", [h]).to_pylist()
    cells = len(b.models.names) * len(b.interpreters.names) * len(b.attacks.names)
    bad = [r for r in rows if r["status"] == "error"]
    assert {r["image_id"] for r in bad} == errors and len(bad) == len(errors) * cells
    for r in bad:
        assert r["error"] and "\n" not in r["error"] and r["success"] is None and r["l1"] is None
    assert all(r["status"] in ("ok", "failed") for r in rows if r["image_id"] not in errors)
    if non_rgb == "error":
        assert {r["error"] for r in bad if r["image_id"] == "1/c_gray.png"} == {"image is mode L, expected RGB"}
        assert {r["error"] for r in bad if r["image_id"] == "1/d_rgba.png"} == {"image is mode RGBA, expected RGB"}
    else:  # converted to 3 channels and attacked like any other image
        from adv2core.store.arrays import read_arrays

        arr = read_arrays(arrays_path(root, unit(rc, ("attack", b.models.names[0], "grad", "pgd", 1))))
        assert [str(i) for i in arr["image_id"]] == ["1/c_gray.png", "1/d_rgba.png"]
        assert arr["perturbation"].shape == (2, 3, 64, 64)
    check_committed_units(root, h)


# ---------------------------------------------------------------------------------------- checkpoints
@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    state = {"conv.weight": torch.randn(8, 3, 3, 3), "fc.weight": torch.randn(4, 8), "fc.bias": torch.zeros(4)}
    path = tmp_path / "model.pt"
    save_checkpoint(path, state, {"name": "tiny"})
    return path


LOADERS = [load_checkpoint, load_state_dict_file]


@pytest.mark.parametrize("loader", LOADERS)
def test_truncated_checkpoint_is_refused(checkpoint, loader):
    data = checkpoint.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        checkpoint.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated|corrupt") as ei:
            loader(checkpoint)
        assert "\n" not in str(ei.value) and str(checkpoint) in str(ei.value)


@pytest.mark.parametrize("loader", LOADERS)
def test_tampered_checkpoint_is_refused(checkpoint, loader):
    """Flip one byte inside a tensor record: torch.load alone would load the wrong weights silently."""
    import struct
    import zipfile

    data = bytearray(checkpoint.read_bytes())
    with zipfile.ZipFile(checkpoint) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)  # the largest tensor record
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x40
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="tampered|corrupt") as ei:
        loader(checkpoint)
    assert "\n" not in str(ei.value)


class _RunsCode:
    """Unpickling this object would create a marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


@pytest.mark.parametrize("loader", LOADERS)
def test_checkpoint_that_would_run_code_is_refused(tmp_path, loader):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused") as ei:
        loader(path)
    msg = str(ei.value)
    assert "\n" not in msg and "GLOBAL" in msg and "weights_only` set to `False`" not in msg
    assert not marker.exists()


def test_pipeline_refuses_unsafe_weights_with_exit_code_2(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, path)
    res = _cli(*run_args(tmp_path / "results", "models.names=[resnet50]", f"models.weights={path}"))
    assert not marker.exists()
    _one_error_line(res, "refused checkpoint", str(path))


# ---------------------------------------------------------------------------------------- NaN / Inf
class _PoisonGrad(torch.autograd.Function):
    """Identity forward; the gradient of batch row 0 becomes NaN and of row 1 +Inf."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        bad = torch.zeros_like(g)
        bad[0] = float("nan")
        if g.shape[0] > 1:
            bad[1] = float("inf")
        return g + bad


@pytest.mark.slow
def test_non_finite_gradients_fail_the_sample_not_the_run(tmp_path, monkeypatch):
    """NaN/Inf injected into the input gradient of two images (a backward hook on the model): those
    samples are stored as status='failed' with the reason, the third image and the run complete."""
    real = worker.load_classifier

    def poisoned(*args, **kwargs):
        model = real(*args, **kwargs)

        def pre(mod, inputs):
            x = inputs[0]
            return (_PoisonGrad.apply(x), *inputs[1:]) if torch.is_grad_enabled() and x.requires_grad else None

        model.register_forward_pre_hook(pre)
        return model

    worker.clear_caches()
    monkeypatch.setattr(worker, "load_classifier", poisoned)
    try:
        root = tmp_path / "results"
        # the injected NaN also reaches the benign maps, which the preflight gate would refuse (tested in
        # tests/test_gates.py); here the attack's per-sample handling is under test, so the gate is off
        rc = tiny_config(root, "data.num_images=3", "data.shard_size=3", "interpreters.names=[grad]",
                         "gates.enabled=false")
        summary = run_benchmark(rc, engine="inline")
    finally:
        worker.clear_caches()
    assert summary["status"] == "completed" and not summary["failures"]
    assert counts(root, rc.config_hash) == expected_counts(rc)
    ids = worker.get_dataset(rc).ids[:3]
    rows = run_sql(root, "SELECT attack, image_id, status, error FROM samples").to_pylist()
    by = {(r["attack"], r["image_id"]): r for r in rows}
    for attack in rc.bench.attacks.names:
        for poisoned_id in ids[:2]:
            r = by[(attack, poisoned_id)]
            assert r["status"] == "failed" and "non-finite" in r["error"], r
        assert by[(attack, ids[2])]["status"] == "ok", by[(attack, ids[2])]


# ---------------------------------------------------------------------------------------- full disk
class _DiskFull:
    """A file whose write stores half the bytes, then fails with ENOSPC (what a full disk does)."""

    def __init__(self, f) -> None:
        self._f = f

    def write(self, data) -> int:
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def _run_into_full_disk(tmp_path, monkeypatch, which: str):
    """Run the tiny pgd/grad config while the first write of the first attack unit's ``which`` file hits
    ENOSPC half-way; returns (config, results root, the BenchmarkFailed raised)."""
    import adv2core.store.writer as writer

    marker = {"npz": ".npz.tmp-", "samples": "/stage=attack/", "manifest": "/shards/"}[which]
    state = {"hit": 0}

    def full_disk_open(file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        if "w" in mode and marker in str(file) and ".tmp-" in str(file) and state["hit"] == 0:
            state["hit"] = 1
            return _DiskFull(f)
        return f

    root = tmp_path / "results"
    rc = tiny_config(root, "data.num_images=2", "interpreters.names=[grad]", "attacks.names=[pgd]")
    monkeypatch.setattr(writer, "open", full_disk_open, raising=False)
    try:
        with pytest.raises(BenchmarkFailed) as ei:
            run_benchmark(rc, engine="inline")
    finally:
        monkeypatch.undo()
    assert state["hit"] == 1
    return rc, root, ei.value


@pytest.mark.parametrize("which", ["npz", "samples", "manifest"])
def test_full_disk_leaves_no_partial_parquet_and_a_rerun_completes(tmp_path, monkeypatch, which):
    """The unit whose write hit ENOSPC is rolled back (no file under a final name, no temp file), the
    other units complete, the run ends failed with one line, and a rerun completes exactly."""
    rc, root, exc = _run_into_full_disk(tmp_path, monkeypatch, which)
    msg = str(exc)
    assert "No space left on device" in msg and "\n" not in msg
    assert check_files(root) == []  # the half-written temp file was removed too
    check_committed_units(root, rc.config_hash)
    stored = manifests(root, rc.config_hash)
    missing = all_units(rc) - set(stored)
    failed = unit(rc, ("attack", rc.bench.models.names[0], "grad", "pgd", 0))
    assert ("attack", failed.model, "grad", "pgd", 0) in missing
    for p in (table_path(root, failed), arrays_path(root, failed), manifest_path(root, failed)):
        assert not p.exists(), p  # rolled back: the unit is absent, not half there
    assert run_sql(root, "SELECT status FROM runs").to_pylist() == [{"status": "failed"}]

    again = run_benchmark(rc, engine="inline")
    assert again["status"] == "completed" and again["computed"] == tasks_for(missing)
    assert counts(root, rc.config_hash) == expected_counts(rc)
    assert ResultStore(root).completed_units(rc.config_hash, full=True) == {unit(rc, k) for k in all_units(rc)}


def test_failed_run_summary_counts_what_was_computed(tmp_path, monkeypatch):
    """``computed`` counts the tasks that wrote their units, not submissions minus failures."""
    rc, root, exc = _run_into_full_disk(tmp_path, monkeypatch, "npz")
    missing = all_units(rc) - set(manifests(root, rc.config_hash))
    done_tasks = tasks_for(all_units(rc)) - tasks_for(missing)
    assert exc.summary["computed"] == done_tasks
