"""The benchmark flow: plan -> prepare -> benign/examples/attack/cross-evaluation graph -> defences -> report.

* **plan** (flow process, :mod:`flows.plan`): resolve the config, open the dataset (its manifest: ids and
  count), list the units — benign maps per (model, interpreter, shard), examples per (model,
  interpreter-free attack, shard), attack units per (model, interpreter, attack, shard), one
  cross-evaluation task per (model, shard) — and drop those whose manifest row for this config hash
  already exists in the store. Resumability lives in the data layer, not in Prefect caching (stack-notes 1.2).
* **prepare**: one task per model that trains/loads its checkpoint (and RTS masking model), so shard
  tasks never race to train, and runs the preflight gates. With ``gates.on_refused: skip`` an interpreter
  refused there is dropped from the plan for that model only (:func:`flows.plan.drop_refused`).
* **benign, examples, attack, cross-evaluation** (:mod:`flows.stages`): one task per pending unit,
  submitted with ``resources={"GPU": 1}`` on Dask as soon as what it reads is stored: benign maps and
  PGD/StAdv examples first, then the attack units (PGD/StAdv ones only measure the stored examples),
  then the cross-evaluation of each (model, shard).
* **defences** (``defences: [...]``): one task per (model, detector) once its model's shards are done
  (:mod:`flows.defences`).
* **report**: DuckDB over the Parquet files -> report files + Prefect artifacts.

Two engines run the same orchestration: Prefect (``benchmark_flow`` in :mod:`flows.prefect_flows`; a bounded thread pool locally,
``DaskTaskRunner(address=...)`` for a cluster) and ``inline`` (plain calls, no server: unit tests and
debugging). Task bodies are the same functions in both.

This module holds the orchestration and the Python entry point (the Prefect flows, which import prefect,
are in :mod:`flows.prefect_flows`); the engines live in
:mod:`flows.engines`, the run row / summary bookkeeping in :mod:`flows.bookkeeping`, and the execution
settings (task runner, Dask cluster check, torch threads) in :mod:`flows.execution`.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from adv2core.config import BenchConfig, ResolvedConfig
from adv2core.errors import ConfigError, one_line
from flows.bookkeeping import LAST_SUMMARY, BenchmarkFailed, RunRecord, benchmark_failed  # noqa: F401 - re-exported
from flows.defences import run_defence_stage
from flows.engines import InlineEngine, PrefectEngine
from flows.execution import check_dask_cluster, execution_context, task_runner_for  # noqa: F401 - re-exported
from flows.plan import Plan, drop_refused, make_plan  # noqa: F401 - Plan: re-exported
from flows.progress import Tracker
from flows.stages import run_attack_graph
from tasks import provenance


def _is_user_error(exc: BaseException) -> bool:
    """A config, data or checkpoint problem of the user's (not a failed, preempted or transient task)."""
    from adv2core.errors import CheckpointError, DataError
    from adv2core.gates import GateError

    return isinstance(exc, (ConfigError, DataError, CheckpointError, GateError))


# ---------------------------------------------------------------------------------------- orchestration
def orchestrate(rc: ResolvedConfig, run: dict[str, Any], engine: Any, tracker: Tracker) -> dict[str, Any]:
    """The stages, shared by both engines. Returns the run summary (plain data)."""
    payload = rc.to_payload()
    record = RunRecord(rc, run, engine.name)  # writes the 'running' row
    run, summary = record.run, record.summary
    status = "failed"
    t0 = time.perf_counter()
    try:
        plan = make_plan(rc, record.store, run["run_id"])
        summary["plan"] = plan.to_dict()

        ready = _prepare_models(payload, plan, engine, tracker, record)
        _skip_refused(rc, plan, record)
        tracker.start(plan.total_tasks, plan.done_tasks)  # after preparation, so rate and ETA are the shards'

        # examples, attack units and cross-evaluation, each submitted as soon as its inputs are stored
        done_status: list[str | None] = []
        run_attack_graph(rc, payload, run, engine, tracker, plan, ready, record.failures, done_status,
                         record.devices)
        run_defence_stage(rc, payload, run, engine, tracker, plan.defence, plan.attack_units, ready,
                          record.failures, done_status, plan.refused)

        record.count(plan, done_status, t0)
        status = "completed" if not record.failures else "failed"
        summary["status"] = status
        if rc.bench.pipeline.report:
            _report(rc, run, engine, summary)
    except Exception as exc:
        summary["error"] = one_line(exc)
        raise
    except BaseException:  # Ctrl-C, SIGTERM (ours or Prefect's TerminationSignal), SystemExit
        status = "interrupted"
        raise
    finally:
        tracker.close()
        record.finish(status)
    return summary


def _prepare_models(payload: dict[str, Any], plan: Plan, engine: Any, tracker: Tracker,
                    record: RunRecord) -> set[str]:
    """Prepare (train/load) every model that pending work needs, one task each; returns the ready ones.

    A user error (refused weights, a missing dataset folder, a bad model name) ends the run: every shard
    of the model would fail the same way. Other failures are recorded and the model's work skipped.
    """
    from tasks.prepare import prepare_model

    needed = sorted({u.model for u in plan.pending_attack} | {m for m, _ in plan.pending_transfer}
                    | {u.model for u in plan.pending_examples} | {u.model for u in plan.pending_benign}
                    | {u.model for u in plan.defence.pending})
    if needed:
        tracker.note(f"preparing {', '.join(needed)} (first use trains embedded models and RTS, cached)")
    prep = {engine.submit(prepare_model, payload, m, gpu=True): m for m in needed}
    ready: set[str] = set()
    for fut in engine.as_completed(list(prep)):
        ok, val = engine.outcome(fut)
        if ok:
            ready.add(prep[fut])
            record.devices.add(str(val.get("device")))
            record.summary.setdefault("prepare_seconds", {})[prep[fut]] = val.get("seconds")  # benchmarks/perf_pipeline.py
            record.preflight["models"][prep[fut]] = val.get("preflight")
        elif _is_user_error(val):
            raise val  # the run ends here as the user error it is (CLI exit 2)
        else:
            record.failures.append({"stage": "prepare", "model": prep[fut], "error": one_line(val)})
    record.summary["preflight"] = record.preflight
    record.write_running()
    return ready


