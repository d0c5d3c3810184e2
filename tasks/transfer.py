"""Cross-evaluation stage: per (model, shard), every interpreter's map of every adversarial example.

For each source (interpreter i, attack a) of the shard, the adversarial images are rebuilt exactly
from the stored int16 perturbation (``apply_int16_perturbation`` on the reloaded clean images: the
same uint8-quantised image the attack's success was decided on) and re-explained by every
interpreter j (against j's benign maps from the ``benign`` stage); the rows (i, j) give the transferability matrix, the PGD sources its reference row.
Each (i, a) is written as its own ``transfer`` unit, so a crash loses at most one of them. Its arrays
keep every interpreter j's map of the examples (``image_id``, ``map_<j>``: float16, native size), so the
ensemble defence never explains them again. Maps the attack stage already computed for the same
examples (the diagonal j = i; every j for PGD, whose examples are shared) are read from its arrays and
measured, not recomputed.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from adv2core.config import ResolvedConfig
from adv2core.config.unitkeys import unit_keys
from adv2core.errors import Adv2Error
from adv2core.store import ResultStore, ShardUnit, table_from_rows
from adv2core.store.arrays import examples_digest, read_arrays
from adv2core.store.layout import arrays_path
from tasks import worker
from tasks.benign import StoredBenign, benign_unit
from tasks.common import Deadline, identity, stage_task, unit_summary


class MissingSource(Adv2Error):
    """The attack shard a transfer unit needs is not complete (it failed or was interrupted)."""


def transfer_units(rc: ResolvedConfig, model: str, shard: int) -> list[ShardUnit]:
    """The transfer units of one (model, shard): one per (source interpreter, cross-evaluated attack)."""
    return [
        ShardUnit(rc.config_hash, "transfer", model, interp, attack, shard, rc.num_shards)
        for attack in rc.cross_eval_attacks
        for interp in rc.bench.interpreters.names
    ]


def _cross_evaluate_fn():
    from adv2core.bench.cell import cross_evaluate

    return cross_evaluate


def run_transfer_shard(payload: dict[str, Any], run: dict[str, Any], model: str, shard: int,
                       force: bool = False, skip: Sequence[str] = ()) -> dict[str, Any]:
    """Body of the transfer task: writes every missing transfer unit of (model, shard) (all if ``force``).

    ``skip``: interpreters refused for ``model`` at preparation (``gates.on_refused=skip``): neither a
    source nor an evaluator here, never built (so an RTS masker is never trained by this task). The units
    written then record them in their manifest (no rows under them); a stored unit recording an
    interpreter not in ``skip`` lacks rows this run needs and is rewritten."""
    rc = worker.start_task(payload)
    store = ResultStore(rc.results_root)
    recorded = store.recorded_refusals(rc.config_hash)  # units written while interpreters were refused
    units = [u for u in transfer_units(rc, model, shard)
             if u.interpreter not in skip and (force or not store.is_complete(u)
                                               or not recorded.get(u, frozenset()) <= set(skip))]
    first = ShardUnit(rc.config_hash, "transfer", model, "all", "all", shard, rc.num_shards)
    if not units:
        return unit_summary(first, "skipped", units=0)
    t_all = time.perf_counter()
    deadline = Deadline(rc.bench.pipeline.shard_budget_s, f"transfer {model} shard {shard}")
    device = worker.resolve_device(rc.bench.pipeline.device)
    ds = worker.get_dataset(rc)
    model_obj = worker.get_model(rc, model, device)
    interps = worker.get_interpreters(rc, model, [n for n in rc.bench.interpreters.names if n not in skip], device)
    cross_evaluate = _cross_evaluate_fn()
    from adv2core.metrics import apply_int16_perturbation

    keys = unit_keys(rc, units)
    written = 0
    rows_total = 0
    benign_cache: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}  # one benign map per (image set, j)
    stored = {n: StoredBenign(store, benign_unit(rc, model, n, shard)) for n in interps}  # the benign stage's
    # Identical adversarial examples (PGD ignores the interpreter, so its sources coincide) are
    # explained once: key = the exact stored perturbation, targets and images.
    rows_cache: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    white_box: dict[tuple[str, str], tuple[str, Any] | None] = {}  # (j, attack) -> its stored examples' maps
    for unit in units:
        deadline.check()
        t0 = time.perf_counter()
        src = ShardUnit(rc.config_hash, "attack", model, unit.interpreter, unit.attack, shard, rc.num_shards)
        if not store.is_complete(src):
            raise MissingSource(f"transfer of {model}/{unit.interpreter}/{unit.attack} {unit.shard_name} needs "
                                f"its attack shard, which is not complete")
        base = {**identity(rc, run, unit), "source_interpreter": unit.interpreter}
        rows: list[dict[str, Any]] = []
        arrays: dict[str, Any] | None = None
        arr_file = arrays_path(store.root, src)
        if arr_file.is_file():
            arrs = read_arrays(arr_file)
            ids = [str(i) for i in arrs["image_id"]]
            if ids:
                batch = ds.load(arrs["index"].tolist())
                if list(batch.ids) != ids:
                    raise MissingSource(f"images of {src.shard_name} could not be reloaded identically "
                                        f"(dataset changed since the attack?)")
                x = batch.images.to(device)
                delta = torch.as_tensor(arrs["perturbation"]).to(device)
                x_adv = apply_int16_perturbation(x, delta)
                y = torch.as_tensor(arrs["true_class"]).to(device)
                y_t = torch.as_tensor(arrs["target_class"]).to(device)
                success = {i: bool(s) for i, s in zip(ids, arrs["success"])}
                key = tuple(ids)
                if key not in benign_cache:  # every source of the shard attacked the same images
                    benign_cache[key] = {n: _benign(stored[n], it, x, y, ids, device) for n, it in interps.items()}
                digest = examples_digest(ids, arrs["perturbation"], arrs["target_class"])
                white_box.setdefault((unit.interpreter, unit.attack), _white_box_entry(arrs, digest))
                if digest not in rows_cache:
                    maps: dict[str, torch.Tensor] = {}
                    measured = _white_box_maps(store, rc, model, shard, unit.attack, list(interps), digest,
                                               white_box, device)
                    out = cross_evaluate(model_obj, interps, x, x_adv, y, y_t, ids, benign_maps=benign_cache[key],
                                         maps_out=maps, adv_maps=measured)
                    rows_cache[digest] = (out, {"image_id": arrs["image_id"], **{
                        f"map_{n}": m.detach().to("cpu", torch.float16).numpy() for n, m in maps.items()}})
                out, arrays = rows_cache[digest]
                for r in out:
                    rows.append({**r, **base, "success": success.get(r["image_id"])})
        table = table_from_rows("transfer", rows)
        store.write_shard(unit, {"transfer": table}, arrays, run_id=run["run_id"], seconds=time.perf_counter() - t0,
                          unit_key=keys[unit], refused=skip)
        written += 1
        rows_total += len(rows)
    return unit_summary(first, "done", units=written, rows=rows_total,
                        seconds=round(time.perf_counter() - t_all, 3), device=worker.device_label(device))


def _benign(stored: Any, interp: Any, x: torch.Tensor, y: torch.Tensor, ids: list[str], device: Any) -> torch.Tensor:
    """The benign stage's maps of ``ids``; explained here only if that unit does not hold them all."""
    maps = stored.get(ids, device)
    return maps if maps is not None else interp.explain(x, y, ids=ids)


