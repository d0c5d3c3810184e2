"""The benchmark flow: plan -> prepare -> benign/examples/attack/cross-evaluation graph -> defences -> report.

* **plan** (flow process, :mod:`flows.plan`): resolve the config, open the dataset (its manifest: ids and
  count), list the units — benign maps per (model, interpreter, shard), examples per (model,
  interpreter-free attack, shard), attack units per (model, interpreter, attack, shard), one
  cross-evaluation task per (model, shard) — and drop those whose manifest row for this config hash
  already exists in the store. Resumability lives in the data layer, not in Prefect caching (stack-notes 1.2).
* **prepare**: one task per model that trains/loads its checkpoint (and RTS masking model), so shard
  tasks never race to train.
* **benign, examples, attack, cross-evaluation** (:mod:`flows.stages`): one task per pending unit,
  submitted with ``resources={"GPU": 1}`` on Dask as soon as what it reads is stored: benign maps and
  PGD/StAdv examples first, then the attack units (PGD/StAdv ones only measure the stored examples),
  then the cross-evaluation of each (model, shard).
* **defences** (``defences: [...]``): one task per (model, detector) once its model's shards are done
  (:mod:`flows.defences`).
* **report**: DuckDB over the Parquet files -> report files + Prefect artifacts.

Two engines run the same orchestration: Prefect (``benchmark_flow``; a bounded thread pool locally,
``DaskTaskRunner(address=...)`` for a cluster) and ``inline`` (plain calls, no server: unit tests and
debugging). Task bodies are the same functions in both.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

from adv2core.config import BenchConfig, ResolvedConfig
from adv2core.errors import Adv2Error, ConfigError, one_line
from adv2core.store import ResultStore
from flows.defences import run_defence_stage
from flows.plan import Plan, make_plan  # noqa: F401 - Plan: re-exported
from flows.progress import Tracker
from flows.stages import run_attack_graph
from tasks import provenance

#: Summaries of flows run in this process, by run id (the CLI reads them after a failed flow).
LAST_SUMMARY: dict[str, dict[str, Any]] = {}


class BenchmarkFailed(Adv2Error):
    """Some shard tasks failed; the completed ones are stored and a rerun resumes the rest."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


def _failed(summary: dict[str, Any]) -> BenchmarkFailed:
    n = len(summary.get("failures", []))
    first = summary["failures"][0].get("error") if n else summary.get("error")
    return BenchmarkFailed(f"{n} shard task(s) failed (first: {first}); completed shards are stored, "
                           f"rerun to resume", summary)


# ---------------------------------------------------------------------------------------- engines
class _Done:
    """A finished inline 'future'."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error


class InlineEngine:
    """Runs task bodies directly, in order, with the same retry rule as the Prefect tasks."""

    name = "inline"

    def __init__(self, retries: int = 0, retry_delay_s: float = 0.0) -> None:
        self.retries, self.retry_delay_s = retries, retry_delay_s

    def submit(self, task: Any, *args: Any, gpu: bool = False) -> _Done:
        from tasks.common import is_transient

        fn = getattr(task, "fn", task)
        for attempt in range(self.retries + 1):
            try:
                return _Done(fn(*args))
            except Exception as exc:  # recorded like a failed task run
                if attempt < self.retries and is_transient(exc):
                    time.sleep(self.retry_delay_s)
                    continue
                return _Done(error=exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def as_completed(self, futures: Iterable[_Done]) -> Iterator[_Done]:
        yield from list(futures)

    def outcome(self, fut: _Done) -> tuple[bool, Any]:
        return (fut.error is None, fut.value if fut.error is None else fut.error)

    def call(self, task: Any, *args: Any) -> Any:
        return getattr(task, "fn", task)(*args)


class PrefectEngine:
    """Submits Prefect tasks to the flow's task runner; GPU work is annotated for Dask resources."""

    name = "prefect"

    def __init__(self, rc: ResolvedConfig) -> None:
        p = rc.bench.pipeline
        self.gpu_resource = p.gpu_resource if p.dask_address else None
        self.retries, self.retry_delay_s = p.retries, p.retry_delay_s

    def submit(self, task: Any, *args: Any, gpu: bool = False) -> Any:
        t = task.with_options(retries=self.retries, retry_delay_seconds=self.retry_delay_s)
        if gpu and self.gpu_resource:
            import dask

            with dask.annotate(resources={self.gpu_resource: 1}):
                return t.submit(*args)
        return t.submit(*args)

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        from prefect.futures import as_completed

        futs = list(futures)
        if futs:
            yield from as_completed(futs)

    def outcome(self, fut: Any) -> tuple[bool, Any]:
        """(ok, value or exception) of a finished task. A BaseException that is not an Exception (Ctrl-C,
        SIGTERM as Prefect's TerminationSignal, SystemExit) propagates: when the signal lands while a task
        runs, its future carries the signal, and that interrupts the run; it is not a failed shard."""
        try:
            return True, fut.result()
        except Exception as exc:  # a failed task re-raises its exception here
            return False, exc

    def call(self, task: Any, *args: Any) -> Any:
        return task(*args)


