"""Run bookkeeping: the run's row in the store (running -> completed / failed / interrupted), its
preflight record and the summary a run returns, plus the error a run with failed tasks raises.

Kept out of :mod:`flows.benchmark` so the orchestration there reads as the stages it runs.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from adv2core.config import ResolvedConfig
from adv2core.errors import Adv2Error
from adv2core.store import ResultStore
from tasks import provenance

if TYPE_CHECKING:
    from flows.plan import Plan

#: Summaries of flows run in this process, by run id (the CLI reads them after a failed flow).
LAST_SUMMARY: dict[str, dict[str, Any]] = {}


class BenchmarkFailed(Adv2Error):
    """Some shard tasks failed; the completed ones are stored and a rerun resumes the rest."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


def benchmark_failed(summary: dict[str, Any]) -> BenchmarkFailed:
    """The error of a run whose summary lists failed tasks (its first error in the message)."""
    n = len(summary.get("failures", []))
    first = summary["failures"][0].get("error") if n else summary.get("error")
    return BenchmarkFailed(f"{n} shard task(s) failed (first: {first}); completed shards are stored, "
                           f"rerun to resume", summary)


class RunRecord:
    """One run's bookkeeping: creating it writes the ``running`` row; :meth:`finish` writes the last one.

    ``summary`` is the plain-data summary the run returns; ``preflight`` (gates, per-model checks,
    defence settings hashes) is stored with the run row; ``devices`` collects where tasks ran.
    """

    def __init__(self, rc: ResolvedConfig, run: dict[str, Any], engine_name: str) -> None:
        self.store = ResultStore(rc.results_root)
        started = datetime.now(timezone.utc)
        self.run = {**run, "code_version": run.get("code_version") or provenance.code_version()}
        self.preflight: dict[str, Any] = {"gates": rc.bench.gates.model_dump(mode="json"), "models": {}}
        if rc.bench.detectors:  # not hashed: the report finds this run's detection rows by these settings hashes
            from tasks.defences import defence_hashes

            self.preflight["defences"] = defence_hashes(rc)
        self.row_args = dict(run_id=self.run["run_id"], config_hash=rc.config_hash, preset=rc.bench.preset,
                             config_json=rc.canonical_json(), seed=rc.bench.seed, started_at=started,
                             preflight=self.preflight)
        self.device = self.run.get("device") or rc.bench.pipeline.device
        self.write_running()
        self.summary: dict[str, Any] = {"run_id": self.run["run_id"], "config_hash": rc.config_hash,
                                        "preset": rc.bench.preset, "results": rc.results_root,
                                        "engine": engine_name, "failures": []}
        self.devices: set[str] = set()

    @property
    def failures(self) -> list[dict[str, Any]]:
        return self.summary["failures"]

    def write_running(self) -> None:
        self.store.write_run(provenance.run_row(**self.row_args, device=self.device, status="running"))

    def count(self, plan: Plan, done_status: list[str | None], t0: float) -> None:
        """Wall time and task counts of the finished stages into the summary."""
        self.summary["seconds"] = round(time.perf_counter() - t0, 3)
        self.summary["computed"] = sum(1 for st in done_status if st == "done")
        self.summary["skipped_by_task"] = sum(1 for st in done_status if st == "skipped")  # a concurrent run wrote it
        self.summary["skipped"] = plan.done_tasks
        self.summary["copied"] = sum(plan.copied.values())  # units copied forward from another config (in skipped)

    def finish(self, status: str) -> None:
        """The final status, the devices used and the end time, in the summary and the run row."""
        summary = self.summary
        summary["status"] = status
        summary["devices"] = sorted(d for d in self.devices if d and d != "None")
        dev = ", ".join(summary["devices"]) or self.device
        self.store.write_run(provenance.run_row(**self.row_args, device=dev, status=status,
                                                ended_at=datetime.now(timezone.utc)))
        LAST_SUMMARY[self.run["run_id"]] = summary
