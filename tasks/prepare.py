"""Preparation stage: make every model (and RTS masking model) of the run exist before the fan-out.

Embedded classifiers and RTS masking models are trained on first use and cached on disk. Doing that
once per model *before* the shard tasks start means concurrent shard tasks (threads or Dask workers)
never race to train the same checkpoint; they only load it.
"""

from __future__ import annotations

import time
from typing import Any


from adv2core.config import ResolvedConfig
from adv2core.models.checkpoint import file_sha256
from tasks import worker
from tasks.common import stage_task

def run_prepare_model(payload: dict[str, Any], model: str) -> dict[str, Any]:
    """Load (training if needed and allowed) the classifier and its interpreters, then run the preflight
    gates (:mod:`adv2core.gates`): a refused model or interpreter raises ``GateError`` (the run stops with
    one line); with ``gates.on_degenerate=mark`` the report names the cells to mark.

    With ``gates.on_refused=skip`` an interpreter refused here — its RTS masking model missed its quality
    bar while training, or its benign maps failed the gate — is reported ``status: refused`` with the
    reason instead, and the flow drops its cells for this model (a refused model still stops the run)."""
    from adv2core.gates import preflight_dataset

    rc = ResolvedConfig.from_payload(payload)
    worker.setup_worker(rc)
    t0 = time.perf_counter()
    device = worker.resolve_device(rc.bench.pipeline.device)
    model_obj = worker.get_model(rc, model, device)
    interps, refused = _load_interpreters(rc, model, device)
    d = rc.bench.data
    report = preflight_dataset(model_obj, model, interps, worker.get_dataset(rc), rc.bench.gates,
                               split=f"{d.dataset}/{d.split} split", seed=int(rc.bench.seed))
    report["interpreters"] = {n: report["interpreters"].get(n) or refused[n] for n in rc.bench.interpreters.names}
    report["checkpoint_sha256"] = worker.checkpoint_sha256(rc, model)
    for name, it in interps.items():
        path = getattr(it, "checkpoint_path", None)
        if path is not None and report["interpreters"][name]["status"] != "refused":
            report["interpreters"][name]["checkpoint_sha256"] = file_sha256(path)
    return {"model": model, "seconds": round(time.perf_counter() - t0, 3), "device": worker.device_label(device),
            "preflight": report}


def _load_interpreters(rc: ResolvedConfig, model: str, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's interpreters of ``model`` (training RTS maskers on first use) and, with
    ``gates.on_refused=skip``, the gate reports of those whose construction raised ``GateError``."""
    from adv2core.gates import GateError, refusal

    if rc.bench.gates.on_refused != "skip":
        return worker.get_interpreters(rc, model, rc.bench.interpreters.names, device), {}
    interps: dict[str, Any] = {}
    refused: dict[str, Any] = {}
    for name in rc.bench.interpreters.names:
        try:
            interps[name] = worker.get_interpreter(rc, model, name, device)
        except GateError as exc:
            refused[name] = refusal(model, name, exc)
    return interps, refused


prepare_model = stage_task(run_prepare_model, "prepare-model", "prepare-{model}", retries=1)