def _is_user_error(exc: BaseException) -> bool:
    """A config, data or checkpoint problem of the user's (not a failed, preempted or transient task)."""
    from adv2core.errors import CheckpointError, DataError
    from adv2core.gates import GateError

    return isinstance(exc, (ConfigError, DataError, CheckpointError, GateError))


# ---------------------------------------------------------------------------------------- orchestration
def orchestrate(rc: ResolvedConfig, run: dict[str, Any], engine: Any, tracker: Tracker) -> dict[str, Any]:
    """The stages, shared by both engines. Returns the run summary (plain data)."""
    from tasks.prepare import prepare_model

    payload = rc.to_payload()
    store = ResultStore(rc.results_root)
    started = datetime.now(timezone.utc)
    run = {**run, "code_version": run.get("code_version") or provenance.code_version()}
    preflight: dict[str, Any] = {"gates": rc.bench.gates.model_dump(mode="json"), "models": {}}
    if rc.bench.detectors:  # not hashed: the report finds this run's detection rows by these settings hashes
        from tasks.defences import defence_hashes

        preflight["defences"] = defence_hashes(rc)
    row_args = dict(run_id=run["run_id"], config_hash=rc.config_hash, preset=rc.bench.preset,
                    config_json=rc.canonical_json(), seed=rc.bench.seed, started_at=started, preflight=preflight)
    device = run.get("device") or rc.bench.pipeline.device
    store.write_run(provenance.run_row(**row_args, device=device, status="running"))
    summary: dict[str, Any] = {"run_id": run["run_id"], "config_hash": rc.config_hash, "preset": rc.bench.preset,
                               "results": rc.results_root, "engine": engine.name, "failures": []}
    status = "failed"
    devices: set[str] = set()
    t0 = time.perf_counter()
    try:
        plan = make_plan(rc, store)
        summary["plan"] = plan.to_dict()
        failures: list[dict[str, Any]] = summary["failures"]

        # prepare: models needed by pending work
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
                devices.add(str(val.get("device")))
                summary.setdefault("prepare_seconds", {})[prep[fut]] = val.get("seconds")  # benchmarks/perf_pipeline.py
                preflight["models"][prep[fut]] = val.get("preflight")
            elif _is_user_error(val):
                # Refused weights, a missing dataset folder, a bad model name: every shard of the model would
                # fail the same way, so the run ends here as the user error it is (CLI exit 2).
                raise val
            else:
                failures.append({"stage": "prepare", "model": prep[fut], "error": one_line(val)})
        summary["preflight"] = preflight
        store.write_run(provenance.run_row(**row_args, device=device, status="running"))
        tracker.start(plan.total_tasks, plan.done_tasks)  # after preparation, so rate and ETA are the shards'

        # examples, attack units and cross-evaluation, each submitted as soon as its inputs are stored
        done_status: list[str | None] = []
        run_attack_graph(rc, payload, run, engine, tracker, plan, ready, failures, done_status, devices)
        run_defence_stage(rc, payload, run, engine, tracker, plan.defence, plan.attack_units, ready, failures,
                          done_status)

        summary["seconds"] = round(time.perf_counter() - t0, 3)
        summary["computed"] = sum(1 for st in done_status if st == "done")
        summary["skipped_by_task"] = sum(1 for st in done_status if st == "skipped")  # a concurrent run wrote it
        summary["skipped"] = plan.done_tasks
        status = "completed" if not failures else "failed"
        summary["status"] = status
        if rc.bench.pipeline.report:
            try:
                rep = engine.call(_report_task(engine), rc.results_root, run["run_id"], rc.reports_root,
                                  rc.bench.preset, rc.data_root, engine.name == "prefect")
                summary["report"] = {k: rep.get(k) for k in ("report", "out_dir", "paths", "headline", "skipped",
                                                               "artifacts")}
            except Exception as exc:
                summary["report_error"] = one_line(exc)
    except Exception as exc:
        summary["error"] = one_line(exc)
        raise
    except BaseException:  # Ctrl-C, SIGTERM (ours or Prefect's TerminationSignal), SystemExit
        status = "interrupted"
        raise
    finally:
        tracker.close()
        summary["status"] = status
        summary["devices"] = sorted(d for d in devices if d and d != "None")
        dev = ", ".join(summary["devices"]) or device
        store.write_run(provenance.run_row(**row_args, device=dev, status=status,
                                           ended_at=datetime.now(timezone.utc)))
        LAST_SUMMARY[run["run_id"]] = summary
    return summary


def _report_task(engine: Any) -> Any:
    from tasks.report import report_task, run_report_stage

    return report_task() if engine.name == "prefect" else run_report_stage


