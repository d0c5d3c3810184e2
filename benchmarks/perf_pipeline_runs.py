"""Timed runs of the pipeline for the overhead benchmark (``benchmarks/perf_pipeline_overhead.py``): a progress
listener that collects the tasks' own compute seconds, environment and RTS quality-bar switches, one timed
``run_benchmark`` call, and a cProfile of a run whose units are all stored."""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class _Collector:
    """Progress listener: the seconds each finished attack/transfer task reports for its own compute."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.by_stage: dict[str, int] = {}

    def start(self, total: int, done: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def advance(self, summary: dict[str, Any], ok: bool) -> None:
        if ok and summary.get("status") == "done" and summary.get("seconds") is not None:
            self.seconds.append(float(summary["seconds"]))
            st = str(summary.get("stage"))
            self.by_stage[st] = self.by_stage.get(st, 0) + 1

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    def apply(env: dict[str, str | None]) -> None:  # None removes the variable
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    old = {k: os.environ.get(k) for k in values}
    try:
        apply(values)
        yield
    finally:
        apply(old)


@contextlib.contextmanager
def _rts_quality_bar_off() -> Iterator[None]:
    """Warm-up only: the briefly trained classifiers cannot give RTS maskers that pass the quality bar,
    and their quality plays no part in orchestration cost. Timed runs load the cached maskers."""
    import adv2core.interpreters.rts_training as rt

    orig = rt._train_until_good

    def lenient(name, clf, enc, cfg, *args, **kwargs):
        cfg = cfg.model_copy(update={"quality_min_iou": 0.0, "quality_min_gap": -1.0, "quality_retries": 0})
        return orig(name, clf, enc, cfg, *args, **kwargs)

    rt._train_until_good = lenient
    try:
        yield
    finally:
        rt._train_until_good = orig


def _timed_run(overrides: list[str], results: Path, engine: str = "inline") -> dict[str, Any]:
    """One run_benchmark call: wall time (our perf_counter around it) and the tasks' own compute seconds."""
    from adv2core.config import load_config
    from flows.benchmark import run_benchmark

    rc = load_config("quick", overrides=[*overrides, f"pipeline.results={results}"]).resolve()
    col = _Collector()
    t0 = time.perf_counter()
    s = run_benchmark(rc, engine=engine, progress=col)
    wall = time.perf_counter() - t0
    prep = [float(v) for v in (s.get("prepare_seconds") or {}).values() if v is not None]
    return {"wall": wall, "orchestrate": float(s.get("seconds") or 0.0), "compute": sum(col.seconds) + sum(prep),
            "tasks": len(col.seconds) + len(prep), "prepare": len(prep), "by_stage": col.by_stage,
            "status": s.get("status"), "plan": s.get("plan")}


def _profile_noop(overrides: list[str], results: Path) -> str:
    """cProfile (flow thread) of a Prefect run whose units are all stored: where the fixed cost goes."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        _timed_run(overrides, results, "prefect")
    finally:
        prof.disable()
    st = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in st.stats.values()) or 1e-9  # tottime
    by_pkg: dict[str, float] = {}
    for (fname, _line, _fn), v in st.stats.items():
        p = fname.replace("\\", "/")
        if "site-packages/" in p:
            pkg = p.split("site-packages/", 1)[1].split("/", 1)[0]
        elif p.startswith(str(ROOT)):
            pkg = "adv2 (" + p[len(str(ROOT)) + 1:].split("/", 1)[0] + ")"
        elif p.startswith("<") or p == "~":
            pkg = "builtins/C"
        else:
            pkg = "stdlib"
        by_pkg[pkg] = by_pkg.get(pkg, 0.0) + v[2]
    top_pkgs = sorted(by_pkg.items(), key=lambda kv: -kv[1])[:3]
    # the heaviest call chains below the flow: cumulative time of functions in prefect / httpx / sqlite
    cands = [(v[3], k) for k, v in st.stats.items()
             if any(s in k[0] for s in ("prefect/", "httpx/", "sqlite", "anyio/")) and k[2] not in ("<module>",)]
    cands.sort(key=lambda t: -t[0])
    top_fn = [f"`{Path(k[0]).parent.name}/{Path(k[0]).name}:{k[2]}` ({c:.2f} s cumulative)" for c, k in cands[:3]]
    own = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:3]
    top_own = ", ".join(f"`{Path(k[0]).name}:{k[2]}` {v[2]:.2f} s" for k, v in own)
    pk = ", ".join(f"{name} {t / total * 100:.0f} %" for name, t in top_pkgs)
    return (f"Profile (cProfile, flow thread, run with every unit stored): own time by package: {pk} of "
            f"{total:.2f} s; largest own times: {top_own}; heaviest Prefect/HTTP call chains: "
            f"{', '.join(top_fn) or 'none'}. Top cause: {top_pkgs[0][0]} ({top_pkgs[0][1] / total * 100:.0f} % of the "
            f"fixed cost), i.e. {'waiting on locks/sockets (the API client and the event-loop thread)' if top_pkgs[0][0] == 'builtins/C' else 'that package'}.")
