"""Build a run's report from the results store: tables (Markdown, CSV, LaTeX), PNG plots, one report.md.

A run's rows are the samples/transfer rows whose ``config_hash`` equals the run's (``runs`` view): a
resumed run that skipped every shard still reports the rows an earlier run of the same config wrote.
This module stays free of prefect; :func:`artifact_tables` and :func:`headline_markdown` give the flow
and the CLI what they show.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from adv2core.errors import ReportError  # noqa: F401 (re-export)
from adv2core.report import detection, plots
from adv2core.report.aid import aid_table
from adv2core.report.marks import apply_marks, marks_from_run
from adv2core.report.population import population_table
from adv2core.report.refused import apply_refusals, refusal_lines, refusals_from_run
from adv2core.report.rendering import ReportTable, interpreter_key
from adv2core.report.shape import shape_table
from adv2core.report.tables import (
    distance_table,
    iou_table,
    localisation_table,
    status_table,
    success_table,
    transfer_table,
)
from adv2core.store.query import resolve_run

LoadImages = Callable[[Sequence[str]], Any]  # image ids -> Tensor [N, C, H, W] in [0, 1]

# Table key -> file stem, in report order.
TABLE_FILES = {
    "success": "table1_success",
    "distances": "table2_distances",
    "iou": "table3_iou_vs_k",
    "transfer": "table4_transfer",
    "localisation": "table5_localisation",
    "status": "table6_status",
    "population": "table0_population",
    "shape": "table7_shape_check",
    "detection": "table8_detection",
    "aid": "table9_aid",
}
GRID_IMAGES = 4  # images per sample grid


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and the numbers behind it."""

    run_id: str
    config_hash: str
    run: dict[str, Any]
    out_dir: Path
    tables: dict[str, ReportTable]
    plots: dict[str, Path] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per table/plot left out, with why

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.md"

    def markdown(self, keys: Sequence[str] | None = None) -> dict[str, str]:
        """Markdown of each table (all, or ``keys``), by table key."""
        return {k: t.markdown() for k, t in self.tables.items() if keys is None or k in keys}


# ----------------------------------------------------------------------------- report.md
def _provenance(result: ReportResult) -> str:
    r = result.run
    try:
        preset = json.loads(r.get("config_json") or "{}").get("preset", r.get("preset"))
    except ValueError:
        preset = r.get("preset")
    dirty = " (dirty)" if r.get("git_dirty") else ""
    status = r.get("status", "?")
    # the report is the flow's last stage: its own run is still `running` when it is written
    ended = r.get("ended_at") or ("after this report, its last stage" if status == "running" else "-")
    if status == "running":
        status = "running: this report is its last stage"
    lines = [
        f"- run: `{result.run_id}` ({status}), preset `{preset}`, config hash `{result.config_hash}`",
        f"- git: `{r.get('git_sha', '?')}`{dirty}; device: {r.get('device', '?')}; seed: {r.get('seed', '?')}",
        f"- started: {r.get('started_at')}; ended: {ended}",
    ]
    departures = _departures(r.get("config_json"))
    if departures:
        more = f"; and {len(departures) - _MAX_DEPARTURES} more" if len(departures) > _MAX_DEPARTURES else ""
        lines.append(f"- **departs from its attack / interpreter presets in {len(departures)} settings** (a step cap, "
                     f"overrides, or a preset file edited since the run): "
                     + "; ".join(f"`{d}`" for d in departures[:_MAX_DEPARTURES]) + more)
    return "\n".join(lines)


_MAX_DEPARTURES = 6


def _departures(config_json: str | None) -> list[str]:
    """adv2core.config.resolve.preset_departures of a stored config ([] when there is none to compare)."""
    from adv2core.config.resolve import preset_departures

    try:
        hashed = json.loads(config_json or "{}")
    except ValueError:
        return []
    return preset_departures(hashed) if isinstance(hashed, dict) else []


def _report_markdown(result: ReportResult) -> str:
    parts = [f"# ADV² benchmark report: {result.run_id}", "", _provenance(result), ""]
    for key, table in result.tables.items():
        parts.append(table.markdown(level=2))
        files = ", ".join(f"[{ext}]({p.name})" for ext, p in sorted(table.files.items()))
        if files:
            parts += [f"Files: {files}", ""]
    if result.plots:
        parts += ["## Plots", ""]
        for name, p in sorted(result.plots.items()):
            parts += [f"![{name}]({p.relative_to(result.out_dir).as_posix()})", ""]
    refused = refusal_lines(refusals_from_run(result.run))
    if refused:
        parts += ["## Refused interpreters (not run)", ""] + [f"- {s}" for s in refused] + [""]
    if result.skipped:
        parts += ["## Left out", ""] + [f"- {s}" for s in result.skipped] + [""]
    return "\n".join(parts).rstrip() + "\n"


