"""The Prefect flows: ``adv2-benchmark`` (one resolved config on the Prefect engine) and ``adv2-scheduled``
(the deployments' entry point in prefect.yaml: a preset + overrides, run as a subflow).

Kept apart from :mod:`flows.benchmark` so that importing the orchestration (the inline engine, the CLI,
the tests) does not import prefect; :func:`flows.benchmark.run_benchmark` imports this module only for
``engine="prefect"``.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from adv2core.config import ResolvedConfig
from flows.benchmark import load_bench, new_run, orchestrate
from flows.bookkeeping import benchmark_failed
from flows.engines import PrefectEngine
from flows.execution import execution_context, task_runner_for
from flows.progress import Tracker


@flow(name="adv2-benchmark", task_runner=ThreadPoolTaskRunner(max_workers=1), persist_result=False,
      validate_parameters=False)
def benchmark_flow(payload: dict, run: dict) -> dict:
    """Run one resolved benchmark config (see :func:`flows.benchmark.run_benchmark` for the Python entry point)."""
    rc = ResolvedConfig.from_payload(payload)
    logger = get_run_logger()
    tracker = Tracker(logger, _progress_artifact(run["run_id"]))
    summary = orchestrate(rc, run, PrefectEngine(rc), tracker)
    if summary["failures"]:
        raise benchmark_failed(summary)
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


def _progress_artifact(run_id: str):
    """A Prefect progress artifact updated as shards finish (None when artifacts are unavailable)."""
    try:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        art_id = create_progress_artifact(progress=0.0, description=f"shards done, run {run_id}")
    except Exception:
        return None

    def update(pct: float) -> None:
        update_progress_artifact(artifact_id=art_id, progress=pct)

    return update
