"""One benchmark cell: (model, interpreter, attack) on one batch, evaluated the project's way.

Evaluation rule (project-wide, spec pitfall 8.8): every attack is judged on its **round-to-nearest
uint8-quantised** adversarial image — success, confidence, adversarial maps, Linf. (The MASK attack's
internal re-solves keep the official truncation; that stays inside the attack.) A sample is a success
when the attack's own rule says so (final argmax, Grad's p_t threshold, MASK's best snapshot) *and*
the quantised image is classified as c_t.

Map metrics compare the adversarial map (interpreter.explain of the quantised image for c_t) with the
reference map m_ref = the attack's target map (the benign map for y in the main setting), at native
resolution; IoU uses saliencies (MASK: 1 - m). This module is plain PyTorch: the pipeline tasks call
:func:`run_cell` and :func:`cross_evaluate`; ``adv2 attack`` calls :func:`attack_embedded`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from adv2core.attacks.config import AttacksConfig, load_preset
from adv2core.attacks.registry import attack_class, build_attack
from adv2core.attacks.result import AttackResult
from adv2core.attacks.targets import check_target_map, target_classes
from adv2core.bench.evaluate import IOU_KEYS, MAP_KEYS, make_target_maps, map_metrics
from adv2core.bench.evaluate import floats as _f
from adv2core.data.types import Batch
from adv2core.errors import Adv2Error, ConfigError
from adv2core.interpreters.base import Interpreter
from adv2core.metrics import (
    attack_success,
    confidence,
    perturbation_to_int16,
    quantize_uint8,
    target_probability,
)
from adv2core.models.classifier import Classifier
from adv2core.transient import call_with_oom_policy, is_transient, merge_attack_results

#: Per-sample columns of a cell row, in the samples-table order (the pipeline adds run/config/... keys).
ROW_KEYS: tuple[str, ...] = (
    "image_id", "true_class", "target_class", "pred_class", "success", "confidence", "target_prob",
    "benign_pred", "l1", "l2", *IOU_KEYS, "iou_mean", "loc_iou_benign", "loc_iou_adv", "linf", "steps",
    "seconds", "status", "error",
)
TRANSFER_KEYS: tuple[str, ...] = ("image_id", "eval_interpreter", "l1", "l2", "iou_mean", *IOU_KEYS)


@dataclass
class CellResult:
    """Rows (one per image, errors included) plus the tensors the pipeline stores."""

    rows: list[dict[str, Any]]
    x_adv_q: torch.Tensor  # [N,3,H,W] round-to-nearest quantised adversarial images (loaded images only)
    perturbation_int16: np.ndarray  # [N,3,H,W] round(255 x_adv) - round(255 x)
    benign_maps: torch.Tensor  # [N,1,h,w] interpreter maps of x for y
    adv_maps: torch.Tensor  # [N,1,h,w] interpreter maps of x_adv_q for c_t
    target_classes: torch.Tensor  # [N]
    target_maps: torch.Tensor | None = None  # [N,1,h,w] m_t (= benign_maps in the main setting)
    ids: list[str] = field(default_factory=list)  # ids of the N loaded images, in tensor order
    attack_result: AttackResult | None = None
    seconds: float = 0.0


def _i(v: torch.Tensor) -> list[int]:
    return [int(x) for x in v.detach().cpu().tolist()]


def _error_row(image_id: str, error: str, true_class: int | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {k: None for k in ROW_KEYS}
    row.update(image_id=image_id, true_class=true_class, status="error", error=error)
    return row


def excluded_row(image_id: str, true_class: int, pred: int) -> dict[str, Any]:
    """The row of an image left out of the attacked population (misclassified by the model)."""
    row: dict[str, Any] = {k: None for k in ROW_KEYS}
    row.update(image_id=image_id, true_class=true_class, benign_pred=pred, status="excluded",
               error=f"misclassified as {pred}: not attacked (data.population=correct)")
    return row


def select_population(model: Classifier, batch: Batch, population: str) -> tuple[Batch, list[dict[str, Any]]]:
    """The part of ``batch`` to attack and 'excluded' rows for the rest (spec 5: the paper attacks only
    images the model classifies correctly). Deterministic: it depends on the model and images alone."""
    if population == "all" or len(batch) == 0:
        return batch, []
    if population != "correct":
        raise ConfigError(f"unknown data.population {population!r}; use correct or all")
    from adv2core.gates import predictions

    pred = predictions(model, batch.images)
    labels = batch.labels.cpu().long()
    keep = (pred == labels).nonzero().flatten()
    rows = [excluded_row(i, int(t), int(p)) for i, t, p, ok in
            zip(batch.ids, labels.tolist(), pred.tolist(), (pred == labels).tolist()) if not ok]
    kept = batch.select(keep)
    kept.errors = list(batch.errors)
    return kept, rows


def default_interpreter(
    name: str, model: Classifier, preset: AttacksConfig, *, data_cfg: Any = None, train_if_missing: bool = False
) -> Interpreter:
    """Build interpreter ``name`` with the attack preset's interpreter preset (``interpreter_preset``; None:
    the model's default) through :func:`adv2core.interpreters.registry.build_interpreter` (RTS from its cache)."""
    from adv2core.interpreters.registry import build_interpreter, interpreter_spec

    spec = interpreter_spec(name, preset.interpreter_preset, model.name)
    return build_interpreter(spec, model, data_cfg=data_cfg, train_if_missing=train_if_missing)