# ----------------------------------------------------------------------------- sample grids
def _grid_cells(con: Any, config_hash: str) -> list[tuple[str, str, list[str]]]:
    """(model, interpreter, image ids successful under both PGD and ADV²), first ids by image id."""
    rows = con.execute(
        """
        SELECT a.model, a.interpreter, list(a.image_id ORDER BY a.image_id) AS ids
        FROM samples a JOIN samples p
          ON a.config_hash = p.config_hash AND a.model = p.model AND a.interpreter = p.interpreter
         AND a.image_id = p.image_id
        WHERE a.config_hash = ? AND a.attack = 'adv2' AND p.attack = 'pgd' AND a.success AND p.success
        GROUP BY a.model, a.interpreter
        """,
        [config_hash],
    ).fetchall()
    return sorted(((m, i, list(ids)) for m, i, ids in rows), key=lambda c: (c[0], interpreter_key(c[1])))


def _arrays_files(root: Path, config_hash: str, model: str, interpreter: str, attack: str) -> list[Path]:
    d = (root / "arrays" / f"config_hash={config_hash}" / "stage=attack" / f"model={model}"
         / f"interpreter={interpreter}" / f"attack={attack}")
    return sorted(d.glob("*.npz")) if d.is_dir() else []


def _sample_grids(con: Any, root: Path, config_hash: str, out_dir: Path, load_images: LoadImages | None,
                  result: ReportResult) -> None:
    if load_images is None:
        result.skipped.append("sample grid: no image loader given (load_images=None)")
        return
    cells = _grid_cells(con, config_hash)
    if not cells:
        result.skipped.append("sample grid: no image successful under both PGD and ADV²")
        return
    for model, interp, ids in cells:
        pgd_files = _arrays_files(root, config_hash, model, interp, "pgd")
        adv_files = _arrays_files(root, config_hash, model, interp, "adv2")
        if not pgd_files or not adv_files:
            result.skipped.append(f"sample grid {model}/{interp}: no arrays files for PGD and ADV²")
            continue
        pgd, adv2 = plots.load_unit_arrays(pgd_files), plots.load_unit_arrays(adv_files)
        chosen = [i for i in ids if i in pgd and i in adv2][:GRID_IMAGES]
        if not chosen:
            result.skipped.append(f"sample grid {model}/{interp}: arrays hold none of the successful images")
            continue
        path = plots.sample_grid(chosen, load_images(chosen), pgd, adv2,
                                 out_dir / f"samples_{plots._safe(model)}_{plots._safe(interp)}.png",
                                 title=f"{model} / {interp}: benign, PGD, ADV² and their maps")
        if path is None:
            result.skipped.append(f"sample grid {model}/{interp}: arrays lack perturbations or maps")
        else:
            result.plots[path.stem] = path


