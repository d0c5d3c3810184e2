"""PNG plots of a report (matplotlib, Agg backend): IoU-vs-k curves, transfer heat-maps, success/L1 bars,
and the benign / PGD / ADV² sample grid.

The plots read the tidy ``records`` of :mod:`adv2core.report.tables`, so a figure can never show a number
the tables do not. PNGs carry no timestamp, so reruns give the same bytes for the same data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from adv2core.report.rendering import (
    attack_key,
    attack_name,
    interpreter_key,
    interpreter_name,
)
from adv2core.store.schemas import IOU_COLUMNS, IOU_KS

_PNG_META = {"Software": None}  # no version string: same data, same bytes across matplotlib patches
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata=_PNG_META)
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _val(x: Any) -> float:
    return math.nan if x is None else float(x)


# ----------------------------------------------------------------------------- IoU vs k
def iou_curves(records: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """One panel per model; a line per interpreter (colour) x attack (line style), with the 95 % band."""
    if not records:
        return None
    plt = _pyplot()
    models = sorted({r["model"] for r in records})
    interps = sorted({r["interpreter"] for r in records}, key=interpreter_key)
    attacks = sorted({r["attack"] for r in records}, key=attack_key)
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 3.6), squeeze=False, sharey=True)
    ks = np.array(IOU_KS, dtype=float)
    for ax, model in zip(axes[0], models):
        for r in records:
            if r["model"] != model:
                continue
            mean = np.array([_val(r[f"{c}_mean"]) for c in IOU_COLUMNS])
            if np.isnan(mean).all():
                continue
            lo = np.array([_val(r[f"{c}_lo"]) for c in IOU_COLUMNS])
            hi = np.array([_val(r[f"{c}_hi"]) for c in IOU_COLUMNS])
            ci = interps.index(r["interpreter"])
            ai = attacks.index(r["attack"])
            label = f"{interpreter_name(r['interpreter'])} / {attack_name(r['attack'])}"
            bad = bool(r.get("degenerate"))  # failed its preflight gate: grey, thin, labelled
            ax.plot(ks, mean, color="0.6" if bad else colours(ci % 10), linestyle=_LINESTYLES[ai % len(_LINESTYLES)],
                    marker=_MARKERS[ai % len(_MARKERS)], markersize=3, linewidth=0.6 if bad else 1.5,
                    label=label + (" (degenerate)" if bad else ""))
            ax.fill_between(ks, lo, hi, color=colours(ci % 10), alpha=0.12, linewidth=0)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("k (% of pixels)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a model with no successful image has no curve
            ax.legend(fontsize=6, loc="lower right")
    axes[0][0].set_ylabel("IoU(adversarial, benign) top-k")
    fig.suptitle("IoU of top-k% map pixels vs k (mean over successful images)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- transfer heat-maps
def _matrix(records: Sequence[dict[str, Any]], metric: str) -> tuple[list[str], list[str], np.ndarray]:
    row_keys = list(dict.fromkeys((r["kind"], r["source"]) for r in records))
    evals = sorted({r["eval_interpreter"] for r in records}, key=interpreter_key)
    mat = np.full((len(row_keys), len(evals)), np.nan)
    for r in records:
        mat[row_keys.index((r["kind"], r["source"])), evals.index(r["eval_interpreter"])] = _val(r[f"{metric}_mean"])
    labels = [f"{attack_name(s)} (ref.)" if k == "reference" else interpreter_name(s) for k, s in row_keys]
    return labels, [interpreter_name(e) for e in evals], mat


def transfer_heatmaps(records: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One PNG per (model, attack): L1 and IoU matrices side by side, every cell annotated."""
    plt = _pyplot()
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["model"], r["attack"]), []).append(r)
    paths = []
    for model, attack in sorted(groups, key=lambda g: (g[0], attack_key(g[1]))):
        recs = groups[(model, attack)]
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 0.55 * len({(r['kind'], r['source']) for r in recs}) + 2.2),
                                 squeeze=False)
        for ax, (metric, label, cmap, vmax) in zip(
            axes[0], (("l1", "L1 to benign map (lower = closer)", "viridis_r", None),
                      ("iou_mean", "IoU with benign map (higher = closer)", "viridis", 1.0))
        ):
            rows, cols, mat = _matrix(recs, metric)
            finite = mat[~np.isnan(mat)]
            top = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0) or 1.0
            im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0.0, vmax=top, aspect="auto")
            bad = {(rows.index(lab), cols.index(interpreter_name(r["eval_interpreter"])))
                   for r in recs if r.get("degenerate")
                   for lab in [f"{attack_name(r['source'])} (ref.)" if r["kind"] == "reference"
                               else interpreter_name(r["source"])]}
            for (a, b), v in np.ndenumerate(mat):
                text = "–" if np.isnan(v) else (f"{v:.3f}\n(degen.)" if (a, b) in bad else f"{v:.3f}")
                shade = 0.5 if np.isnan(v) else v / top
                dark = shade > 0.5 if cmap == "viridis_r" else shade < 0.5
                ax.text(b, a, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
            ax.set_xticks(range(len(cols)), cols, fontsize=7)
            ax.set_yticks(range(len(rows)), rows, fontsize=7)
            ax.set_xlabel("evaluated interpreter", fontsize=7)
            ax.set_ylabel("attacked interpreter", fontsize=7)
            ax.set_title(label, fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.suptitle(f"Transferability: {model} / {attack_name(attack)}", fontsize=10)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"transfer_{_safe(model)}_{_safe(attack)}.png"))
    return paths


