"""Progress of a run: shards done / total with an ETA, for whoever is watching.

The flow reports every finished unit here. In-process callers (``adv2 run``) register a listener
that drives a progress bar; everywhere else (deployments, tests) progress goes to the run logger, and
on a Prefect server also to a progress artifact. A listener is process-local on purpose: flow
parameters must stay plain data, so callables cannot travel with the flow.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Callable, Protocol


class Listener(Protocol):
    def start(self, total: int, done: int) -> None: ...
    def advance(self, summary: dict[str, Any], ok: bool) -> None: ...
    def close(self) -> None: ...


_LISTENER: Listener | None = None
_LOCK = threading.Lock()


def set_listener(listener: Listener | None) -> None:
    global _LISTENER
    with _LOCK:
        _LISTENER = listener


def get_listener() -> Listener | None:
    return _LISTENER


class Tracker:
    """Counts units; forwards to the listener, the logger and (optionally) a Prefect progress artifact."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter | None = None,
                 artifact: Callable[[float], None] | None = None) -> None:
        self.total = 0
        self.done = 0
        self.failed = 0
        self.t0 = time.monotonic()
        self.initial = 0
        self.logger = logger
        self.artifact = artifact
        self.listener = get_listener()

    def start(self, total: int, done: int) -> None:
        self.total, self.done, self.initial = total, done, done
        self.t0 = time.monotonic()
        if self.listener is not None:
            self.listener.start(total, done)
        if self.logger is not None:
            self.logger.info("plan: %d shard tasks, %d already complete, %d to run", total, done, total - done)
        self._artifact()

    def note(self, text: str) -> None:
        """A phase change worth showing (e.g. models being trained before the first shard)."""
        if self.listener is not None and hasattr(self.listener, "note"):
            self.listener.note(text)
        if self.logger is not None:
            self.logger.info(text)

    def eta_s(self) -> float | None:
        ran = self.done - self.initial
        left = self.total - self.done
        if ran <= 0:
            return None
        return (time.monotonic() - self.t0) / ran * left

    def advance(self, summary: dict[str, Any], ok: bool) -> None:
        self.done += 1
        if not ok:
            self.failed += 1
        if self.listener is not None:
            self.listener.advance(summary, ok)
        if self.logger is not None:
            eta = self.eta_s()
            what = "/".join(str(summary.get(k)) for k in ("stage", "model", "interpreter", "attack", "shard"))
            self.logger.info("%s %s: %d/%d shard tasks%s", what, "ok" if ok else "FAILED", self.done, self.total,
                             "" if eta is None else f", ETA {eta:.0f} s")
        self._artifact()

    def _artifact(self) -> None:
        if self.artifact is not None and self.total:
            try:
                self.artifact(100.0 * self.done / self.total)
            except Exception:  # progress must never fail a run
                self.artifact = None

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()


class TqdmListener:
    """A tqdm bar on stderr: units done / total, rate and ETA (tqdm computes the ETA)."""

    def __init__(self, desc: str = "shards") -> None:
        self.desc = desc
        self.bar = None
        self.failed = 0

    def start(self, total: int, done: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, desc=self.desc, unit="shard", dynamic_ncols=True)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)
        else:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def advance(self, summary: dict[str, Any], ok: bool) -> None:
        if self.bar is None:
            return
        if self.bar.desc != self.desc:
            self.bar.set_description(self.desc)
        if not ok:
            self.failed += 1
            self.bar.set_postfix(failed=self.failed)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
