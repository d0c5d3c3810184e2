"""Report stage: DuckDB over the Parquet store -> report files, headline tables, Prefect artifacts.

The tables and plots come from :func:`adv2core.report.build.build_report`. A report belongs to a run
*and its config*: results are keyed by config hash, and a run that resumed (or skipped every shard)
owns none of the rows it reports, so the report package filters on the run's ``config_hash``.

This module only adds what the pipeline knows: an image loader for the sample grids (rebuilt from the
run's stored config, so ``adv2 report`` works on any old run), and publishing the tables as Prefect
artifacts. Nothing imports prefect or torch at module level: ``adv2 report`` must start fast.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa

from adv2core.store.query import resolve_run


def csv_text(table: pa.Table) -> str:
    """CSV of an Arrow table (header + rows; nulls empty)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(table.column_names)
    for row in table.to_pylist():
        w.writerow(["" if row[c] is None else row[c] for c in table.column_names])
    return buf.getvalue()


def image_loader(run_row: dict[str, Any], data_root: str | Path | None = None) -> Callable[[Sequence[str]], Any]:
    """ids -> [N,3,H,W] images of the run's dataset, opened lazily from the run's stored config."""
    cache: dict[str, Any] = {}

    def load(ids: Sequence[str]):
        if "ds" not in cache:
            import os

            from adv2core.config import DataSection
            from tasks import worker

            data = DataSection(**json.loads(run_row["config_json"])["config"]["data"])
            root = str(Path(data_root or os.environ.get("ADV2_DATA", "data")).expanduser().absolute())
            ds = worker.open_dataset(data, root)
            cache["ds"], cache["index"] = ds, {i: k for k, i in enumerate(ds.ids)}
        ds, index = cache["ds"], cache["index"]
        return ds.load([index[i] for i in ids]).images

    return load


def make_report(results_root: str | Path, run: str, reports_root: str | Path, *,
                data_root: str | Path | None = None, grids: bool = True, plots: bool = True) -> dict[str, Any]:
    """Build the report of ``run`` (id or ``latest``) into ``<reports_root>/<run_id>/``.

    Returns plain data: ``run_id``, ``config_hash``, ``out_dir``, ``report`` (report.md), ``paths``,
    ``headline`` (Markdown printed at the end of ``adv2 run``), ``tables`` (Markdown by table key),
    ``artifact_tables`` (rows by artifact key) and ``skipped`` (what was left out and why).
    """
    row = resolve_run(results_root, run)  # before the heavy imports: an unknown run fails fast
    from adv2core.report.build import artifact_tables, build_report, headline_markdown

    out_dir = Path(reports_root) / row["run_id"]
    loader = image_loader(row, data_root) if grids and plots else None
    res = build_report(results_root, row["run_id"], out_dir, load_images=loader, make_plots=plots)
    return {
        "run_id": res.run_id,
        "config_hash": res.config_hash,
        "out_dir": str(res.out_dir),
        "report": str(res.report_path),
        "paths": [str(p) for p in res.paths],
        "headline": headline_markdown(res),
        "tables": res.markdown(),
        "artifact_tables": artifact_tables(res),
        "skipped": list(res.skipped),
    }


def publish_artifacts(report: dict[str, Any], preset: str) -> list[str]:
    """Mirror the report as Prefect artifacts: the headline as Markdown, every table as a table."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from adv2core.report.build import artifact_key

    key = artifact_key("adv2", preset, "report")
    create_markdown_artifact(key=key, markdown=report["headline"],
                             description=f"run {report['run_id']}, report {report['report']}")
    keys = [key]
    for tkey, rows in report.get("artifact_tables", {}).items():
        if rows:
            create_table_artifact(key=tkey, table=rows, description=f"run {report['run_id']}")
            keys.append(tkey)
    return keys


def run_report_stage(results_root: str, run_id: str, reports_root: str, preset: str, data_root: str,
                     publish: bool = True, plots: bool = True) -> dict[str, Any]:
    """Report-stage body: build the report (``plots``: with its PNG plots) and (inside a flow) publish it
    as artifacts."""
    report = make_report(results_root, run_id, reports_root, data_root=data_root, plots=plots)
    if publish:
        report["artifacts"] = publish_artifacts(report, preset)
    report.pop("artifact_tables", None)  # large and already published: keep the summary small
    return report


_TASK = None


def report_task():
    """The Prefect task wrapping :func:`run_report_stage` (built on first use)."""
    global _TASK
    if _TASK is None:
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        _TASK = task(name="report", cache_policy=NO_CACHE, persist_result=False)(run_report_stage)
    return _TASK
