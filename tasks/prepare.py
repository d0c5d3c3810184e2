"""Preparation stage: make every model (and RTS masking model) of the run exist before the fan-out.

Embedded classifiers and RTS masking models are trained on first use and cached on disk. Doing that
once per model *before* the shard tasks start means concurrent shard tasks (threads or Dask workers)
never race to train the same checkpoint; they only load it.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from adv2core.config import ResolvedConfig
from tasks import worker
from tasks.common import retry_transient

#: Interpreters whose construction may train something (and must therefore happen here first).
TRAINED_INTERPRETERS = ("rts",)


def run_prepare_model(payload: dict[str, Any], model: str) -> dict[str, Any]:
    """Load (training if needed and allowed) the classifier and the interpreters that need training."""
    rc = ResolvedConfig.from_payload(payload)
    worker.setup_worker(rc)
    t0 = time.perf_counter()
    device = worker.resolve_device(rc.bench.pipeline.device)
    worker.get_model(rc, model, device)
    for name in rc.bench.interpreters.names:
        if name in TRAINED_INTERPRETERS:
            worker.get_interpreter(rc, model, name, device)
    return {"model": model, "seconds": round(time.perf_counter() - t0, 3), "device": worker.device_label(device)}


prepare_model = task(
    name="prepare-model",
    task_run_name="prepare-{model}",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
    persist_result=False,
)(run_prepare_model)
