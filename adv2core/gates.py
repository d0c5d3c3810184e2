"""Preflight gates: no attack runs on a broken model or a degenerate interpreter.

A benchmark number is only worth quoting if the classifier classifies and the interpreter explains.
Two checks run before any attack (the flow's *preflight* stage, ``adv2 attack`` and ``adv2 explain``):

* **model gate** — accuracy on (up to ``accuracy_images`` of) the run's split must reach a floor
  (default 0.9 for the embedded models, 0.3 for real ImageNet models, whose photo sets are small and
  hard; per-model floors override). A model at chance is refused with one line naming it, the
  measured accuracy and the command that retrains it.
* **interpreter gate** — benign maps of the first ``map_images`` correctly classified images must not be
  degenerate:

  - any non-finite value;
  - near-constant maps: per-image range (max - min of the raw map) below ``min_range`` for more than
    ``max_constant_fraction`` of the images. Every interpreter's maps live in [0, 1], so 1e-3 is a
    thousandth of the scale: a min-max-normalised map cannot have a smaller range unless it was
    constant before normalisation (Grad, CAM), and an RTS/MASK mask that never leaves one value is
    blank;
  - where ground-truth masks exist: localisation for the true class (mean top-k IoU with the object,
    :mod:`adv2core.interpreters.localization`) not above the control by ``loc_margin``. The control is a
    random wrong class's maps; for interpreters marked ``class_sensitive = False`` (Grad, whose maps are
    known to change little with the class: 0.347 true vs 0.352 wrong here) it is each map scored against
    another image's object mask, so a map that localises nothing still fails.

  A degenerate interpreter is refused (``on_degenerate: refuse``, the default) or, with ``mark``, its
  cells run and are stored as ``degenerate`` with the reason, and reports strike them out.

What a refused interpreter does to a run is ``on_refused``: ``stop`` (the default) ends the run with the
one-line :class:`GateError`; ``skip`` drops that (model, interpreter) only — its gate report becomes
``status = 'refused'`` with the reason (:func:`refusal`), its cells are not run, the report lists it. A
refused *model* (accuracy gate) always stops the run.

This module is plain PyTorch (no prefect): the pipeline, the CLI and the tests call the same functions.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from adv2core.errors import Adv2Error

EMBEDDED_PREFIX_SUFFIX = "-mini"


class GateError(Adv2Error):
    """A model or interpreter that failed its preflight gate (one line: what, measured, how to fix)."""


class GatesConfig(BaseModel):
    """Thresholds of the preflight gates (part of the run config; recorded in the ``runs`` row)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    accuracy_floor: float = Field(0.9, ge=0, le=1, description="embedded models: minimum accuracy on the run's split")
    real_accuracy_floor: float = Field(0.3, ge=0, le=1, description="other models (ImageNet-scale)")
    per_model_floor: dict[str, float] = Field(default_factory=dict, description="floor by model name (wins)")
    accuracy_images: int = Field(1024, gt=0, description="images of the split the accuracy is measured on (first N)")
    map_images: int = Field(32, gt=0, description="correctly classified images whose benign maps are checked")
    min_range: float = Field(1e-3, ge=0, description="a map whose max - min is below this is near-constant")
    max_constant_fraction: float = Field(0.25, ge=0, le=1, description="more near-constant maps than this: degenerate")
    loc_margin: float = Field(0.0, ge=0, description="true-class localisation must exceed the wrong-class one by this")
    on_degenerate: Literal["refuse", "mark"] = "refuse"
    on_refused: Literal["stop", "skip"] = Field(
        "stop", description="a refused interpreter (degenerate maps, an RTS masker below its quality bar) stops "
                            "the run, or (skip) is dropped for that model only and reported as refused")

    def floor_for(self, model_name: str) -> float:
        if model_name in self.per_model_floor:
            return float(self.per_model_floor[model_name])
        return self.accuracy_floor if model_name.endswith(EMBEDDED_PREFIX_SUFFIX) else self.real_accuracy_floor


def retrain_hint(model_name: str) -> str:
    if model_name.endswith(EMBEDDED_PREFIX_SUFFIX):
        return f"retrain it with `adv2 train --model {model_name} --force`"
    return "check its weights file and preprocessing (see `adv2 models`)"


@torch.no_grad()
def predictions(model: Any, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """argmax predictions [N] (on the model's device), batched, one host copy at the end."""
    dev = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(dev)).argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.long)