@torch.no_grad()
def _predict(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def run_cell(
    model_name: str,
    interpreter_name: str | None,
    attack_name: str,
    batch: Batch,
    cfg: AttacksConfig | str | dict | None,
    *,
    seed: int,
    device: torch.device | str,
    model: Classifier | None = None,
    interpreter: Interpreter | None = None,
    target_map: torch.Tensor | None = None,
    pool: Batch | None = None,
    data_cfg: Any = None,
    benign_maps: torch.Tensor | None = None,
    oom: str = "retry",
) -> CellResult:
    """Attack one batch with (model, interpreter, attack) and return per-sample rows and tensors.

    ``cfg`` is a preset (name, YAML path, dict or :class:`AttacksConfig`). ``model``/``interpreter``
    may be passed pre-built (the pipeline caches them); otherwise they are loaded by name (embedded
    models from their checkpoint cache, ``data_cfg`` selecting the dataset they were trained on).
    ``target_map`` overrides the preset's target choice; ``pool`` is where target-class images are
    drawn from for ``target.kind = 'target-image'`` (default: the batch itself). ``benign_maps`` may
    pass this batch's benign maps (for y) computed by an earlier cell, e.g. to share MASK solves across
    attacks (they must come from the same interpreter and ids). Images that failed to
    load (``batch.errors``) become 'error' rows. Configuration mistakes raise :class:`ConfigError`;
    transient failures (out of memory, I/O: :mod:`adv2core.transient`) propagate to the task's retry
    policy, or with ``oom='split'`` an out-of-memory attack call is retried on the halves of the batch;
    any other runtime failure of the attack turns the batch's rows into 'error' rows carrying the message.

    ``interpreter_name=None`` computes an interpreter-free attack's examples only (PGD, StAdv: the
    pipeline runs them once per model and shard): the map columns stay null and the map tensors empty;
    :func:`adv2core.bench.evaluate.evaluate_examples` measures them under each interpreter later.
    """
    t_cell = time.perf_counter()
    preset = load_preset(cfg)
    dev = torch.device(device)
    attack_class(attack_name, interpreter_name)  # validate names before any heavy work
    if model is None:
        from adv2core.models.registry import load_model

        model = load_model(model_name, data_cfg=data_cfg, device=dev)
    model = model.to(dev)
    if interpreter_name is None:
        if attack_class(attack_name).uses_interpreter or interpreter is not None:
            raise ConfigError(f"attack {attack_name!r} needs an interpreter")
    elif interpreter is None:
        interpreter = default_interpreter(interpreter_name, model, preset, data_cfg=data_cfg)
    elif interpreter.name != interpreter_name:
        raise ConfigError(f"interpreter object is {interpreter.name!r} but the cell names {interpreter_name!r}")
    attack = build_attack(attack_name, model, interpreter, preset, seed=seed)

    error_rows = [_error_row(e.image_id, e.reason) for e in batch.errors]
    b = batch.to(dev)
    x, y, ids = b.images, b.labels.long(), list(b.ids)
    n = x.shape[0]
    empty_map = torch.zeros(0, 1, 1, 1)
    if n == 0:
        return CellResult(error_rows, x, np.zeros((0, *x.shape[1:]), np.int16), empty_map, empty_map,
                          torch.zeros(0, dtype=torch.long), ids=ids, seconds=time.perf_counter() - t_cell)

    logits0 = _predict(model, x)
    benign_pred = logits0.argmax(dim=1)
    y_t = target_classes(y, ids, model.num_classes, seed)
    errs: list[str | None] = [None] * n
    benign = m_t = None
    if interpreter is not None and benign_maps is not None:
        benign = check_target_map(benign_maps.to(dev), n, interpreter.map_size(x.shape[-1]))
    elif interpreter is not None:
        benign = interpreter.explain(x, y, ids=ids)
    if interpreter is not None and target_map is not None:
        m_t = check_target_map(target_map.to(dev), n, interpreter.map_size(x.shape[-1]))
    elif interpreter is not None:
        m_t, errs = make_target_maps(preset, interpreter, x, y, y_t, ids, benign, seed=seed, pool=pool)

    try:
        res = call_with_oom_policy(lambda s: attack(x[s], y_t[s], target_map=None if m_t is None else m_t[s],
                                                    ids=ids[s]), n,
                                   merge_attack_results, oom)
    except Adv2Error:
        raise
    except Exception as exc:  # noqa: BLE001 - a crashed batch becomes error rows, the run goes on
        if is_transient(exc):
            raise  # out of memory / I/O: the task is retried and nothing is stored for this shard
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        rows = [_error_row(i, msg, int(c)) for i, c in zip(ids, y.tolist())] + error_rows
        ben = empty_map if benign is None else benign
        return CellResult(rows, x, np.zeros(tuple(x.shape), np.int16), ben, torch.full_like(ben, math.nan), y_t,
                          target_maps=m_t, ids=ids, seconds=time.perf_counter() - t_cell)

    x_q = quantize_uint8(res.x_adv.clamp(0, 1).nan_to_num(0.0), "round")
    logits_q = _predict(model, x_q)
    success = attack_success(logits_q, y_t) & res.success & ~res.failed
    if interpreter is not None:
        assert benign is not None and m_t is not None
        adv, map_cols = map_metrics(interpreter, x_q, y_t, ids, benign, m_t, b.masks)
    else:  # examples only: measured under each interpreter by evaluate_examples
        adv, map_cols = empty_map, {k: [None] * n for k in MAP_KEYS}
    cols: dict[str, list[Any]] = {
        "image_id": ids,
        "true_class": _i(y),
        "target_class": _i(y_t),
        "pred_class": _i(logits_q.argmax(dim=1)),
        "success": [bool(s) for s in success.cpu().tolist()],
        "confidence": _f(confidence(logits_q)),
        "target_prob": _f(target_probability(logits_q, y_t)),
        "benign_pred": _i(benign_pred),
        **map_cols,
        "linf": _f((x_q - x).abs().flatten(1).amax(dim=1)),
        "steps": _i(res.steps),
    }
    per = res.seconds / n
    rows: list[dict[str, Any]] = []
    for j in range(n):
        row = {k: cols[k][j] for k in cols}
        reason = res.reasons[j] if bool(res.failed[j]) else None
        status = "failed" if reason else ("error" if errs[j] else "ok")
        row.update(seconds=per, status=status, error=reason or errs[j])
        rows.append({k: row[k] for k in ROW_KEYS})
    return CellResult(
        rows=rows + error_rows,
        x_adv_q=x_q,
        perturbation_int16=perturbation_to_int16(x_q, x).cpu().numpy(),
        benign_maps=empty_map if benign is None else benign,
        adv_maps=adv,
        target_classes=y_t,
        target_maps=m_t,
        ids=ids,
        attack_result=res,
        seconds=time.perf_counter() - t_cell,
    )


def cross_evaluate(
    model: Classifier,
    interpreters: Mapping[str, Interpreter],
    x: torch.Tensor,
    x_adv_q: torch.Tensor,
    y: torch.Tensor,
    y_t: torch.Tensor,
    ids: Sequence[str],
    *,
    benign_maps: Mapping[str, torch.Tensor] | None = None,
    maps_out: dict[str, torch.Tensor] | None = None,
    adv_maps: Mapping[str, torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Transfer entries (spec 3.3/4): for every eval interpreter j, j's map of x_adv_q for c_t versus
    j's benign map of x for y. ``benign_maps`` may carry precomputed benign maps by name; ``maps_out``
    receives j's adversarial maps by name (the pipeline stores them for the ensemble defence); ``adv_maps``
    may carry j's maps of exactly these examples where the attack stage already computed them (the
    diagonal j = i, and every j for an interpreter-free attack), which are then measured, not recomputed."""
    ids = list(ids)
    rows: list[dict[str, Any]] = []
    for name, interp in interpreters.items():
        ben = benign_maps.get(name) if benign_maps else None
        if ben is None:
            ben = interp.explain(x, y, ids=ids)
        # the same measurement as the white-box rows (map_metrics), with the benign map as reference
        adv, metrics = map_metrics(interp, x_adv_q, y_t, ids, ben, ben, None,
                                   adv=adv_maps.get(name) if adv_maps else None)
        if maps_out is not None:
            maps_out[name] = adv
        cols = {k: metrics[k] for k in TRANSFER_KEYS[2:]}  # no localisation columns (no masks here)
        for j, image_id in enumerate(ids):
            rows.append({"image_id": image_id, "eval_interpreter": name, **{k: v[j] for k, v in cols.items()}})
    return rows


def attack_embedded(
    model_name: str,
    interpreter_name: str,
    attack_name: str,
    images: int = 16,
    preset: str | AttacksConfig = "quick",
    seed: int = 0,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    data_cfg: Any = None,
    train_cfg: Any = None,
    train_if_missing: bool = False,
    dataset: str = "embedded",
    dataset_options: Mapping[str, Any] | None = None,
    custom: Mapping[str, Any] | None = None,
    population: str = "correct",
    gates: Any = None,
) -> dict[str, Any]:
    """Run one cell on the first ``images`` test images and summarise it (``adv2 attack --json``).

    ``dataset`` other than ``embedded`` (e.g. ``imagenet-samples``) loads through the dataset registry
    with ``dataset_options``; ``custom`` holds user-declared models (a config's ``models.custom``).

    The preflight gates run first (``gates``: a :class:`~adv2core.gates.GatesConfig`, default thresholds):
    a model below its accuracy floor or a degenerate interpreter raises ``GateError``. With
    ``population='correct'`` (the paper's) misclassified images are drawn but not attacked.

    Returns success_rate (all images) and l1, l2, iou_mean, confidence, loc_iou_adv means over the
    successful images, each with a 95 % interval (Wilson / bootstrap), plus timing and counts.
    ``data_cfg``/``train_cfg`` select the embedded dataset and the trained checkpoint (defaults: the
    standard embedded set and recipe); a missing checkpoint is a CheckpointError unless
    ``train_if_missing``.
    """
    from adv2core.data.synthetic import EmbeddedDataConfig, EmbeddedDataset
    from adv2core.metrics.stats import summarize
    from adv2core.models.registry import load_model

    if images < 1:
        raise ConfigError(f"--images must be >= 1, got {images}")
    cfg = load_preset(preset)
    dev = torch.device(device)
    data_cfg = data_cfg or EmbeddedDataConfig()
    if dataset == "embedded":
        ds = EmbeddedDataset("test", data_cfg)
    else:
        from adv2core.data.registry import get_dataset

        ds = get_dataset(dataset, "test", **dict(dataset_options or {}))
    if images > len(ds):
        raise ConfigError(f"--images {images} exceeds the {dataset} test set ({len(ds)} images)")
    attack_class(attack_name, interpreter_name)
    model = load_model(model_name, data_cfg=data_cfg, train_cfg=train_cfg, device=dev, train_if_missing=train_if_missing,
                       custom=custom)
    interp = default_interpreter(interpreter_name, model, cfg, data_cfg=data_cfg, train_if_missing=train_if_missing)
    from adv2core.gates import GatesConfig, preflight_dataset

    gate = preflight_dataset(model, model_name, {interpreter_name: interp}, ds, gates or GatesConfig(),
                             split=f"{dataset} test split", seed=seed)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for start in range(0, images, batch_size):
        batch = ds.load(list(range(start, min(images, start + batch_size))))
        batch, excluded = select_population(model, batch, population)
        rows += excluded + run_cell(model_name, interpreter_name, attack_name, batch, cfg, seed=seed, device=dev,
                                    model=model, interpreter=interp, data_cfg=data_cfg).rows
    seconds = time.perf_counter() - t0
    ok = [r for r in rows if r["status"] not in ("error", "excluded")]
    succ = np.array([bool(r["success"]) for r in ok], dtype=float)
    metrics = ("l1", "l2", "iou_mean", "confidence", "loc_iou_adv", "loc_iou_benign")
    vals = {k: np.array([np.nan if r[k] is None else r[k] for r in ok], dtype=float) for k in metrics}
    s = summarize(succ, vals, seed=seed)
    out: dict[str, Any] = {
        "model": model_name, "interpreter": interpreter_name, "attack": attack_name, "preset": cfg.name, "dataset": dataset,
        "images": images, "seed": seed, "device": str(dev),
        "n_attacked": s["n_attacked"], "n_success": s["n_success"], "n_failed": sum(r["status"] == "failed" for r in ok),
        "n_excluded": sum(r["status"] == "excluded" for r in rows), "population": population,
        "n_error": sum(r["status"] == "error" for r in rows),
        "model_accuracy": gate["accuracy"], "gate": gate["interpreters"][interpreter_name]["status"],
        "success_rate": s["success_rate"], "success_rate_lo": s["success_rate_lo"], "success_rate_hi": s["success_rate_hi"],
    }
    for k in metrics:
        out[k] = s[f"{k}_mean"]
        out[f"{k}_lo"] = s[f"{k}_lo"]
        out[f"{k}_hi"] = s[f"{k}_hi"]
    out["seconds"] = seconds
    out["seconds_per_image"] = seconds / images
    # JSON has no NaN: an empty population (no successful sample) is reported as null
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
