"""Worker-side state: datasets, models and interpreters loaded *by name* inside the worker, cached.

Why: tasks must never receive tensors or modules as parameters (Prefect hashes and pickles
parameters; CUDA tensors do not survive Dask's serialiser; shipping models from the client is slow).
Each worker process (a Dask worker, or the flow process for the local thread pool) builds what it
needs from the small config payload and keeps it:

* datasets: one per process (read-only after construction), guarded by a lock;
* models and interpreters: per *thread* (interpreters keep hooks and buffers, so two threads must
  never share one), bounded LRU so a long run over many models does not grow without limit.

Nothing here imports prefect, so the same code runs inline (tests) and under any task runner.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Sequence

import torch

from adv2core.config import ResolvedConfig, canonical_json

_DATASETS: dict[str, Any] = {}
_DATASETS_LOCK = threading.Lock()
_THREAD = threading.local()
#: models (with their interpreters) kept per thread; 2 covers the usual "one model at a time" order.
MAX_MODELS_PER_THREAD = int(os.environ.get("ADV2_WORKER_MAX_MODELS", "2"))
#: guards embedded-model and RTS training so two threads of one process never train the same thing.
TRAIN_LOCK = threading.RLock()


def start_task(payload: dict[str, Any]) -> ResolvedConfig:
    """The prologue of every stage task inside its worker: the run config from its payload, the worker's
    process set-up, and the run's torch thread count."""
    rc = ResolvedConfig.from_payload(payload)
    setup_worker(rc)
    set_torch_threads(rc.bench.pipeline.torch_threads)
    return rc


def setup_worker(rc: ResolvedConfig) -> None:
    """Point this process at the run's data root (Dask workers may start with another one)."""
    if os.environ.get("ADV2_DATA") != rc.data_root:
        os.environ["ADV2_DATA"] = rc.data_root


def resolve_device(requested: str) -> str:
    """``auto`` -> this worker's GPU when it has one, else cpu (decided in the worker, not the client)."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        from adv2core.errors import ConfigError

        raise ConfigError(f"device {requested!r} requested but this worker has no CUDA device")
    return requested


def device_label(device: str) -> str:
    """Human-readable device for provenance (``cuda:0 NVIDIA H100 80GB HBM3``, ``cpu``)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        return f"cuda:{idx} {torch.cuda.get_device_name(idx)}"
    return device


# ---------------------------------------------------------------------------------------- datasets
def embedded_data_cfg(rc: ResolvedConfig):
    """The EmbeddedDataConfig the run's embedded models (and their RTS maskers) train on."""
    from adv2core.data.synthetic import EmbeddedDataConfig

    explicit = rc.bench.models.embedded_data
    if explicit is not None:
        return EmbeddedDataConfig(**explicit)
    return EmbeddedDataConfig(**(rc.bench.data.options if rc.bench.data.dataset == "embedded" else {}))


def dataset_options(data: Any) -> dict[str, Any]:
    """Options for :func:`adv2core.data.registry.get_dataset` from a data section."""
    from pathlib import Path

    d = data
    opts = dict(d.options)
    if d.dataset == "embedded":
        return opts
    base = Path(os.path.expandvars(d.path)).expanduser() if d.path else None
    if base is not None:
        if d.dataset == "isic":
            opts.setdefault("image_dir", base / "images")
            opts.setdefault("labels_csv", base / "labels.csv")
        else:
            opts.setdefault("root", base)
    for key in ("labels_file", "labels_csv", "image_dir", "root"):
        v = opts.get(key)
        if isinstance(v, str):
            p = Path(os.path.expandvars(v)).expanduser()
            if not p.is_absolute() and base is not None and key != "root":
                p = base / p
            opts[key] = p
    return opts


def open_dataset(data: Any, data_root: str):
    """The dataset of a data section (cached per process: construction scans folders / checks caches)."""
    key = canonical_json([data.dataset, data.split, data.path, data.options, data_root])
    with _DATASETS_LOCK:
        ds = _DATASETS.get(key)
        if ds is None:
            from adv2core.data.registry import get_dataset as _get

            if os.environ.get("ADV2_DATA") != data_root:
                os.environ["ADV2_DATA"] = data_root
            ds = _get(data.dataset, data.split, **dataset_options(data))
            _DATASETS[key] = ds
    return ds


def get_dataset(rc: ResolvedConfig):
    """The run's dataset (see :func:`open_dataset`)."""
    return open_dataset(rc.bench.data, rc.data_root)


def selected_indices(rc: ResolvedConfig, n_available: int) -> list[int]:
    """The first ``num_images`` indices of the dataset's stable order (all if it has fewer)."""
    return list(range(min(rc.bench.data.num_images, n_available)))


def shard_dataset_indices(rc: ResolvedConfig, n_available: int, shard: int) -> list[int]:
    """Dataset indices of shard ``shard``: contiguous slices of the selected images."""
    from adv2core.data.sharding import shard_indices

    sel = selected_indices(rc, n_available)
    return [sel[i] for i in shard_indices(len(sel), shard, rc.num_shards)]


# ---------------------------------------------------------------------------------------- models
def _thread_cache() -> "OrderedDict[str, dict[str, Any]]":
    cache = getattr(_THREAD, "models", None)
    if cache is None:
        cache = _THREAD.models = OrderedDict()
    return cache


