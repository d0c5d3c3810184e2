"""Table 8 (detection) and its plots, from the defence stage's ``detections`` rows.

Per model, one row per detector (variant) x attack x attacked interpreter: the detection rate of the
successful adversarial examples at the threshold calibrated on the benign calibration images (target FPR,
5 % by default; Wilson 95 % CI), the realised FPR on the evaluated (held-out) benign images with its
Wilson CI, and the ROC AUC of held-out benign vs adversarial scores. Everything is recomputed from the
stored scores with :func:`adv2core.defences.calibrate.evaluate_detector` (which refuses calibration ids
that are also evaluated), so the table never depends on a number the stage computed on its own. Only the
rows of the run's detector settings are used (``runs.preflight`` records their hashes); a run without a
defence stage has no table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adv2core.attacks.registry import interpreter_free
from adv2core.report.marks import Marks, strike
from adv2core.report.rendering import (
    DASH,
    NO_SOURCE,
    Block,
    ReportTable,
    attack_key,
    attack_name,
    fmt_ci,
    fmt_num,
    fmt_pct,
    interpreter_key,
    interpreter_name,
)

DETECTOR_NAMES = {"ensemble": "Ensemble", "fs": "FS", "lid": "LID"}
COLUMNS = ["model", "detector", "variant", "attack", "interpreter", "target_fpr", "threshold", "n_calibration", "folds",
           "n_benign", "benign_fpr", "benign_fpr_lo", "benign_fpr_hi", "n_adversarial", "n_detected",
           "detection_rate", "detection_rate_lo", "detection_rate_hi", "auc"]


def run_defence_hashes(run: dict[str, Any]) -> dict[str, str]:
    """detector -> settings hash of the run's defence stage (empty: the run had none)."""
    try:
        return dict((json.loads(run.get("preflight") or "{}") or {}).get("defences") or {})
    except ValueError:
        return {}


def detector_label(detector: str, variant: str) -> str:
    name = DETECTOR_NAMES.get(detector, detector)
    return name if detector == "ensemble" else f"{name} ({variant})"


def _query(con: Any, config_hash: str, hashes: Sequence[str]) -> list[dict[str, Any]]:
    marks = ", ".join("?" for _ in hashes)
    # rows written before cross-fitting existed have no fold column: one calibration set (fold -1)
    has_fold = "fold" in {r[0] for r in con.execute("DESCRIBE detections").fetchall()}
    fold = "coalesce(fold, -1)" if has_fold else "-1"
    cur = con.execute(
        f"""
        SELECT model, detector, variant, {fold} AS fold, role, attack, interpreter,
               any_value(target_fpr)::DOUBLE AS fpr,
               list(image_id ORDER BY image_id) AS ids, list(score::DOUBLE ORDER BY image_id) AS scores
        FROM detections
        WHERE config_hash = ? AND defence_hash IN ({marks}) AND role <> 'fit'
        GROUP BY ALL
        """, [config_hash, *hashes])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


_EMPTY = {"ids": [], "scores": []}