def _white_box_entry(arrs: dict[str, Any], digest: str | None = None) -> tuple[str, Any] | None:
    """(examples digest, adversarial maps) of an attack unit's arrays; None unless its maps are full
    precision and finite (anything else is recomputed)."""
    from tasks.attack import ADV_MAP_DTYPE

    m = arrs.get("adv_maps")
    if m is None or m.dtype != ADV_MAP_DTYPE or not len(m) or not np.isfinite(m).all():
        return None
    ids = [str(i) for i in arrs["image_id"]]
    return digest or examples_digest(ids, arrs["perturbation"], arrs["target_class"]), m


def _white_box_maps(store: ResultStore, rc: ResolvedConfig, model: str, shard: int, attack: str,
                    names: list[str], digest: str, cache: dict[tuple[str, str], tuple[str, Any] | None],
                    device: Any) -> dict[str, torch.Tensor]:
    """Interpreter j's maps of the examples with ``digest`` where the attack stage already computed them.

    The attack unit (model, j, attack) holds j's maps of exactly these examples when its stored
    perturbations, targets and ids are these: for an interpreter-free attack (PGD) that is every j, for
    ADV²-i only j = i. Those maps are measured again rather than recomputed (a MASK map costs about a
    second per image on a CPU)."""
    out: dict[str, torch.Tensor] = {}
    for j in names:
        if (j, attack) not in cache:
            wb = ShardUnit(rc.config_hash, "attack", model, j, attack, shard, rc.num_shards)
            path = arrays_path(store.root, wb)
            cache[(j, attack)] = (_white_box_entry(read_arrays(path))
                                  if store.is_complete(wb) and path.is_file() else None)
        entry = cache[(j, attack)]
        if entry is not None and entry[0] == digest:
            out[j] = torch.from_numpy(entry[1]).to(device)
    return out


transfer_shard = stage_task(run_transfer_shard, "transfer-shard", "transfer-{model}-{shard}")