# ----------------------------------------------------------------------------- build
def build_report(
    results_root: str | Path,
    run_id: str = "latest",
    out_dir: Path | None = None,
    *,
    load_images: LoadImages | None = None,
    make_plots: bool = True,
) -> ReportResult:
    """Query the store for one run (``'latest'``: most recently started) and write its report.

    Writes under ``out_dir`` (default ``<data root>/reports/<run_id>/``): ``table{1..6}_*.{md,csv,tex}``
    (table 5 only with localisation data), ``report.md`` and the PNG plots. Raises :class:`ReportError`
    for an unknown run and :class:`adv2core.store.StoreError` for a missing results root.
    """
    from adv2core.store.query import connect

    root = Path(results_root).expanduser()
    con = connect(root)
    try:
        run = resolve_run(root, run_id, con)
        rid, chash = str(run["run_id"]), str(run["config_hash"])
        builders = {
            "population": population_table, "success": success_table, "distances": distance_table, "iou": iou_table,
            "transfer": transfer_table, "localisation": localisation_table, "status": status_table,
        }
        marks = marks_from_run(run)
        tables = {key: fn(con, chash) for key, fn in builders.items()}
        tables["shape"] = shape_table(tables["success"], tables["distances"], tables["iou"], tables["localisation"])
        aid = aid_table(tables["success"], tables["distances"], tables["iou"], tables["localisation"])
        if aid is not None:
            tables["aid"] = aid
        det = detection.detection_table(con, chash, run, marks)
        if det is not None:
            tables["detection"] = det
        tables = {key: apply_marks(t, marks) for key, t in tables.items()}
        refusals = refusals_from_run(run)  # gates.on_refused=skip: cells not run, never a number
        tables = {key: apply_refusals(t, refusals) for key, t in tables.items()}
        if out_dir is None:
            from adv2core.paths import data_root

            out_dir = data_root() / "reports" / rid
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        result = ReportResult(run_id=rid, config_hash=chash, run=run, out_dir=out_dir, tables={})
        if det is None:
            result.skipped.append("table 8 (detection): the run has no defence stage (defences: [])")
        for key, table in tables.items():
            if key == "localisation" and table.empty:
                result.skipped.append("table 5 (localisation): no localisation values (datasets without masks)")
                continue
            if key == "transfer" and table.empty:
                result.skipped.append("table 4 (transfer): no cross-evaluation rows for this run")
            result.tables[key] = table
            result.paths += list(table.write(out_dir, TABLE_FILES[key]).values())
        if make_plots:
            _plots(con, root.resolve(), chash, out_dir, load_images, result)
    finally:
        con.close()
    report = result.report_path
    report.write_text(_report_markdown(result), encoding="utf-8", newline="")
    result.paths.append(report)
    return result


def _plots(con: Any, root: Path, chash: str, out_dir: Path, load_images: LoadImages | None,
           result: ReportResult) -> None:
    t = result.tables
    p = plots.iou_curves(t["iou"].records, out_dir / "iou_vs_k.png")
    if p is not None:
        result.plots[p.stem] = p
    for p in plots.transfer_heatmaps(t["transfer"].records, out_dir):
        result.plots[p.stem] = p
    p = plots.success_l1_bars(t["success"].records, t["distances"].records, out_dir / "success_l1.png")
    if p is not None:
        result.plots[p.stem] = p
    if "detection" in t:
        for p in (detection.roc_curves(t["detection"].records, out_dir / "detection_roc.png"),
                  detection.detection_bars(t["detection"].records, out_dir / "detection_rates.png")):
            if p is not None:
                result.plots[p.stem] = p
    _sample_grids(con, root, chash, out_dir, load_images, result)
    result.paths += [result.plots[k] for k in sorted(result.plots)]


# ----------------------------------------------------------------------------- views for CLI and flow
def headline_markdown(result: ReportResult) -> str:
    """Compact Markdown for the end of a run: success/confidence, map distances, L1 transfer matrices."""
    parts = [f"## Run {result.run_id} (config {result.config_hash})", ""]
    for key in ("population", "success", "distances", "shape", "detection", "aid"):
        if key in result.tables:
            parts.append(result.tables[key].markdown(level=3))
    transfer = result.tables.get("transfer")
    if transfer is not None and transfer.blocks:
        parts += [f"### {transfer.title} (L1)", ""]
        for b in transfer.blocks:
            if b.caption and b.caption.endswith(": L1"):
                parts += [b.markdown(), ""]
    parts.append(f"Report: {result.report_path}")
    return "\n".join(parts).rstrip() + "\n"


_KEY_BAD = re.compile(r"[^a-z0-9-]+")


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    key = _KEY_BAD.sub("-", "-".join(parts).lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "report"


def artifact_tables(result: ReportResult) -> dict[str, list[dict[str, str]]]:
    """Formatted rows per table for ``create_table_artifact`` (keys versioned across runs, e.g.
    ``adv2-success``); the transfer table gets one artifact per metric."""
    out: dict[str, list[dict[str, str]]] = {}
    for key, table in result.tables.items():
        if key == "transfer":
            for suffix, tail in (("l1", ": L1"), ("iou", ": IoU (mean over k)")):
                rows = []
                for b in table.blocks:
                    if b.caption and b.caption.endswith(tail):
                        for r in b.rows:
                            rows.append({"table": b.caption[: -len(tail)], **dict(zip(b.header, r))})
                out[artifact_key("adv2", "transfer", suffix)] = rows
        else:
            out[artifact_key("adv2", key)] = table.artifact_rows()
    return out
