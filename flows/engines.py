"""The two engines the benchmark orchestration runs on: Prefect tasks, or plain inline calls.

Both offer the same small interface (``submit``, ``as_completed``, ``outcome``, ``call``), so
:func:`flows.benchmark.orchestrate` and the stage loops (:mod:`flows.stages`, :mod:`flows.defences`) are
written once. Task bodies are the same functions in both.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

from adv2core.config import ResolvedConfig


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