def check_model(model: Any, model_name: str, images: torch.Tensor | None, labels: torch.Tensor, cfg: GatesConfig,
                *, split: str = "split", pred: torch.Tensor | None = None) -> dict[str, Any]:
    """Measure accuracy on ``images`` (or from ``pred``, their predictions); raise :class:`GateError`
    below the floor. Returns the report."""
    pred = predictions(model, images) if pred is None else pred
    n = int(labels.numel())
    acc = float((pred == labels.cpu()).float().mean()) if n else float("nan")
    floor = cfg.floor_for(model_name)
    report = {"model": model_name, "accuracy": acc, "accuracy_n": n, "accuracy_floor": floor}
    if cfg.enabled and not (acc >= floor):
        raise GateError(f"model {model_name}: accuracy {acc:.3f} on {n} images of the {split} is below the floor "
                        f"{floor:.2f} (gates.accuracy_floor); {retrain_hint(model_name)}")
    return report


def map_degeneracy(maps: torch.Tensor, cfg: GatesConfig) -> dict[str, Any]:
    """Statistics of a batch of benign maps [N,1,h,w]: non-finite count, near-constant fraction."""
    flat = maps.detach().flatten(1).float()
    finite = torch.isfinite(flat).all(dim=1)
    rng = torch.where(finite, flat.amax(dim=1) - flat.amin(dim=1), torch.zeros_like(finite, dtype=flat.dtype))
    stats = torch.stack([(~finite).sum(), ((rng < cfg.min_range) & finite).sum()]).tolist()  # one host copy
    n = max(1, flat.shape[0])
    return {"nonfinite": int(stats[0]), "constant_fraction": stats[1] / n, "n_maps": flat.shape[0]}


def degenerate_reason(stats: dict[str, Any], cfg: GatesConfig) -> str | None:
    """Why a set of maps is degenerate (``None`` = fine), from :func:`map_degeneracy` + localisation."""
    if stats.get("nonfinite"):
        return f"{stats['nonfinite']} of {stats['n_maps']} maps have non-finite values"
    if stats["constant_fraction"] > cfg.max_constant_fraction:
        return (f"{stats['constant_fraction']:.0%} of {stats['n_maps']} maps are near-constant "
                f"(range < {cfg.min_range:g}; limit {cfg.max_constant_fraction:.0%})")
    lt, lw = stats.get("loc_true"), stats.get("loc_control")
    if lt is not None and lw is not None and not (lt > lw + cfg.loc_margin):
        return (f"localisation for the true class {lt:.3f} is not above the {stats.get('control', 'wrong-class')} "
                f"control {lw:.3f}" + (f" + {cfg.loc_margin:g}" if cfg.loc_margin else ""))
    return None


def check_interpreter(interpreter: Any, model_name: str, images: torch.Tensor, labels: torch.Tensor,
                      masks: torch.Tensor | None, cfg: GatesConfig, *, ids: Sequence[str] | None = None,
                      seed: int = 0) -> dict[str, Any]:
    """Benign maps of up to ``map_images`` images (pass correctly classified ones) -> gate report.

    Raises :class:`GateError` when degenerate and ``on_degenerate == 'refuse'``; with ``mark`` the report
    has ``status = 'degenerate'`` and the reason. The true-class maps are the images' benign maps;
    the wrong-class control costs one more batch of maps (only where masks exist)."""
    from adv2core.interpreters.localization import wrong_classes
    from adv2core.metrics import localization_iou

    k = min(cfg.map_images, len(images))
    x, y = images[:k], labels[:k]
    dev = next(interpreter.model.parameters()).device
    x, y = x.to(dev), y.to(dev)
    bid = list(ids[:k]) if ids is not None else [f"gate-{i}" for i in range(k)]
    maps = interpreter.explain(x, y, ids=bid)
    stats = map_degeneracy(maps, cfg)
    if masks is not None and stats["nonfinite"] == 0:
        gt = masks[:k].to(dev)
        sal = interpreter.saliency(maps)
        if getattr(interpreter, "class_sensitive", True):
            wrong = interpreter.explain(x, wrong_classes(y, interpreter.model.num_classes, seed), ids=bid)
            control, kind = localization_iou(interpreter.saliency(wrong), gt), "wrong-class"
        else:  # each map against the next image's object: a map that localises nothing scores the same
            control, kind = localization_iou(sal, gt.roll(1, dims=0)), "shuffled-mask"
        vals = torch.stack([localization_iou(sal, gt).nanmean(), control.nanmean()]).tolist()
        stats.update(loc_true=_finite(vals[0]), loc_control=_finite(vals[1]), control=kind)
    reason = degenerate_reason(stats, cfg) if cfg.enabled else None
    name = getattr(interpreter, "name", type(interpreter).__name__)
    report = {"model": model_name, "interpreter": name, **stats,
              "status": "ok" if reason is None else "degenerate", "reason": reason}
    if reason is not None and cfg.on_degenerate == "refuse":
        raise GateError(f"interpreter {name} on {model_name} is degenerate: {reason}; refused "
                        f"(set gates.on_degenerate=mark to run it and mark its cells)")
    return report


