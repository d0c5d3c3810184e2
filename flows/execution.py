"""Where and how a run executes: the Prefect task runner, the Dask cluster check, process settings.

None of this is hashed or stored with results; it only decides where the stages run (a bounded thread
pool locally, or an existing Dask cluster) and fails fast, in one line, when that cannot work.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from adv2core.config import ResolvedConfig
from adv2core.errors import ConfigError, one_line
from adv2core.store import ResultStore


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
            per_worker = max(1, (os.cpu_count() or 1) // p.max_workers)
            omp = os.environ.get("OMP_NUM_THREADS", "")  # a scheduler's (or the test runner's) bound wins
            if omp.isdigit() and int(omp) >= 1:
                per_worker = min(per_worker, int(omp))
            worker.set_torch_threads(p.torch_threads or per_worker)
        yield
    finally:
        if old_threads is not None:
            worker.set_torch_threads(old_threads)