# ---------------------------------------------------------------------------------------- flows
def _make_flows():
    from prefect import flow, get_run_logger
    from prefect.task_runners import ThreadPoolTaskRunner

    @flow(name="adv2-benchmark", task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=False,
          validate_parameters=False)
    def benchmark_flow(payload: dict, run: dict) -> dict:
        """Run one resolved benchmark config (see :func:`run_benchmark` for the Python entry point)."""
        rc = ResolvedConfig.from_payload(payload)
        logger = get_run_logger()
        tracker = Tracker(logger, _progress_artifact(run["run_id"]))
        summary = orchestrate(rc, run, PrefectEngine(rc), tracker)
        if summary["failures"]:
            raise _failed(summary)
        return summary

    @flow(name="adv2-scheduled", persist_result=False)
    def scheduled_benchmark(preset: str = "quick", overrides: list[str] | None = None,
                            config_file: str | None = None, results: str | None = None) -> dict:
        """Deployment entry point: resolve a preset (+ overrides) and run it as a subflow.

        A subflow because the task runner (thread pool size or Dask address) comes from the config.
        """
        extra = list(overrides or [])
        if results:
            extra.append(f"pipeline.results={results}")
        cfg = load_bench(preset, config_file, extra)
        rc = cfg.resolve()
        run = new_run(rc)
        with execution_context(rc):
            flow_fn = benchmark_flow.with_options(task_runner=task_runner_for(rc), flow_run_name=run["run_id"])
            return flow_fn(rc.to_payload(), run)

    return benchmark_flow, scheduled_benchmark


def _progress_artifact(run_id: str) -> Callable[[float], None] | None:
    """A Prefect progress artifact updated as shards finish (None when artifacts are unavailable)."""
    try:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        art_id = create_progress_artifact(progress=0.0, description=f"shards done, run {run_id}")
    except Exception:
        return None

    def update(pct: float) -> None:
        update_progress_artifact(artifact_id=art_id, progress=pct)

    return update


benchmark_flow, scheduled_benchmark = _make_flows()


# ---------------------------------------------------------------------------------------- entry points
def load_bench(preset: str | None, config_file: str | None, overrides: Iterable[str]) -> BenchConfig:
    from adv2core.config import load_config

    return load_config(preset, config_file, list(overrides))


def new_run(rc: ResolvedConfig) -> dict[str, Any]:
    return {"run_id": provenance.new_run_id(rc.bench.preset), "code_version": provenance.code_version()}


def task_runner_for(rc: ResolvedConfig) -> Any:
    """Bounded thread pool locally; ``DaskTaskRunner(address=...)`` for an existing cluster."""
    p = rc.bench.pipeline
    if p.dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=p.dask_address)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=p.max_workers)


def check_dask_cluster(address: str, gpu_resource: str | None, timeout: float = 15.0) -> dict[str, Any]:
    """Fail fast (one line) if the cluster is unreachable, has no worker with the GPU resource, or has
    workers without ``PREFECT_API_URL`` (each would start its own temporary Prefect server)."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {one_line(exc)}") from None
    try:
        workers = client.scheduler_info().get("workers", {})
        if not workers:
            raise ConfigError(f"the Dask cluster at {address} has no workers; start some with `dask worker {address}`")
        if gpu_resource:
            with_res = [w for w, info in workers.items() if (info.get("resources") or {}).get(gpu_resource)]
            if not with_res:
                raise ConfigError(
                    f"no Dask worker at {address} offers resource {gpu_resource!r}; start workers with "
                    f"`dask worker {address} --nthreads 1 --resources {gpu_resource}=1` "
                    f"or set pipeline.gpu_resource=null"
                )
        env = client.run(os.environ.get, "PREFECT_API_URL")
        missing = sorted(w for w, v in env.items() if not v)
        if missing:
            raise ConfigError(f"{len(missing)} Dask worker(s) lack PREFECT_API_URL (e.g. {missing[0]}): "
                              f"export it before `dask worker` so workers do not start private Prefect servers")
        return {"workers": len(workers)}
    finally:
        client.close()


@contextlib.contextmanager
def execution_context(rc: ResolvedConfig) -> Iterator[None]:
    """Checks and process settings around a run: a writable store, torch threads, a usable cluster."""
    from tasks import worker

    p = rc.bench.pipeline
    ResultStore(rc.results_root)  # fail fast (one line) on an unwritable results root
    old_threads = None
    try:
        if p.dask_address:
            from flows.server import require_server_for_dask

            require_server_for_dask()  # before touching the cluster: the most common mistake, one clear line
            check_dask_cluster(p.dask_address, p.gpu_resource)
        else:
            import torch

            old_threads = torch.get_num_threads()
            worker.set_torch_threads(p.torch_threads or max(1, (os.cpu_count() or 1) // p.max_workers))
        yield
    finally:
        if old_threads is not None:
            worker.set_torch_threads(old_threads)


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
                    raise _failed(summary)
                return summary
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
                    raise _failed(summary)
                return summary
    finally:
        progress_mod.set_listener(None)
