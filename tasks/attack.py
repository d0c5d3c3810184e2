"""Attack stage: one task per (model, interpreter, attack, shard), never per image.

Benign maps come from the shard's ``benign`` unit (:mod:`tasks.benign`). Interpreter-free attacks (PGD, StAdv) are computed once per (model, shard) as an ``examples`` unit
(interpreter ``none``); their (model, interpreter, attack, shard) units then only measure those stored
examples under the interpreter (:mod:`tasks.examples`), writing the same ``samples`` rows and arrays.

The task receives only names and the small resolved-config payload, loads the model and interpreter
inside the worker (per-thread cache, :mod:`tasks.worker`), runs the bench cell over the shard in
batches, writes the shard's ``samples`` rows and its heavy arrays through the results store (atomic,
manifest last) and returns a small summary dict.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from adv2core.config import ResolvedConfig
from adv2core.config.unitkeys import unit_key
from adv2core.store import ResultStore, ShardUnit, table_from_rows
from adv2core.store.schemas import schema_for
from adv2core.store.layout import NO_INTERPRETER
from tasks import worker
from tasks.common import Deadline, identity, stage_task, to_numpy, unit_summary


def attack_config(rc: ResolvedConfig):
    """The attacks package's config object rebuilt from the (pruned, expanded) payload."""
    from adv2core.attacks.config import AttacksConfig, validate_config

    return validate_config(AttacksConfig, rc.attack_params)


def _run_cell_fn():
    from adv2core.bench.cell import run_cell

    return run_cell


def select_population(model: Any, batch: Any, population: str):
    from adv2core.bench.cell import select_population as select

    return select(model, batch, population)


def run_attack_shard(payload: dict[str, Any], run: dict[str, Any], model: str, interpreter: str, attack: str,
                     shard: int, force: bool = False) -> dict[str, Any]:
    """Body of the attack task (also called inline by tests and the inline engine).

    A complete unit is skipped (a concurrent or earlier run wrote it) unless ``force`` (the plan found
    it stale: its stored images differ from the shard's current ones).
    """
    from tasks.benign import StoredBenign, benign_unit
    from adv2core.attacks.registry import interpreter_free
    from tasks.examples import evaluate_examples_shard

    rc = worker.start_task(payload)
    examples = interpreter == NO_INTERPRETER
    unit = ShardUnit(rc.config_hash, "examples" if examples else "attack", model, interpreter, attack, shard,
                     rc.num_shards)
    store = ResultStore(rc.results_root)
    if not force and store.is_complete(unit):
        return unit_summary(unit, "skipped")
    if not examples and interpreter_free(attack):
        return evaluate_examples_shard(rc, run, unit, store)
    t0 = time.perf_counter()
    deadline = Deadline(rc.bench.pipeline.shard_budget_s, f"{model}/{interpreter}/{attack} {unit.shard_name}")
    device = worker.resolve_device(rc.bench.pipeline.device)
    ds = worker.get_dataset(rc)
    indices = worker.shard_dataset_indices(rc, len(ds), shard)
    index_of = {ds.ids[i]: i for i in indices}
    model_obj = worker.get_model(rc, model, device)
    interp_obj = None if examples else worker.get_interpreter(rc, model, interpreter, device)
    cfg = attack_config(rc)
    run_cell = _run_cell_fn()
    base = identity(rc, run, unit) if examples else {**identity(rc, run, unit), "interpreter": interpreter}
    keys = EXAMPLE_ARRAY_KEYS if examples else ARRAY_KEYS
    stored = None if examples else StoredBenign(store, benign_unit(rc, model, interpreter, shard))

    rows: list[dict[str, Any]] = []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    bs = rc.bench.attacks.batch_size
    for start in range(0, len(indices), bs):
        deadline.check()
        batch = ds.load(indices[start:start + bs])  # unreadable images -> batch.errors -> 'error' rows
        batch, excluded = select_population(model_obj, batch, rc.bench.data.population)
        rows.extend({**r, **base} for r in excluded)
        benign = stored.get(list(batch.ids), device) if stored is not None else None  # the benign stage's maps
        res = run_cell(model, None if examples else interpreter, attack, batch, cfg, seed=int(rc.bench.seed), device=device,
                       model=model_obj, interpreter=interp_obj, oom=rc.bench.attacks.oom, benign_maps=benign)
        cell_rows = [{**r, **base} for r in res.rows]
        rows.extend(cell_rows)
        if len(batch):
            _collect_arrays(parts, batch, res, cell_rows, index_of)
    deadline.check()

    if examples:
        allowed = set(schema_for("examples").names)
        rows = [{k: v for k, v in r.items() if k in allowed} for r in rows]
    table = table_from_rows(unit.rows_table, rows)
    arrays = {k: np.concatenate(v) for k, v in parts.items() if v} or None
    seconds = time.perf_counter() - t0
    store.write_shard(unit, {unit.rows_table: table}, arrays, run_id=run["run_id"], seconds=seconds,
                      unit_key=unit_key(rc, unit))
    n_ok = sum(1 for r in rows if r.get("status") == "ok")
    n_success = sum(1 for r in rows if r.get("success"))
    return unit_summary(unit, "done", rows=len(rows), ok=n_ok, success=n_success, seconds=round(seconds, 3),
                        device=worker.device_label(device))


#: Arrays stored per attack shard (one entry per attacked image, in row order of the ok/failed rows).
ARRAY_KEYS = ("image_id", "index", "true_class", "target_class", "success", "perturbation", "benign_maps", "adv_maps")
#: The adversarial maps are kept at full precision: the cross-evaluation measures them again instead of
#: recomputing them (its diagonal, and every interpreter's map of PGD examples), and a float16 copy would
#: make those rows differ from the white-box rows measured on the same maps.
ADV_MAP_DTYPE = np.float32
#: Arrays of an ``examples`` unit: no maps (they belong to an interpreter).
EXAMPLE_ARRAY_KEYS = ARRAY_KEYS[:6]


def _collect_arrays(parts: dict[str, list[np.ndarray]], batch: Any, res: Any, cell_rows: list[dict[str, Any]],
                    index_of: dict[str, int]) -> None:
    ids = list(getattr(res, "ids", None) or batch.ids)  # tensor order of the loaded images
    by_id = {r["image_id"]: r for r in cell_rows}
    parts["image_id"].append(np.asarray(ids, dtype=str))
    parts["index"].append(np.asarray([index_of[i] for i in ids], dtype=np.int64))
    label = dict(zip(batch.ids, to_numpy(batch.labels, np.int64).tolist()))
    parts["true_class"].append(np.asarray([label[i] for i in ids], dtype=np.int64))
    parts["target_class"].append(to_numpy(res.target_classes, np.int64))
    parts["success"].append(np.asarray([bool(by_id.get(i, {}).get("success")) for i in ids], dtype=bool))
    parts["perturbation"].append(to_numpy(res.perturbation_int16, np.int16))
    if "benign_maps" in parts:
        parts["benign_maps"].append(to_numpy(res.benign_maps, np.float16))
        parts["adv_maps"].append(to_numpy(res.adv_maps, ADV_MAP_DTYPE))


attack_shard = stage_task(run_attack_shard, "attack-shard", "attack-{model}-{interpreter}-{attack}-{shard}")