def _model_key(rc: ResolvedConfig, name: str, device: str) -> str:
    m = rc.bench.models
    extra: Any = None
    if name.endswith("-mini"):
        extra = [embedded_data_cfg(rc).model_dump(), m.train]
    elif name in m.custom:
        extra = m.custom[name]
    return canonical_json([name, m.weights_for(name), extra, device, rc.data_root])


def _weights_arg(rc: ResolvedConfig, name: str) -> Any:
    from pathlib import Path

    w = rc.bench.models.weights_for(name)
    if w is None or w == "imagenet":
        return w
    p = Path(os.path.expandvars(w)).expanduser()
    return p if p.is_absolute() else Path(rc.data_root) / p


def load_classifier(rc: ResolvedConfig, name: str, device: str, *, allow_train: bool | None = None):
    """Load (train if allowed and missing) a classifier by registry name, uncached."""
    from adv2core.models.registry import EMBEDDED_MODELS, load_model
    from adv2core.models.training import TrainConfig

    if name in EMBEDDED_MODELS:
        train = rc.bench.models.train_if_missing if allow_train is None else allow_train
        with TRAIN_LOCK:
            return load_model(
                name,
                data_cfg=embedded_data_cfg(rc),
                train_cfg=TrainConfig(**rc.bench.models.train),
                device=device,
                train_if_missing=train,
            )
    return load_model(name, weights=_weights_arg(rc, name), device=device, custom=rc.bench.models.custom)


def checkpoint_sha256(rc: ResolvedConfig, name: str) -> str | None:
    """sha256 of the weights file a model was loaded from (None: random weights)."""
    from pathlib import Path

    from adv2core.models.checkpoint import file_sha256
    from adv2core.models.registry import EMBEDDED_MODELS, checkpoint_path
    from adv2core.models.training import TrainConfig

    if name in EMBEDDED_MODELS:
        path = checkpoint_path(name, embedded_data_cfg(rc), TrainConfig(**rc.bench.models.train))
    else:
        w = _weights_arg(rc, name)
        if w is None:
            return None
        if w == "imagenet":
            from adv2core.models.registry import weights_file

            path = weights_file(name)
        else:
            path = Path(w)
    return file_sha256(path) if path is not None and Path(path).is_file() else None


def model_entry(rc: ResolvedConfig, name: str, device: str) -> dict[str, Any]:
    """The per-thread cache entry of a model: ``{"model": Classifier, "interpreters": {...}}``."""
    cache = _thread_cache()
    key = _model_key(rc, name, device)
    entry = cache.get(key)
    if entry is None:
        entry = {"model": load_classifier(rc, name, device), "interpreters": {}}
        cache[key] = entry
        while len(cache) > MAX_MODELS_PER_THREAD:
            cache.popitem(last=False)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    cache.move_to_end(key)
    return entry


def get_model(rc: ResolvedConfig, name: str, device: str):
    return model_entry(rc, name, device)["model"]


def interpreter_spec(rc: ResolvedConfig, model_name: str, interpreter: str):
    """The :class:`~adv2core.interpreters.registry.InterpreterSpec` of an interpreter in this run: its
    resolved settings (``rc.interpreter_params``, what the config hash covers) and, for real classifiers,
    a checkpoint from ``interpreters.checkpoints`` (relative paths against the data root)."""
    from pathlib import Path

    from adv2core.interpreters.registry import interpreter_spec as _spec

    ckpt: Path | None = None
    raw = rc.bench.interpreters.checkpoints.get(interpreter, {}).get(model_name)
    if raw:
        p = Path(os.path.expandvars(raw)).expanduser()
        ckpt = p if p.is_absolute() else Path(rc.data_root) / p
    return _spec(interpreter, config=rc.interpreter_params.get(interpreter, {}), checkpoint=ckpt)


def get_interpreter(rc: ResolvedConfig, model_name: str, interpreter: str, device: str):
    """An interpreter bound to the cached model of this thread (built once per thread). The masking model
    of an embedded classifier's RTS is trained on the run's embedded data when missing."""
    entry = model_entry(rc, model_name, device)
    interps = entry["interpreters"]
    if interpreter not in interps:
        from adv2core.interpreters.registry import build_interpreter

        data_cfg = embedded_data_cfg(rc) if model_name.endswith("-mini") else None
        with TRAIN_LOCK:  # RTS may train its masking model on first use
            interps[interpreter] = build_interpreter(interpreter_spec(rc, model_name, interpreter), entry["model"],
                                                     data_cfg=data_cfg, train_if_missing=True)
    return interps[interpreter]


def get_interpreters(rc: ResolvedConfig, model_name: str, names: Sequence[str], device: str) -> dict[str, Any]:
    return {n: get_interpreter(rc, model_name, n, device) for n in names}


def clear_caches() -> None:
    """Drop this thread's models and every dataset (tests; long-lived workers between runs)."""
    _thread_cache().clear()
    with _DATASETS_LOCK:
        _DATASETS.clear()


def set_torch_threads(n: int | None) -> None:
    """Bound torch's intra-op threads (several concurrent shards on few cores must not oversubscribe)."""
    if n is not None and n >= 1 and torch.get_num_threads() != n:
        torch.set_num_threads(n)
