"""Shared fixtures: a small embedded dataset and briefly trained embedded models, cached across runs.

The cache lives in ``data/test-cache`` (git-ignored; override with ``ADV2_TEST_DATA``), so a fresh clone
trains once (about a minute on 2 cores) and later runs reuse the checkpoints. Tests that need their own
empty data root use ``monkeypatch.setenv("ADV2_DATA", tmp_path)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = Path(os.environ.get("ADV2_TEST_DATA", REPO / "data" / "test-cache"))
#: The data root `make` prepared the real photos and SqueezeNet weights under (read before ADV2_DATA is
#: pointed at the test cache below).
REAL_DATA = Path(os.environ.get("ADV2_REAL_DATA", os.environ.get("ADV2_DATA", REPO / "data"))).resolve()


def pytest_configure(config):
    TEST_DATA.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ADV2_REAL_DATA", str(REAL_DATA))  # xdist workers inherit ADV2_DATA = the cache
    os.environ["ADV2_DATA"] = str(TEST_DATA)
    # pytest-xdist workers (`make test` runs two) share the checkpoint cache (written atomically, identical
    # bytes) but each gets its own Prefect home: one SQLite database per server process.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker:  # not inherited from the controller
        os.environ["PREFECT_HOME"] = str(TEST_DATA / f"prefect-home-{worker}")
    os.environ.setdefault("PREFECT_HOME", str(TEST_DATA / "prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Threads: OMP_NUM_THREADS if set; else one per worker when several workers share the cores (two
    # workers x two threads on 2 cores thrash), else up to 2. CI runs the suite both ways (.ci/run), so
    # one thread and two threads are two floating-point paths it sees.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    default = max(1, min(2, (os.cpu_count() or 1) // workers))
    if workers > 1:  # the CLI subprocesses some tests start inherit it
        os.environ.setdefault("OMP_NUM_THREADS", str(default))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or default))


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """Data root holding ``datasets/imagenet-samples`` and ``weights/squeezenet1_1`` (made by `make`).

    Missing files fail the requesting tests loudly (never a silent skip): `make` prepares them.
    """
    manifest = REAL_DATA / "datasets" / "imagenet-samples" / "manifest.json"
    pkl = REAL_DATA / "weights" / "squeezenet1_1" / "squeezenet_weights.pkl"
    missing = [str(p) for p in (manifest, pkl) if not p.is_file()]
    if missing:
        pytest.fail(f"real data not prepared ({', '.join(missing)} missing): run `make real-data`", pytrace=False)
    return REAL_DATA


def _small_data_cfg():
    from adv2core.data.synthetic import EmbeddedDataConfig

    return EmbeddedDataConfig(seed=0, image_size=64, num_classes=8, train_per_class=160, test_per_class=24)


def _small_train_cfg():
    from adv2core.models.training import TrainConfig

    # the default recipe's schedule on the small set: 8 annealed epochs (160 steps) after the loss leaves
    # the loss reaches 0.35 (resnet-mini: ~90 steps here; densenet-mini needed 490 on the full set, hence
    # the 60-epoch = 1200-step cap); the smoke preset uses the same (shared cache)
    return TrainConfig(epochs=8, batch_size=64, lr=0.05, max_plateau_epochs=60)


@pytest.fixture(scope="session")
def small_data_cfg():
    """The embedded generator at test scale: same classes and size, fewer images."""
    return _small_data_cfg()


@pytest.fixture(scope="session")
def small_train_cfg():
    return _small_train_cfg()


#: Worker seconds of the slowest files in `make test` (2-core AMD EPYC host, one thread per worker,
#: 2026-12-02; only an ordering hint). They are collected first, so xdist (`--dist loadfile
#: --no-loadscope-reorder`) hands them out first and the short files fill the gaps at the end: the two
#: workers then finish within seconds of each other instead of ~25 s apart.
SLOW_FILES = {
    "test_reliability_crash_resume.py": 51, "test_reliability_read_safety.py": 44, "test_attacks.py": 40,
    "test_defences.py": 37, "test_reliability_bad_input.py": 36, "test_defences_stage.py": 33,
    "test_pipeline.py": 31, "test_trust_flow.py": 30, "test_stage_keys.py": 26, "test_attacks_adv2.py": 25,
    "test_refused_skip.py": 23, "test_rts.py": 20,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -SLOW_FILES.get(item.path.name, 0))  # stable: a file's tests keep their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_setupnodes(config, specs):
    """Before the xdist workers start: train (or load) the resnet-mini fixture, which most test files and
    the smoke preset share, once with all the threads. Otherwise each worker trains the same model at
    one thread at the same time (measured on a 2-core AMD EPYC from an empty cache: about 9 minutes)."""
    _trained("resnet-mini", _small_data_cfg(), _small_train_cfg())


def _trained(name, data_cfg, train_cfg):
    from adv2core.models.registry import train_embedded

    model, metrics = train_embedded(name, data_cfg, train_cfg, progress=False)
    return model, metrics


@pytest.fixture(scope="session")
def trained_resnet(small_data_cfg, small_train_cfg):
    """resnet-mini trained briefly on the small set (cached); returns (model, metrics)."""
    return _trained("resnet-mini", small_data_cfg, small_train_cfg)


@pytest.fixture(scope="session")
def trained_densenet(small_data_cfg, small_train_cfg):
    return _trained("densenet-mini", small_data_cfg, small_train_cfg)


@pytest.fixture(scope="session")
def small_rts_update():
    """Overrides of the quick RTS recipe for the tests' masking model: 200 decoder iterations instead of 500
    and no quality bar (the tests need a trained, differentiable masker to attack; tests/test_rts.py checks
    training). Shared, so the ADV^2-RTS and AID tests train one masker into the cache."""
    return {"phase2_iterations": 200, "phase2_lr_step": 140, "quality_min_iou": 0.0, "quality_min_gap": 0.0}


@pytest.fixture(scope="session")
def test_batch(small_data_cfg):
    """The first 16 test images of the small embedded set (a Batch with ground-truth masks)."""
    from adv2core.data.synthetic import EmbeddedDataset

    ds = EmbeddedDataset("test", small_data_cfg)
    return ds.load(list(range(16)))