# ----------------------------------------------------------------------------- success / L1 bars
def success_l1_bars(success_records: Sequence[dict[str, Any]], distance_records: Sequence[dict[str, Any]],
                    path: Path) -> Path | None:
    """Two rows of panels (success rate, L1) per model: bars grouped by interpreter, one per attack."""
    if not success_records:
        return None
    plt = _pyplot()
    models = sorted({r["model"] for r in success_records})
    attacks = sorted({r["attack"] for r in success_records}, key=attack_key)
    l1 = {(r["model"], r["interpreter"], r["attack"]): r for r in distance_records}
    fig, axes = plt.subplots(2, len(models), figsize=(4.6 * len(models), 5.6), squeeze=False)
    width = 0.8 / max(1, len(attacks))
    for col, model in enumerate(models):
        recs = {(r["interpreter"], r["attack"]): r for r in success_records if r["model"] == model}
        interps = sorted({i for i, _ in recs}, key=interpreter_key)
        x = np.arange(len(interps))
        for ai, attack in enumerate(attacks):
            off = x + (ai - (len(attacks) - 1) / 2) * width
            for row, (get, getlo, gethi, scale) in enumerate((
                (lambda r: r["success_rate"], lambda r: r["success_rate_lo"], lambda r: r["success_rate_hi"], 100.0),
                (lambda r: r["l1_mean"], lambda r: r["l1_lo"], lambda r: r["l1_hi"], 1.0),
            )):
                src: Callable[[str], dict[str, Any] | None] = (
                    (lambda i: recs.get((i, attack))) if row == 0 else (lambda i: l1.get((model, i, attack)))
                )
                vals, err_lo, err_hi = [], [], []
                for i in interps:
                    r = src(i)
                    v = math.nan if r is None else _val(get(r)) * scale
                    lo = math.nan if r is None else _val(getlo(r)) * scale
                    hi = math.nan if r is None else _val(gethi(r)) * scale
                    vals.append(v)
                    err_lo.append(0.0 if math.isnan(lo) or math.isnan(v) else max(0.0, v - lo))
                    err_hi.append(0.0 if math.isnan(hi) or math.isnan(v) else max(0.0, hi - v))
                ok = [n for n, v in enumerate(vals) if not math.isnan(v)]  # no bar for a missing cell
                bars = axes[row][col].bar(off[ok], [vals[n] for n in ok], width,
                                          yerr=[[err_lo[n] for n in ok], [err_hi[n] for n in ok]], capsize=2,
                                          color=f"C{ai}", label=attack_name(attack))
                for bar, n in zip(bars, ok):  # degenerate interpreter: hatched, faded bar (struck out)
                    if (recs.get((interps[n], attack)) or {}).get("degenerate"):
                        bar.set_hatch("xxx")
                        bar.set_alpha(0.35)
        for row, ylabel in enumerate(("success rate (%)", "L1 to benign map")):
            ax = axes[row][col]
            ax.set_xticks(x, [interpreter_name(i) + ("\n(degenerate)" if any(
                (recs.get((i, a)) or {}).get("degenerate") for a in attacks) else "") for i in interps], fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            if row == 0:
                ax.set_ylim(0, 105)
                ax.set_title(model, fontsize=9)
        axes[0][col].legend(fontsize=7)
    fig.suptitle("Attack success (all attacked images) and L1 (successful images), 95 % CI", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- sample grid
# Array names in a shard's .npz (see adv2core/store/arrays.py and docs/store.md); the first present wins.
ID_KEYS = ("image_id", "image_ids", "ids")
PERTURBATION_KEYS = ("perturbation", "delta")
BENIGN_MAP_KEYS = ("benign_map", "map_benign", "benign_maps")
ADV_MAP_KEYS = ("adv_map", "map_adv", "adv_maps")


def _pick(arrays: dict[str, np.ndarray], keys: Sequence[str]) -> np.ndarray | None:
    for k in keys:
        if k in arrays:
            return arrays[k]
    return None


def load_unit_arrays(files: Sequence[Path]) -> dict[str, dict[str, np.ndarray]]:
    """image id -> {'perturbation', 'benign_map', 'adv_map'} from the .npz shards of one cell."""
    from adv2core.store.arrays import read_arrays

    out: dict[str, dict[str, np.ndarray]] = {}
    for f in sorted(files):
        arrays = read_arrays(f)
        ids = _pick(arrays, ID_KEYS)
        if ids is None:
            continue
        parts = {"perturbation": _pick(arrays, PERTURBATION_KEYS), "benign_map": _pick(arrays, BENIGN_MAP_KEYS),
                 "adv_map": _pick(arrays, ADV_MAP_KEYS)}
        for n, image_id in enumerate(np.asarray(ids).astype(str).tolist()):
            out[image_id] = {k: v[n] for k, v in parts.items() if v is not None}
    return out


def sample_grid(
    image_ids: Sequence[str],
    images: Any,
    pgd: dict[str, dict[str, np.ndarray]],
    adv2: dict[str, dict[str, np.ndarray]],
    path: Path,
    title: str,
) -> Path | None:
    """Benign / PGD / ADV² images with the benign, PGD and ADV² maps, via :func:`grids.map_grid`."""
    import torch

    from adv2core.report.grids import map_grid
    from adv2core.store.arrays import apply_perturbation

    need = ("perturbation", "adv_map")
    ids = [i for i in image_ids if all(k in pgd.get(i, {}) for k in need) and all(k in adv2.get(i, {}) for k in need)
           and "benign_map" in adv2[i]]
    if not ids:
        return None
    x = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=np.float32)
    keep = [list(image_ids).index(i) for i in ids]
    x = x[keep]

    def adv_images(src: dict[str, dict[str, np.ndarray]]) -> torch.Tensor:
        return torch.from_numpy(np.stack([apply_perturbation(x[n], src[i]["perturbation"]) for n, i in enumerate(ids)]))

    def maps(src: dict[str, dict[str, np.ndarray]], key: str) -> torch.Tensor:
        m = np.stack([np.asarray(src[i][key], dtype=np.float32) for i in ids])
        if m.ndim == 3:
            m = m[:, None]
        return torch.from_numpy(m)

    return map_grid(
        torch.from_numpy(x.astype(np.float32)),
        {"benign map": maps(adv2, "benign_map"), "PGD map": maps(pgd, "adv_map"), "ADV² map": maps(adv2, "adv_map")},
        path,
        row_labels=ids,
        title=title,
        image_columns={"PGD": adv_images(pgd), "ADV²": adv_images(adv2)},
    )