def _skip_refused(rc: ResolvedConfig, plan: Plan, record: RunRecord) -> None:
    """With ``gates.on_refused=skip``: drop the work of the interpreters preparation refused, per model
    (:func:`flows.plan.drop_refused`), and list them in the summary (the run row's preflight JSON already
    holds each one's ``status: refused`` and reason)."""
    from adv2core.gates import refused_cells

    refused = {m: refused_cells(rep or {}) for m, rep in record.preflight["models"].items()}
    refused = {m: r for m, r in refused.items() if r}
    if not refused:
        return
    drop_refused(rc, plan, refused)
    record.summary["plan"] = plan.to_dict()
    record.summary["refused"] = [{"model": m, "interpreter": i, "reason": why}
                                 for m, r in sorted(refused.items()) for i, why in sorted(r.items())]


def _report(rc: ResolvedConfig, run: dict[str, Any], engine: Any, summary: dict[str, Any]) -> None:
    """The report stage; its failure is recorded in the summary, not raised (the results are stored)."""
    try:
        rep = engine.call(_report_task(engine), rc.results_root, run["run_id"], rc.reports_root,
                          rc.bench.preset, rc.data_root, engine.name == "prefect", rc.bench.pipeline.report_plots)
        summary["report"] = {k: rep.get(k) for k in ("report", "out_dir", "paths", "headline", "skipped",
                                                       "artifacts")}
    except Exception as exc:
        summary["report_error"] = one_line(exc)


def _report_task(engine: Any) -> Any:
    from tasks.report import report_task, run_report_stage

    return report_task() if engine.name == "prefect" else run_report_stage


# ---------------------------------------------------------------------------------------- flows
def __getattr__(name: str) -> Any:
    """``benchmark_flow`` / ``scheduled_benchmark`` live in :mod:`flows.prefect_flows` (imported on use, so
    that the inline engine and the CLI's start never import prefect)."""
    if name in ("benchmark_flow", "scheduled_benchmark"):
        from flows import prefect_flows

        return getattr(prefect_flows, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------- entry points
def load_bench(preset: str | None, config_file: str | None, overrides: Iterable[str]) -> BenchConfig:
    from adv2core.config import load_config

    return load_config(preset, config_file, list(overrides))


def new_run(rc: ResolvedConfig) -> dict[str, Any]:
    return {"run_id": provenance.new_run_id(rc.bench.preset), "code_version": provenance.code_version()}


def run_benchmark(
    cfg: BenchConfig | ResolvedConfig,
    *,
    engine: str = "prefect",
    run_id: str | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Run a benchmark to completion in this process; returns the summary dict.

    ``engine="prefect"`` runs :data:`benchmark_flow` against ``PREFECT_API_URL`` or a private local
    server (see :mod:`flows.server`); ``"inline"`` calls the task bodies directly (no Prefect server).
    Raises :class:`BenchmarkFailed` when some shard task failed (completed shards stay stored).
    """
    from flows import progress as progress_mod
    from flows.server import default_prefect_home, prefect_api

    rc = cfg if isinstance(cfg, ResolvedConfig) else cfg.resolve()
    run = new_run(rc)
    if run_id:
        run["run_id"] = run_id
    p = rc.bench.pipeline
    if engine not in ("prefect", "inline"):
        raise ConfigError(f"unknown engine {engine!r}; use prefect or inline")
    if engine == "inline" and p.dask_address:
        raise ConfigError("the inline engine cannot use a Dask cluster; drop pipeline.dask_address")
    progress_mod.set_listener(progress)
    try:
        with execution_context(rc):
            if engine == "inline":
                summary = orchestrate(rc, run, InlineEngine(p.retries, p.retry_delay_s), Tracker())
                if summary["failures"]:
                    raise benchmark_failed(summary)
                return summary
            from flows.prefect_flows import benchmark_flow

            with prefect_api(default_prefect_home(rc.data_root), distributed=bool(p.dask_address),
                             heartbeats=p.heartbeats) as api:
                flow_fn = benchmark_flow.with_options(task_runner=task_runner_for(rc), flow_run_name=run["run_id"])
                state = flow_fn(rc.to_payload(), run, return_state=True)
                summary = LAST_SUMMARY.pop(run["run_id"], None)
                if summary is None:  # the flow failed before orchestrating (e.g. could not start)
                    state.result()  # re-raises the flow's exception
                    raise BenchmarkFailed(f"run {run['run_id']} ended in state {state.name}")
                summary["prefect"] = {"api_url": api["api_url"], "mode": api["mode"], "state": state.name}
                if summary.get("error"):  # orchestration itself failed (bad dataset, unwritable store ...)
                    state.result()  # re-raises the original exception (one-line Adv2Error for user problems)
                if summary["failures"]:
                    raise benchmark_failed(summary)
                return summary
    finally:
        progress_mod.set_listener(None)
