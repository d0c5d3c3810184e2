"""Benign stage: each interpreter's maps of the attacked images, once per (model, interpreter, shard).

Every attack unit of the shard (ADV^2 attacks use it as their target map, all attacks measure against
it) and the cross-evaluation read these maps instead of explaining the clean images again; for MASK
each map is a full optimisation. The unit stores one ``benign`` row per attacked image (its true class
and the benign map's localisation IoU) and the maps as float32 arrays (``image_id``, ``index``,
``true_class``, ``benign_maps``), so a reader gets exactly the tensor the interpreter returned.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch

from adv2core.config import ResolvedConfig
from adv2core.config.unitkeys import unit_key
from adv2core.store import ResultStore, ShardUnit, table_from_rows
from adv2core.store.arrays import read_arrays
from adv2core.store.layout import NO_ATTACK, arrays_path
from tasks import worker
from tasks.common import Deadline, identity, stage_task, to_numpy, unit_summary


def benign_unit(rc: ResolvedConfig, model: str, interpreter: str, shard: int) -> ShardUnit:
    return ShardUnit(rc.config_hash, "benign", model, interpreter, NO_ATTACK, shard, rc.num_shards)


def benign_units(rc: ResolvedConfig) -> list[ShardUnit]:
    b = rc.bench
    return [benign_unit(rc, m, i, s) for m in b.models.names for i in b.interpreters.names
            for s in range(rc.num_shards)]


class StoredBenign:
    """The stored benign maps of one (model, interpreter, shard), looked up by image id (None: not stored)."""

    def __init__(self, store: ResultStore, unit: ShardUnit) -> None:
        self.maps: np.ndarray | None = None
        self.row: dict[str, int] = {}
        path = arrays_path(store.root, unit)
        if store.is_complete(unit) and path.is_file():
            arrs = read_arrays(path)
            self.maps = arrs["benign_maps"]
            self.row = {str(i): k for k, i in enumerate(arrs["image_id"])}

    def get(self, ids: Sequence[str], device: Any) -> torch.Tensor | None:
        """Maps [N,1,h,w] float32 of ``ids`` in that order, or None if any is missing (then compute them)."""
        if self.maps is None or not ids or any(i not in self.row for i in ids):
            return None
        return torch.from_numpy(self.maps[[self.row[i] for i in ids]]).to(device)


def run_benign_shard(payload: dict[str, Any], run: dict[str, Any], model: str, interpreter: str, shard: int,
                     force: bool = False) -> dict[str, Any]:
    """Body of the benign task: explain the shard's attacked images (the population) for their labels."""
    from adv2core.bench.cell import select_population
    from adv2core.metrics import localization_iou

    rc = worker.start_task(payload)
    unit = benign_unit(rc, model, interpreter, shard)
    store = ResultStore(rc.results_root)
    if not force and store.is_complete(unit):
        return unit_summary(unit, "skipped")
    t0 = time.perf_counter()
    deadline = Deadline(rc.bench.pipeline.shard_budget_s, f"benign maps {model}/{interpreter} {unit.shard_name}")
    device = worker.resolve_device(rc.bench.pipeline.device)
    ds = worker.get_dataset(rc)
    indices = worker.shard_dataset_indices(rc, len(ds), shard)
    index_of = {ds.ids[i]: i for i in indices}
    model_obj = worker.get_model(rc, model, device)
    interp = worker.get_interpreter(rc, model, interpreter, device)
    base = {k: v for k, v in identity(rc, run, unit).items() if k != "attack"}
    base["interpreter"] = interpreter
    rows: list[dict[str, Any]] = []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image_id", "index", "true_class", "benign_maps")}
    bs = rc.bench.attacks.batch_size
    for start in range(0, len(indices), bs):  # the attack stage's batches and population
        deadline.check()
        batch, _ = select_population(model_obj, ds.load(indices[start:start + bs]), rc.bench.data.population)
        if len(batch) == 0:
            continue
        t_b = time.perf_counter()
        b = batch.to(device)
        ids = list(b.ids)
        maps = interp.explain(b.images, b.labels.long(), ids=ids)
        if b.masks is not None:
            loc = localization_iou(interp.saliency(maps), b.masks).detach().double().cpu().tolist()
        else:
            loc = [math.nan] * len(ids)
        per = (time.perf_counter() - t_b) / len(ids)
        labels = to_numpy(b.labels, np.int64)
        rows += [{**base, "image_id": i, "true_class": int(c), "seconds": per,
                  "loc_iou_benign": None if math.isnan(v) else float(v)} for i, c, v in zip(ids, labels.tolist(), loc)]
        parts["image_id"].append(np.asarray(ids, dtype=str))
        parts["index"].append(np.asarray([index_of[i] for i in ids], dtype=np.int64))
        parts["true_class"].append(labels)
        parts["benign_maps"].append(to_numpy(maps, np.float32))
    deadline.check()
    arrays = {k: np.concatenate(v) for k, v in parts.items() if v} or None
    seconds = time.perf_counter() - t0
    store.write_shard(unit, {"benign": table_from_rows("benign", rows)}, arrays, run_id=run["run_id"],
                      seconds=seconds, unit_key=unit_key(rc, unit))
    return unit_summary(unit, "done", rows=len(rows), seconds=round(seconds, 3), device=worker.device_label(device))


benign_shard = stage_task(run_benign_shard, "benign-shard", "benign-{model}-{interpreter}-{shard}")
