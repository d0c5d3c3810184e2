"""Pipeline commands: ``adv2 run``, ``adv2 runs``, ``adv2 sql``, ``adv2 report``.

``runs``, ``sql`` and ``report`` read the Parquet store through DuckDB only: they never import torch
or prefect, so they answer in well under a second. ``run`` imports prefect lazily, after it has put
``PREFECT_HOME`` under the data root (unless the user set one) and quietened Prefect's console logs
(a progress bar shows the shards instead; the logs still reach the Prefect API/UI).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from adv2cli.common import emit_json, user_errors

FORMATS = ("table", "csv", "json")


def _data_root() -> Path:
    return Path(os.environ.get("ADV2_DATA", "data")).expanduser().absolute()


def _results_root(results: Optional[Path]) -> Path:
    return (results if results is not None else _data_root() / "results").expanduser().absolute()


def _existing_root(results: Optional[Path]) -> Path:
    from adv2core.store import StoreError

    root = _results_root(results)
    if not root.is_dir():
        raise StoreError(f"no results at {root} yet; run `adv2 run --preset smoke` or pass --results DIR")
    return root


def _prepare_prefect_env(data_root: Path) -> None:
    """Settings that must be in the environment before prefect is imported."""
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(data_root / "prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


# ---------------------------------------------------------------------------------------- formatting
def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def text_table(columns: list[str], rows: list[dict[str, Any]], max_width: int = 60) -> str:
    """Plain aligned columns (no colour codes: safe to pipe)."""
    cells = [[_cell(r.get(c))[:max_width] for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def _print_report(report: dict[str, Any] | None) -> None:
    """The headline tables (Markdown) and where the full report is."""
    if not report:
        return
    if report.get("headline"):
        typer.echo("\n" + report["headline"].rstrip())
    if report.get("report"):
        plots = ", plots" if any(str(p).endswith(".png") for p in report.get("paths") or ()) else ""
        typer.echo(f"\nreport: {report['report']} (all tables, CSV/LaTeX{plots} in {report.get('out_dir')})")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a batch scheduler's preemption, ``kill``) ends a run like Ctrl-C: the flow's cleanup
    records the run as ``interrupted`` and stops its private Prefect server. Only SIGKILL leaves a
    ``running`` row behind (its stored shards are still complete and a rerun resumes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    @app.command("run")
    @user_errors
    def run(
        preset: str = typer.Option("quick", help="smoke | quick | paper | isic (adv2core/configs/presets/<name>.yaml)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML merged over the preset (same keys)."),
        set_: list[str] = typer.Option([], "--set", help="Override: key.sub=value (value parsed as YAML); repeatable."),
        results: Optional[Path] = typer.Option(None, help="Results root (default <data root>/results)."),
        dask_address: Optional[str] = typer.Option(None, help="Run on an existing Dask cluster (tcp://host:8786)."),
        workers: Optional[int] = typer.Option(None, min=1, help="Local concurrent shard tasks (pipeline.max_workers)."),
        device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N (pipeline.device)."),
        engine: str = typer.Option("prefect", hidden=True, help="prefect | inline (no Prefect server; debugging)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object (the run summary)."),
    ) -> None:
        """Run a benchmark: shards fan out as Prefect tasks, results go to Parquet, a report at the end.

        A rerun with the same config skips every shard already stored (config-hash keyed).
        """
        overrides = list(set_)
        if results is not None:
            overrides.append(f"pipeline.results={results.expanduser().absolute()}")
        if dask_address:
            overrides.append(f"pipeline.dask_address={dask_address}")
        if workers is not None:
            overrides.append(f"pipeline.max_workers={workers}")
        if device:
            overrides.append(f"pipeline.device={device}")
        from adv2core.config import load_config

        cfg = load_config(preset, config, overrides)
        rc = cfg.resolve()
        _prepare_prefect_env(Path(rc.data_root))
        from flows.benchmark import BenchmarkFailed, run_benchmark
        from flows.progress import TqdmListener

        if not json_out:
            typer.echo(f"run: preset {cfg.preset}, config {rc.config_hash}, {rc.num_shards} shard(s) x "
                       f"{len(cfg.models.names)} model(s) x {len(cfg.interpreters.names)} interpreter(s) x "
                       f"{len(cfg.attacks.names)} attack(s) -> {rc.results_root}", err=True)
        listener = TqdmListener() if progress else None
        try:
            with _sigterm_as_interrupt():
                summary = run_benchmark(rc, engine=engine, progress=listener)
        except BenchmarkFailed as exc:
            summary = exc.summary
            if json_out:
                emit_json({**summary, "error": str(exc)})
            else:
                _print_report(summary.get("report"))
                typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except BaseException as exc:  # Ctrl-C, SIGTERM (KeyboardInterrupt or Prefect's TerminationSignal)
            if isinstance(exc, (Exception, SystemExit)):
                raise
            typer.echo("error: interrupted; completed shards are stored, rerun the same command to resume", err=True)
            raise typer.Exit(130) from None
        if json_out:
            emit_json(summary)
            return
        _print_report(summary.get("report"))
        if summary.get("report_error"):
            typer.echo(f"warning: report stage failed: {summary['report_error']}", err=True)
        typer.echo(f"\nrun {summary['run_id']}: {summary.get('computed', 0)} shard task(s) computed, "
                   f"{summary.get('skipped', 0)} skipped, {summary.get('seconds', 0):.1f} s; "
                   f"results in {summary['results']}")

    @app.command("runs")
    @user_errors
    def runs(
        results: Optional[Path] = typer.Option(None, help="Results root (default <data root>/results)."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """List the runs in a results root with their provenance."""
        from adv2core.store import run_sql

        root = _existing_root(results)
        t = run_sql(root, RUNS_SQL)
        rows = t.to_pylist()
        if json_out:
            import json

            for r in rows:  # gate thresholds, accuracy, checkpoint sha256s, localisation: nested JSON
                r["preflight"] = json.loads(r["preflight"]) if r.get("preflight") else None
            emit_json({"results": str(root), "runs": rows})
            return
        if not rows:
            typer.echo(f"no runs in {root}")
            return
        cols = ["run_id", "preset", "status", "config_hash", "git", "device", "started_at", "seconds",
                "shards_written", "samples"]
        for r in rows:
            sha = r.get("git_sha") or "unknown"
            r["git"] = sha[:10] + ("+dirty" if r.get("git_dirty") else "")
            r["started_at"] = str(r["started_at"])[:19]
        typer.echo(text_table(cols, rows))

    @app.command("sql")
    @user_errors
    def sql(
        query: str = typer.Argument(..., help="SQL over the views runs, samples, transfer, evaluations, benign, "
                                               "examples, detections, shards (read-only)."),
        format: str = typer.Option("table", "--format", help="table | csv | json."),
        results: Optional[Path] = typer.Option(None, help="Results root (default <data root>/results)."),
    ) -> None:
        """Read-only SQL over the results (DuckDB views; writes and outside files are refused)."""
        from adv2core.errors import ConfigError
        from adv2core.store import run_sql

        if format not in FORMATS:
            raise ConfigError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
        root = _existing_root(results)
        t = run_sql(root, query)
        rows = t.to_pylist()
        if format == "json":
            emit_json({"columns": t.column_names, "rows": rows, "row_count": len(rows)})
        elif format == "csv":
            from tasks.report import csv_text

            sys.stdout.write(csv_text(t))
        else:
            typer.echo(text_table(t.column_names, rows) if t.column_names else "(no result)")

    @app.command("report")
    @user_errors
    def report(
        run: str = typer.Option("latest", "--run", help="Run id, or latest."),
        results: Optional[Path] = typer.Option(None, help="Results root (default <data root>/results)."),
        out: Optional[Path] = typer.Option(None, help="Reports folder (default <data root>/reports)."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """(Re)build the report of a run from the stored results: tables, CSV/LaTeX, plots."""
        from tasks.report import make_report

        root = _existing_root(results)
        reports = (out or _data_root() / "reports").expanduser().absolute()
        rep = make_report(root, run, reports)
        if json_out:
            emit_json(rep)
            return
        typer.echo(f"run {rep['run_id']} (config {rep['config_hash']})")
        _print_report(rep)


RUNS_SQL = """
SELECT r.run_id, r.preset, r.status, r.config_hash, r.git_sha, r.git_dirty, r.device, r.hostname,
       r.started_at, r.ended_at,
       round(epoch(r.ended_at) - epoch(r.started_at), 1) AS seconds,
       (SELECT count(*) FROM shards m WHERE m.run_id = r.run_id) AS shards_written,
       (SELECT count(*) FROM samples s WHERE s.config_hash = r.config_hash) AS samples,
       r.package_versions, r.seed, r.preflight
FROM runs r ORDER BY r.started_at, r.run_id
"""
