"""The benchmark flow: plan -> prepare -> examples/attack/cross-evaluation graph -> defence stage -> report.

* **plan** (flow process): resolve the config, open the dataset (its manifest: ids and count), list
  the units — one per (model, interpreter, shard) for the benign maps, one per (model, interpreter-free
  attack, shard) for the examples, one per (model,
  interpreter, attack, shard) and one cross-evaluation task per (model, shard) — and drop those whose manifest row for this config hash already exists in the store.
  Resumability lives in the data layer, not in Prefect caching (stack-notes 1.2).
* **prepare**: one task per model that trains/loads its checkpoint (and RTS masking model), so shard
  tasks never race to train.
* **examples, attack, cross-evaluation** (:mod:`flows.stages`): one task per pending unit, submitted with
  ``resources={"GPU": 1}`` on Dask as soon as what it reads is stored: PGD/StAdv examples once per
  (model, shard), then their evaluation under each interpreter; cross-evaluation per (model, shard).
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

from adv2core.config import BenchConfig, ResolvedConfig
from adv2core.errors import Adv2Error, ConfigError, one_line
from adv2core.store import ResultStore, ShardUnit
from flows.defences import DefencePlan, plan_defences, run_defence_stage
from flows.progress import Tracker
from flows.stages import run_attack_graph
from tasks import provenance
from tasks.benign import benign_unit, benign_units
from tasks.examples import examples_unit, examples_units, interpreter_free
from tasks.transfer import transfer_units

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


# ---------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """What a run will do. Units are the store's shard-units; groups are cross-evaluation tasks."""

    attack_units: list[ShardUnit]
    pending_attack: list[ShardUnit]
    transfer_groups: list[tuple[str, int]]
    pending_transfer: list[tuple[str, int]]
    num_images: int
    dataset_size: int
    skipped_attack: int = 0
    skipped_transfer: int = 0
    examples_units: list[ShardUnit] = field(default_factory=list)  # interpreter-free attacks, once per shard
    pending_examples: list[ShardUnit] = field(default_factory=list)
    benign_units: list[ShardUnit] = field(default_factory=list)  # benign maps, once per (model, interp, shard)
    pending_benign: list[ShardUnit] = field(default_factory=list)
    stale: int = 0  # complete units whose images no longer match the dataset (recomputed)
    forced: frozenset = frozenset()  # those units and (model, shard) groups: rewrite even though complete
    defence: DefencePlan = field(default_factory=DefencePlan)

    @property
    def total_tasks(self) -> int:
        return len(self.benign_units) + len(self.examples_units) + len(self.attack_units) + len(self.transfer_groups) + len(self.defence.units)

    @property
    def done_tasks(self) -> int:
        skipped_first = len(self.benign_units) + len(self.examples_units) - len(self.pending_benign) \
            - len(self.pending_examples)
        return skipped_first + self.skipped_attack + self.skipped_transfer + self.defence.skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "benign_units": len(self.benign_units), "pending_benign": len(self.pending_benign),
            "examples_units": len(self.examples_units), "pending_examples": len(self.pending_examples),
            "attack_units": len(self.attack_units), "pending_attack": len(self.pending_attack),
            "transfer_tasks": len(self.transfer_groups), "pending_transfer": len(self.pending_transfer),
            "num_images": self.num_images, "dataset_size": self.dataset_size, "stale": self.stale,
            "defence_units": len(self.defence.units), "pending_defence": len(self.defence.pending),
        }


