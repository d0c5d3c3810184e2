"""Small pieces shared by the task bodies: retry policy, budgets, identity columns, summaries."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from adv2core.config import ResolvedConfig
from adv2core.errors import Adv2Error
from adv2core.store.layout import ShardUnit
from adv2core.transient import is_transient  # the one definition of a transient failure

__all__ = ["Deadline", "ShardBudgetExceeded", "StageTask", "identity", "is_transient", "retry_transient", "stage_task", "to_numpy",
           "unit_summary"]


class ShardBudgetExceeded(Adv2Error):
    """A shard ran past ``pipeline.shard_budget_s``: it is not written and a rerun recomputes it."""


class Deadline:
    """A per-shard wall-clock budget, checked between batches (threads cannot be interrupted safely).

    Prefect's ``timeout_seconds`` cannot stop a thread that is inside a CUDA kernel or a C call
    (stack-notes 1.3), so the shard loop checks the clock itself and gives up cleanly, leaving no files.
    """

    def __init__(self, seconds: float | None, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self.start = time.monotonic()
        self.at = None if seconds is None else self.start + seconds

    def check(self) -> None:
        if self.at is not None and time.monotonic() > self.at:
            raise ShardBudgetExceeded(
                f"{self.what} exceeded its budget of {self.seconds:g} s (pipeline.shard_budget_s); "
                f"it was not written and a rerun will retry it"
            )


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when :func:`is_transient` says so."""
    try:
        exc = state.result(raise_on_failure=False)
    except BaseException as e:  # the result itself may re-raise
        exc = e
    return is_transient(exc if isinstance(exc, BaseException) else None)


def identity(rc: ResolvedConfig, run: dict[str, Any], unit: ShardUnit) -> dict[str, Any]:
    """Columns every row of a unit carries: who wrote it, with which config/code/seed, where."""
    return {
        "run_id": run["run_id"],
        "config_hash": rc.config_hash,
        "code_version": run["code_version"],
        "seed": int(rc.bench.seed),
        "dataset": rc.bench.data.dataset,
        "shard": unit.shard,
        "num_shards": unit.num_shards,
        "model": unit.model,
        "attack": unit.attack,
    }


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """Tensor / array / list -> numpy on the host (called once per batch, outside attack loops)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    return a.astype(dtype) if dtype is not None and a.dtype != dtype else a


def unit_summary(unit: ShardUnit, status: str, **extra: Any) -> dict[str, Any]:
    """The small dict a task returns (never tensors): enough for progress and the run summary."""
    return {
        "stage": unit.stage, "model": unit.model, "interpreter": unit.interpreter, "attack": unit.attack,
        "shard": unit.shard, "num_shards": unit.num_shards, "status": status, **extra,
    }


class StageTask:
    """A stage body with the stages' common Prefect task policy, built into a Prefect task on first use.

    The inline engine calls ``.fn`` and never imports prefect (about 2 s of every ``adv2 run --engine
    inline`` process and of every CLI test); the Prefect engine's ``with_options`` / ``submit`` / call
    reach the real task. Policy: no Prefect caching or result persistence (resumability lives in the
    store's manifests), transient failures retried after 5 s, others not.
    """

    def __init__(self, fn: Any, name: str, run_name: str, retries: int = 2) -> None:
        self.fn, self.name, self.run_name, self.retries = fn, name, run_name, retries
        self._task: Any = None

    @property
    def task(self) -> Any:
        if self._task is None:
            from prefect import task
            from prefect.cache_policies import NO_CACHE

            self._task = task(name=self.name, task_run_name=self.run_name, cache_policy=NO_CACHE,
                              retries=self.retries, retry_delay_seconds=5, retry_condition_fn=retry_transient,
                              persist_result=False)(self.fn)
        return self._task

    def with_options(self, **options: Any) -> Any:
        return self.task.with_options(**options)

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        return self.task.submit(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.task(*args, **kwargs)


def stage_task(fn: Any, name: str, run_name: str, retries: int = 2) -> StageTask:
    """``fn`` as a (lazily built) Prefect task with the stages' common policy; see :class:`StageTask`."""
    return StageTask(fn, name, run_name, retries)
