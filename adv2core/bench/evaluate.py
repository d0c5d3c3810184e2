"""Maps of adversarial examples under one interpreter, measured the project's way (one code path).

:func:`run_cell` uses :func:`map_metrics` right after its attack; the pipeline uses
:func:`evaluate_examples` on examples an interpreter-free attack (PGD, StAdv) computed once per
(model, shard), so every interpreter's ``samples`` rows come from the same computation as the
interpreter-specific attacks' rows; the cross-evaluation (:func:`adv2core.bench.cell.cross_evaluate`,
the ``transfer`` rows) calls :func:`map_metrics` too, with the benign map as reference. Map metrics compare the adversarial map (``interpreter.explain`` of
the quantised image for c_t) with the reference map m_t (the benign map for y in the main setting), at
native resolution; IoU uses saliencies (MASK: 1 - m).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from adv2core.attacks.config import AttacksConfig
from adv2core.attacks.targets import check_target_map, shape_maps, target_image_maps
from adv2core.data.types import Batch
from adv2core.interpreters.base import Interpreter
from adv2core.metrics import DEFAULT_KS, iou_curve, l1_distance, l2_distance, localization_iou
from adv2core.store.schemas import MAP_METRICS

IOU_KEYS: tuple[str, ...] = tuple(f"iou_k{k:02d}" for k in DEFAULT_KS)
#: Columns :func:`map_metrics` fills (the rest of a samples row does not depend on the interpreter): the
#: store schema's one list, which also defines the ``examples`` table as ``samples`` without them.
MAP_KEYS: tuple[str, ...] = MAP_METRICS


def floats(v: torch.Tensor) -> list[float | None]:
    """Tensor [N] -> Python floats with NaN as None (nullable Parquet columns); one host copy per column."""
    return [None if (x is None or math.isnan(x)) else float(x) for x in v.detach().double().cpu().tolist()]


def make_target_maps(
    preset: AttacksConfig,
    interpreter: Interpreter,
    x: torch.Tensor,
    y: torch.Tensor,
    y_t: torch.Tensor,
    ids: Sequence[str],
    benign: torch.Tensor,
    *,
    seed: int,
    pool: Batch | None = None,
) -> tuple[torch.Tensor, list[str | None]]:
    """m_t per the preset's ``target.kind`` and a per-sample error (None = fine)."""
    kind = preset.target.kind
    n = x.shape[0]
    if kind == "benign":
        return benign, [None] * n
    side = interpreter.map_size(x.shape[-1])
    if kind == "shape":
        return shape_maps(ids, side, seed=seed, invert=interpreter.name == "mask", cfg=preset.target.shape,
                          device=x.device), [None] * n
    # target-image: a pool image classified correctly as c_t (default pool: this batch)
    pool = pool or Batch(x, y, list(ids))
    maps, idx = target_image_maps(interpreter, pool.images, pool.labels, pool.ids, y_t, ids, seed)
    errs = [None if int(i) >= 0 else "no pool image correctly classified as the target class" for i in idx.tolist()]
    # an unavailable target map would poison the loss: aim those samples at their benign map instead
    ok = (idx >= 0).to(x.device).view(-1, 1, 1, 1)
    return torch.where(ok, maps, benign), errs


def map_metrics(
    interpreter: Interpreter,
    x_q: torch.Tensor,
    y_t: torch.Tensor,
    ids: Sequence[str],
    benign: torch.Tensor,
    m_t: torch.Tensor,
    masks: torch.Tensor | None,
    adv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, list[float | None]]]:
    """The adversarial maps of ``x_q`` for ``y_t`` and the :data:`MAP_KEYS` columns against ``m_t``.

    ``adv``: those maps when an earlier stage already computed them (the same examples, interpreter and
    ids), so they are measured, not explained again."""
    if adv is None:
        adv = interpreter.explain(x_q, y_t, ids=list(ids))
    sal_adv, sal_ref = interpreter.saliency(adv), interpreter.saliency(m_t)
    iou = iou_curve(sal_adv, sal_ref, DEFAULT_KS)
    n = x_q.shape[0]
    if masks is not None:
        loc_b = localization_iou(interpreter.saliency(benign), masks.to(x_q.device))
        loc_a = localization_iou(sal_adv, masks.to(x_q.device))
    else:
        loc_b = loc_a = torch.full((n,), math.nan, device=x_q.device)
    cols = {
        "l1": floats(l1_distance(adv, m_t)),
        "l2": floats(l2_distance(adv, m_t)),
        **{k: floats(iou[:, j]) for j, k in enumerate(IOU_KEYS)},
        "iou_mean": floats(iou.mean(dim=1)),
        "loc_iou_benign": floats(loc_b),
        "loc_iou_adv": floats(loc_a),
    }
    return adv, cols


@dataclass
class Evaluation:
    """One interpreter's view of a batch of stored examples."""

    rows: list[dict[str, Any]]  # the example rows with the map columns (and a target-map error) filled in
    benign_maps: torch.Tensor  # [N,1,h,w] maps of x for y
    adv_maps: torch.Tensor  # [N,1,h,w] maps of x_q for c_t


def evaluate_examples(
    preset: AttacksConfig,
    interpreter: Interpreter,
    x: torch.Tensor,
    x_q: torch.Tensor,
    y: torch.Tensor,
    y_t: torch.Tensor,
    ids: Sequence[str],
    example_rows: Sequence[dict[str, Any]],
    *,
    seed: int,
    masks: torch.Tensor | None = None,
    benign_maps: torch.Tensor | None = None,
) -> Evaluation:
    """Measure examples of an interpreter-free attack under ``interpreter`` (the attacked batch is the pool).

    ``example_rows`` are the stored per-image rows of the examples (same order as ``ids``). A row whose
    attack crashed (status ``error``) is kept as it is; an ``ok`` row becomes ``error`` when the
    interpreter's target map is unavailable, exactly as :func:`adv2core.bench.cell.run_cell` decides.
    """
    ids = list(ids)
    side = interpreter.map_size(x.shape[-1])
    benign = (check_target_map(benign_maps.to(x.device), len(ids), side) if benign_maps is not None
              else interpreter.explain(x, y, ids=ids))
    m_t, errs = make_target_maps(preset, interpreter, x, y, y_t, ids, benign, seed=seed)
    adv, cols = map_metrics(interpreter, x_q, y_t, ids, benign, m_t, masks)
    rows: list[dict[str, Any]] = []
    for j, ex in enumerate(example_rows):
        if ex["image_id"] != ids[j]:
            raise ValueError(f"example row {j} is {ex['image_id']!r}, expected {ids[j]!r}")
        row = dict(ex)
        if ex.get("status") in ("ok", "failed"):
            row.update({k: cols[k][j] for k in MAP_KEYS})
            if ex["status"] == "ok" and errs[j]:
                row.update(status="error", error=errs[j])
        rows.append(row)
    return Evaluation(rows, benign, adv)