def _record(model: str, detector: str, variant: str, attack: str, interp: str, fpr: float,
            folds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One table row: the (attack, interpreter) source evaluated over every fold of the detector variant
    (one fold, -1, unless the stage cross-fitted its calibration)."""
    from adv2core.defences.calibrate import FoldData, evaluate_folds
    from adv2core.defences.config import CalibrationConfig

    rec: dict[str, Any] = {"model": model, "detector": detector, "variant": variant, "attack": attack,
                           "interpreter": interp, "target_fpr": fpr, "folds": len(folds) if -1 not in folds else 1}
    data = [FoldData(np.asarray(g["calibration"]["scores"], np.float32), g["calibration"]["ids"],
                     np.asarray((g.get("benign") or _EMPTY)["scores"], np.float32), (g.get("benign") or _EMPTY)["ids"],
                     np.asarray(g["adv"].get((attack, interp), _EMPTY)["scores"], np.float32),
                     g["adv"].get((attack, interp), _EMPTY)["ids"])
            for _, g in sorted(folds.items())]
    if not sum(len(d.adv_ids) for d in data) or not sum(len(d.benign_ids) for d in data):
        rec.update({k: math.nan for k in COLUMNS if k not in rec}, n_adversarial=0, n_detected=0,
                   n_calibration=min(len(d.calibration_ids) for d in data),
                   n_benign=sum(len(d.benign_ids) for d in data), roc_fpr=[], roc_tpr=[])
        return rec
    res = evaluate_folds(data, CalibrationConfig(fpr=fpr))
    rec.update(res.as_row(), roc_fpr=res.roc_fpr, roc_tpr=res.roc_tpr)
    rec.pop("calibration_fpr", None)
    return rec


def detection_table(con: Any, config_hash: str, run: dict[str, Any], marks: Marks) -> ReportTable | None:
    """Table 8, or None when the run had no defence stage (see the module docstring)."""
    hashes = run_defence_hashes(run)
    if not hashes:
        return None
    groups: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for r in _query(con, config_hash, sorted(hashes.values())):
        g = groups.setdefault((r["model"], r["detector"], r["variant"]), {}).setdefault(
            int(r["fold"]), {"adv": {}, "fpr": r["fpr"]})
        if r["role"] == "adversarial":
            g["adv"][(r["attack"], r["interpreter"])] = r
        else:
            g[r["role"]] = r
    records: list[dict[str, Any]] = []
    for (model, det, variant), folds in sorted(groups.items()):
        if any("calibration" not in g for g in folds.values()):
            continue
        cells: set[tuple[str, str]] = set()
        for g in folds.values():
            # an interpreter-free attack (PGD, StAdv) has the same examples and scores under every interpreter:
            # one row, interpreter 'none' (the first interpreter's rows)
            adv: dict[tuple[str, str], dict[str, Any]] = {}
            for (attack, interp), row in sorted(g["adv"].items(),
                                                key=lambda kv: (attack_key(kv[0][0]), interpreter_key(kv[0][1]))):
                adv.setdefault((attack, NO_SOURCE) if interpreter_free(attack) else (attack, interp), row)
            g["adv"] = adv
            cells |= set(adv)
        fpr = next(iter(folds.values()))["fpr"]
        for attack, interp in sorted(cells or {(DASH, DASH)}, key=lambda c: (attack_key(c[0]), interpreter_key(c[1]))):
            records.append(_record(model, det, variant, attack, interp, fpr, folds))
    blocks = []
    for model in sorted({r["model"] for r in records}):
        rows = []
        for r in (r for r in records if r["model"] == model):
            bad = (model, r["interpreter"]) in marks
            cells = [str(r["n_adversarial"]),
                     fmt_ci(r["detection_rate"], r["detection_rate_lo"], r["detection_rate_hi"], fmt_pct),
                     fmt_ci(r["benign_fpr"], r["benign_fpr_lo"], r["benign_fpr_hi"], fmt_pct),
                     fmt_num(r["auc"]), fmt_num(r["threshold"], 4),
                     str(r["n_calibration"]) + (f" ×{r['folds']} folds" if r["folds"] > 1 else "")]
            label = interpreter_name(r["interpreter"]) + (" (degenerate)" if bad else "")
            rows.append([detector_label(r["detector"], r["variant"]), attack_name(r["attack"]), label]
                        + ([strike(c) for c in cells] if bad else cells))
        blocks.append(Block(["Detector", "Attack", "Interp.", "n adv.", "Detected % [95 % CI]",
                             "Benign FPR % [95 % CI]", "ROC AUC", "Threshold", "n cal."], rows, caption=model))
    fpr = sorted({r["target_fpr"] for r in records})
    fpr_text = "/".join(f"{100 * f:g} %" for f in fpr) or "5 %"
    return ReportTable(
        key="detection",
        title="Detection of adversarial examples (defence stage)",
        note=f"Detected = share of the successful adversarial examples flagged at the threshold that flags "
             f"{fpr_text} of the benign calibration images (disjoint from the evaluated ones), Wilson 95 % CI; "
             f"benign FPR = share of the evaluated benign images flagged; ROC AUC of evaluated benign vs "
             f"adversarial scores; Interp. = the attacked interpreter; n cal. = calibration images"
             + ("; cross-fitted (×K folds): each image is flagged at the threshold of the other K - 1 folds of the "
                "evaluated images, Threshold = the folds' median, n cal. = the smallest fold's calibration set, "
                "AUC over the pooled scores" if any(r["folds"] > 1 for r in records) else "") + ".",
        columns=list(COLUMNS),
        records=records,
        blocks=blocks,
    )


# ----------------------------------------------------------------------------- plots
#: Detectors whose variant is chosen per model (LID's k, by cross-validation): one plot column for all models,
#: each panel titled with its own model's variant, instead of one column per k with empty panels.
PER_MODEL_VARIANT = frozenset({"lid"})


def _column(r: dict[str, Any]) -> tuple[str, str]:
    return (r["detector"], "" if r["detector"] in PER_MODEL_VARIANT else r["variant"])


def _groups(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[tuple[str, str]]]:
    """Plot rows (models) and columns (detector, variant; one column per per-model-variant detector)."""
    models = sorted({r["model"] for r in records})
    dets = sorted({_column(r) for r in records})
    return models, dets


def _panel(recs: Sequence[dict[str, Any]], model: str, col: tuple[str, str]) -> tuple[list[dict[str, Any]], str]:
    """The records of one panel and its title."""
    got = [r for r in recs if r["model"] == model and _column(r) == col]
    variants = sorted({r["variant"] for r in got}) or [col[1]]
    return got, f"{model}: {detector_label(col[0], ', '.join(variants))}"


def _legend_or_blank(ax: Any, **kw: Any) -> None:
    """A legend; a panel with nothing drawn (e.g. a detector variant chosen for another model) is blanked."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, **kw)
    else:
        title = ax.get_title()
        ax.cla()
        ax.set_axis_off()
        ax.set_title(title, fontsize=8)
        ax.text(0.5, 0.5, "no rows", ha="center", va="center", fontsize=7, color="0.5")


def roc_curves(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Panels model x detector; a ROC curve per attacked interpreter (colour) x attack (line style)."""
    from adv2core.report.plots import _LINESTYLES, _pyplot, _save

    recs = [r for r in records if r.get("roc_fpr")]
    if not recs:
        return None
    plt = _pyplot()
    models, dets = _groups(recs)
    fig, axes = plt.subplots(len(models), len(dets), figsize=(3.6 * len(dets), 3.3 * len(models)), squeeze=False)
    interps = sorted({r["interpreter"] for r in recs}, key=interpreter_key)
    attacks = sorted({r["attack"] for r in recs}, key=attack_key)
    for i, model in enumerate(models):
        for j, col in enumerate(dets):
            ax = axes[i][j]
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
            got, title = _panel(recs, model, col)
            for r in got:
                bad = bool(r.get("degenerate"))
                ax.plot(r["roc_fpr"], r["roc_tpr"], color="0.6" if bad else f"C{interps.index(r['interpreter'])}",
                        ls=_LINESTYLES[attacks.index(r["attack"]) % len(_LINESTYLES)], lw=1.2,
                        label=f"{attack_name(r['attack'])} / {interpreter_name(r['interpreter'])}"
                              f"{' (degenerate)' if bad else ''} AUC {fmt_num(r['auc'], 2)}")
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("FPR (evaluated benign)", fontsize=7)
            ax.set_ylabel("TPR (successful adversarial)", fontsize=7)
            _legend_or_blank(ax, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def detection_bars(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Panels model x detector: detection rate per attacked interpreter, a bar per attack, Wilson CI,
    the target FPR as a dashed line; degenerate interpreters hatched."""
    from adv2core.report.plots import _pyplot, _save

    recs = [r for r in records if not math.isnan(r["detection_rate"])]
    if not recs:
        return None
    plt = _pyplot()
    models, dets = _groups(recs)
    attacks = sorted({r["attack"] for r in recs}, key=attack_key)
    fig, axes = plt.subplots(len(models), len(dets), figsize=(3.6 * len(dets), 3.0 * len(models)), squeeze=False)
    width = 0.8 / max(1, len(attacks))
    for i, model in enumerate(models):
        for j, col in enumerate(dets):
            ax = axes[i][j]
            got_panel, title = _panel(recs, model, col)
            cell = {(r["interpreter"], r["attack"]): r for r in got_panel}
            interps = sorted({k[0] for k in cell}, key=interpreter_key)
            x = np.arange(len(interps))
            for a, attack in enumerate(attacks):
                got = [(n, cell[(it, attack)]) for n, it in enumerate(interps) if (it, attack) in cell]
                if not got:
                    continue
                v = np.array([100 * r["detection_rate"] for _, r in got])
                lo = np.array([100 * r["detection_rate_lo"] for _, r in got])
                hi = np.array([100 * r["detection_rate_hi"] for _, r in got])
                bars = ax.bar(x[[n for n, _ in got]] + (a - (len(attacks) - 1) / 2) * width, v, width,
                              yerr=[v - lo, hi - v], capsize=2, color=f"C{a}", label=attack_name(attack))
                for bar, (_, r) in zip(bars, got):
                    if r.get("degenerate"):
                        bar.set_hatch("xxx")
                        bar.set_alpha(0.35)
            fpr = recs[0]["target_fpr"]
            ax.axhline(100 * fpr, color="0.4", ls="--", lw=0.8)
            ax.set_xticks(x, ["no interp." if it == NO_SOURCE else interpreter_name(it) for it in interps], fontsize=7)
            ax.set_ylim(0, 105)
            ax.set_ylabel("detected (%)", fontsize=7)
            ax.set_title(title, fontsize=8)
            _legend_or_blank(ax)
    fig.suptitle("Detection rate at the calibrated threshold (dashed: target FPR), Wilson 95 % CI", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