def _finite(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def preflight(model: Any, model_name: str, interpreters: dict[str, Any], batch: Any, cfg: GatesConfig, *,
              split: str = "split", seed: int = 0) -> dict[str, Any]:
    """Both gates on one loaded batch of the run's split (its first ``accuracy_images`` images).

    The model gate uses every image; the interpreter gates use the first ``map_images`` of them that the
    model classifies correctly (the population that gets attacked). Raises :class:`GateError` on a
    refusal; returns ``{model, accuracy, ..., interpreters: {name: report}}``."""
    pred = predictions(model, batch.images)
    report = check_model(model, model_name, batch.images, batch.labels, cfg, split=split, pred=pred)
    correct = (pred == batch.labels.cpu()).nonzero().flatten()[: cfg.map_images]
    report["interpreters"] = _interpreter_gates(interpreters, model_name, batch.select(correct), cfg, seed)
    return report


def _interpreter_gates(interpreters: dict[str, Any], model_name: str, sub: Any, cfg: GatesConfig,
                       seed: int) -> dict[str, Any]:
    """:func:`check_interpreter` of every interpreter on the same correctly classified images; with
    ``on_refused=skip`` a refused one gets a :func:`refusal` report instead of stopping the others."""
    out: dict[str, Any] = {}
    for name, it in interpreters.items():
        try:
            out[name] = check_interpreter(it, model_name, sub.images, sub.labels, sub.masks, cfg, ids=sub.ids,
                                          seed=seed)
        except GateError as exc:
            if cfg.on_refused != "skip":
                raise
            out[name] = refusal(model_name, name, exc)
    return out


def preflight_dataset(model: Any, model_name: str, interpreters: dict[str, Any], dataset: Any, cfg: GatesConfig, *,
                      split: str = "split", seed: int = 0, chunk: int = 256) -> dict[str, Any]:
    """:func:`preflight` over a dataset's first ``accuracy_images`` images, loaded ``chunk`` at a time (a
    1024-image ImageNet batch would hold 600 MB): only predictions and the first ``map_images`` correctly
    classified images are kept. Unreadable images are skipped (the attack stage records them)."""
    from adv2core.data.types import Batch

    n = min(len(dataset), cfg.accuracy_images)
    preds, labels, kept = [], [], []
    for start in range(0, n, chunk):
        b = dataset.load(list(range(start, min(n, start + chunk))))
        if not len(b):
            continue
        p = predictions(model, b.images)
        preds.append(p)
        labels.append(b.labels.cpu())
        have = sum(len(k) for k in kept)
        if have < cfg.map_images:
            kept.append(b.select((p == b.labels.cpu()).nonzero().flatten()[: cfg.map_images - have]))
    if not preds:
        raise GateError(f"model {model_name}: no readable image in the first {n} of the {split}")
    pred, lab = torch.cat(preds), torch.cat(labels)
    report = check_model(model, model_name, None, lab, cfg, split=split, pred=pred)
    sub = Batch(torch.cat([k.images for k in kept]), torch.cat([k.labels for k in kept]),
                [i for k in kept for i in k.ids],
                None if any(k.masks is None for k in kept) else torch.cat([k.masks for k in kept]))
    report["interpreters"] = _interpreter_gates(interpreters, model_name, sub, cfg, seed)
    return report


def refusal(model_name: str, interpreter: str, exc: BaseException) -> dict[str, Any]:
    """The gate report of an interpreter refused under ``on_refused=skip`` (the error's one line)."""
    from adv2core.errors import one_line

    return {"model": model_name, "interpreter": interpreter, "status": "refused",
            "reason": one_line(exc, typed=False)}


def refused_cells(report: dict[str, Any]) -> dict[str, str]:
    """``{interpreter: reason}`` of the interpreters a preflight report refused (``on_refused=skip``)."""
    return {n: r["reason"] for n, r in (report.get("interpreters") or {}).items() if r.get("status") == "refused"}


def marked_cells(report: dict[str, Any]) -> dict[str, str]:
    """``{interpreter: reason}`` of the interpreters a preflight report marked degenerate."""
    return {n: r["reason"] for n, r in (report.get("interpreters") or {}).items() if r.get("status") == "degenerate"}
