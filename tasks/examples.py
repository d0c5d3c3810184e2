"""Interpreter-free attacks: examples once per (model, shard), measured under every interpreter.

PGD and StAdv do not use the interpreter, so the attack stage computes them once per (model, shard) as
an ``examples`` unit (interpreter ``none``: the ``examples`` table + int16 perturbation arrays). Each
(model, interpreter, attack, shard) unit of such an attack then rebuilds the judged images exactly from
the stored perturbation (``apply_int16_perturbation`` on the reloaded clean images), measures them with
:func:`adv2core.bench.evaluate.evaluate_examples` (the code :func:`~adv2core.bench.cell.run_cell` uses
for its own maps) and writes the usual ``samples`` rows and attack arrays, so readers of the attack
stage (cross-evaluation, defences, reports) see the same unit they always did.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from adv2core.attacks.registry import interpreter_free
from adv2core.config import ResolvedConfig
from adv2core.config.unitkeys import unit_key
from adv2core.errors import Adv2Error
from adv2core.store import ResultStore, ShardUnit, table_from_rows
from adv2core.store.arrays import read_arrays
from adv2core.store.layout import NO_INTERPRETER, arrays_path, table_path
from tasks import worker
from tasks.common import Deadline, identity, to_numpy, unit_summary


class MissingExamples(Adv2Error):
    """The examples unit an evaluation needs is not complete (it failed or was interrupted)."""




def examples_unit(rc: ResolvedConfig, model: str, attack: str, shard: int) -> ShardUnit:
    return ShardUnit(rc.config_hash, "examples", model, NO_INTERPRETER, attack, shard, rc.num_shards)


def examples_units(rc: ResolvedConfig) -> list[ShardUnit]:
    """One unit per (model, interpreter-free attack, shard) of the run."""
    b = rc.bench
    return [examples_unit(rc, m, a, s) for m in b.models.names for a in b.attacks.names if interpreter_free(a)
            for s in range(rc.num_shards)]


def evaluate_examples_shard(rc: ResolvedConfig, run: dict[str, Any], unit: ShardUnit,
                            store: ResultStore) -> dict[str, Any]:
    """Write the ``samples`` rows and arrays of ``unit`` from its stored examples (no attack runs here)."""
    from adv2core.bench.evaluate import evaluate_examples
    from adv2core.metrics import apply_int16_perturbation
    from tasks.attack import ADV_MAP_DTYPE, ARRAY_KEYS, attack_config
    from tasks.benign import StoredBenign, benign_unit

    src = examples_unit(rc, unit.model, unit.attack, unit.shard)
    if not store.is_complete(src):
        raise MissingExamples(f"{unit.model}/{unit.interpreter}/{unit.attack} {unit.shard_name} needs the "
                              f"{unit.attack} examples of its shard, which are not complete")
    t0 = time.perf_counter()
    deadline = Deadline(rc.bench.pipeline.shard_budget_s, f"{unit.model}/{unit.interpreter}/{unit.attack} "
                                                          f"{unit.shard_name}")
    device = worker.resolve_device(rc.bench.pipeline.device)
    ds = worker.get_dataset(rc)
    indices = worker.shard_dataset_indices(rc, len(ds), unit.shard)
    ex_rows = pq.read_table(table_path(store.root, src)).to_pylist()
    arr_file = arrays_path(store.root, src)
    arrs = read_arrays(arr_file) if arr_file.is_file() else {}
    attacked = [str(i) for i in arrs.get("image_id", [])]
    pos = {i: k for k, i in enumerate(attacked)}
    by_id = {r["image_id"]: r for r in ex_rows}
    interp = worker.get_interpreter(rc, unit.model, unit.interpreter, device)
    preset = attack_config(rc)
    base = {**identity(rc, run, unit), "interpreter": unit.interpreter}
    stored = StoredBenign(store, benign_unit(rc, unit.model, unit.interpreter, unit.shard))

    rows: list[dict[str, Any]] = [{**r, **base} for r in ex_rows if r["image_id"] not in pos]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ARRAY_KEYS}
    bs = rc.bench.attacks.batch_size
    for start in range(0, len(indices), bs):  # the attack's batches: the same target-image pools
        deadline.check()
        wanted = {ds.ids[i] for i in indices[start:start + bs]}
        sel = [k for k, i in enumerate(attacked) if i in wanted]
        if not sel:
            continue
        batch = ds.load(arrs["index"][sel].tolist())
        ids = [attacked[k] for k in sel]
        if list(batch.ids) != ids:
            raise MissingExamples(f"images of {src.shard_name} could not be reloaded identically "
                                  f"(dataset changed since the attack?)")
        b = batch.to(device)
        x = b.images
        x_q = apply_int16_perturbation(x, torch.as_tensor(arrs["perturbation"][sel]).to(device))
        y = torch.as_tensor(arrs["true_class"][sel]).to(device)
        y_t = torch.as_tensor(arrs["target_class"][sel]).to(device)
        ev = evaluate_examples(preset, interp, x, x_q, y, y_t, ids, [by_id[i] for i in ids],
                               seed=int(rc.bench.seed), masks=b.masks, benign_maps=stored.get(ids, device))
        rows.extend({**r, **base} for r in ev.rows)
        for k in ARRAY_KEYS[:6]:
            parts[k].append(arrs[k][sel])
        parts["benign_maps"].append(to_numpy(ev.benign_maps, np.float16))
        parts["adv_maps"].append(to_numpy(ev.adv_maps, ADV_MAP_DTYPE))
    deadline.check()
    table = table_from_rows("samples", rows)
    arrays = {k: np.concatenate(v) for k, v in parts.items() if v} or None
    seconds = time.perf_counter() - t0
    store.write_shard(unit, {"samples": table}, arrays, run_id=run["run_id"], seconds=seconds,
                      unit_key=unit_key(rc, unit))
    return unit_summary(unit, "done", rows=len(rows), ok=sum(1 for r in rows if r.get("status") == "ok"),
                        success=sum(1 for r in rows if r.get("success")), seconds=round(seconds, 3),
                        device=worker.device_label(device))