def make_plan(rc: ResolvedConfig, store: ResultStore) -> Plan:
    """All units of the run and the ones still missing for this config hash."""
    from tasks import worker

    worker.setup_worker(rc)
    ds = worker.get_dataset(rc)
    n_avail = len(ds)
    if n_avail == 0:
        raise ConfigError(f"dataset {rc.bench.data.dataset!r} ({rc.bench.data.split}) has no images")
    n = min(rc.bench.data.num_images, n_avail)
    num_shards = rc.num_shards
    if n < num_shards:
        raise ConfigError(f"data.num_images={rc.bench.data.num_images} but the dataset has only {n_avail} images "
                          f"(fewer than {num_shards} shards); lower data.num_images or data.shard_size")
    b = rc.bench
    units = [
        ShardUnit(rc.config_hash, "attack", m, i, a, s, num_shards)
        for m in b.models.names for i in b.interpreters.names for a in b.attacks.names for s in range(num_shards)
    ]
    complete = store.completed_units(rc.config_hash)
    stale = _stale_units(rc, store, ds, complete)
    complete -= stale
    pending = [u for u in units if u not in complete]
    groups = [(m, s) for m in b.models.names for s in range(num_shards)] if rc.cross_eval_attacks else []
    pending_groups = [g for g in groups if any(u not in complete for u in transfer_units(rc, *g))]
    forced = frozenset(stale) | frozenset((u.model, u.shard) for u in stale)
    ex_units = examples_units(rc)
    needed = {examples_unit(rc, u.model, u.attack, u.shard) for u in pending if interpreter_free(u.attack)}
    pending_ex = [e for e in ex_units if e in needed and (e not in complete or e in forced)]
    ben_units = benign_units(rc)
    needed = {benign_unit(rc, u.model, u.interpreter, u.shard) for u in pending}
    pending_ben = [e for e in ben_units if e in needed and (e not in complete or e in forced)]
    return Plan(units, pending, groups, pending_groups, n, n_avail,
                skipped_attack=len(units) - len(pending), skipped_transfer=len(groups) - len(pending_groups),
                examples_units=ex_units, pending_examples=pending_ex, benign_units=ben_units,
                pending_benign=pending_ben,
                stale=len(stale), forced=forced, defence=plan_defences(rc, complete, stale))


def _stale_units(rc: ResolvedConfig, store: ResultStore, ds: Any, complete: set[ShardUnit]) -> set[ShardUnit]:
    """Complete units whose stored image ids differ from the shard's current images.

    The hash covers a folder dataset's path, not its files: if images were added or removed there, a
    shard's rows would silently describe other images. One DuckDB query over the ``samples`` ids finds
    such units (and one over the ``examples`` ids); they are recomputed (overwritten in place), and their
    cross-evaluation and evaluations with them.
    """
    from adv2core.store import run_sql
    from tasks import worker

    attack_done = [u for u in complete if u.stage == "attack"]
    ex_done = [u for u in complete if u.stage == "examples"]
    if not attack_done and not ex_done:
        return set()
    t = run_sql(store.root, "SELECT model, interpreter, attack, shard, list(image_id ORDER BY image_id) AS ids "
                            "FROM samples WHERE config_hash = ? GROUP BY ALL", [rc.config_hash])
    stored = {(r["model"], r["interpreter"], r["attack"], r["shard"]): r["ids"] for r in t.to_pylist()}
    expected = {s: sorted(ds.ids[i] for i in worker.shard_dataset_indices(rc, len(ds), s))
                for s in range(rc.num_shards)}
    stale = {u for u in attack_done if stored.get((u.model, u.interpreter, u.attack, u.shard)) != expected[u.shard]}
    if ex_done:  # examples stored for other images are recomputed, with every unit evaluating them
        t = run_sql(store.root, "SELECT model, attack, shard, list(image_id ORDER BY image_id) AS ids FROM examples "
                                "WHERE config_hash = ? GROUP BY ALL", [rc.config_hash])
        got = {(r["model"], r["attack"], r["shard"]): r["ids"] for r in t.to_pylist()}
        bad = {u for u in ex_done if got.get((u.model, u.attack, u.shard)) != expected[u.shard]}
        stale |= bad | {u for u in attack_done if any((e.model, e.attack, e.shard) == (u.model, u.attack, u.shard)
                                                      for e in bad)}
    stale |= {examples_unit(rc, u.model, u.attack, u.shard) for u in stale
              if u.stage == "attack" and interpreter_free(u.attack)} & set(ex_done)
    # benign rows hold only the attacked images: their units follow the attack units of their shard
    stale |= {benign_unit(rc, u.model, u.interpreter, u.shard) for u in stale if u.stage == "attack"} & complete
    stale |= {u for u in complete if u.stage == "transfer" and any(
        (a.model, a.shard) == (u.model, u.shard) for a in stale)}
    return stale


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
    if rc.bench.defences:  # not hashed: the report finds this run's detection rows by these settings hashes
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
