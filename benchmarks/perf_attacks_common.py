"""Shared by the attack benchmarks (``benchmarks/perf_attacks.py``): the measured cells, the official batch
sizes, the presets per model, the parent side that runs measurements in child processes, and the small
Markdown helpers of their tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
#: The script every child process runs (``--child JSON``); its ``__main__`` calls
#: :func:`benchmarks.perf_attacks_child.child`.
CHILD_SCRIPT = Path(__file__).with_name("perf_attacks.py")


INTERPRETERS = ("grad", "cam", "rts", "mask")
#: (attack, interpreter) cells; PGD and StAdv do not use an interpreter.
CELLS = [("pgd", None), ("stadv", None)] + [(a, i) for a in ("adv2", "stadv-adv2") for i in INTERPRETERS]
#: Cells whose memory is measured at the paper's batch sizes (the ADV^2 ones set the peaks; PGD for scale).
MEMORY_CELLS = [("pgd", None), ("adv2", "grad"), ("adv2", "cam"), ("adv2", "rts"), ("adv2", "mask")]
#: The official code's batch sizes (spec section 7.3); PGD's baseline batch is 40, StAdv's follows CAM.
OFFICIAL_BATCH = {"grad": 10, "cam": 50, "rts": 40, "mask": 12, None: 40}
#: model -> (attack preset, interpreter preset)
PRESETS = {"resnet-mini": ("quick", "quick"), "densenet-mini": ("quick", "quick"),
           "efficientnet-lite0": ("real", "real")}


def try_spawn(job: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """:func:`spawn`, but a cell that cannot run here (e.g. no RTS masking model for a real model yet)
    becomes a row with its one-line reason instead of ending the benchmark."""
    try:
        return spawn(job, timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {**job, "error": str(exc).split("failed: ")[-1].strip("[]'\"")}


def spawn(job: dict[str, Any], timeout: float = 900, threads: int | None = None,
          fixed_mmap: bool = False) -> dict[str, Any]:
    # the repo first, then whatever the caller's PYTHONPATH holds (a GPU host's extra site dir, say)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    if fixed_mmap:  # every allocation >= 128 KiB is its own mapping, returned to the OS when freed
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    p = subprocess.run([sys.executable, str(CHILD_SCRIPT), "--child", json.dumps(job)], capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(f"benchmark child {job} failed: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def spawn_counts(base: dict[str, Any], jobs: list[dict[str, Any]], timeout: float = 1800) -> list[dict[str, Any]]:
    """Pass counts of ``jobs`` (each ``base`` updated by the job), results in the order of ``jobs``.

    A count is a FLOP tally, not a timing, so counts may share the machine: on CPU they run one process
    per core with one torch thread each (at batch 1 a count is bound by Python dispatch, not by the
    convolutions); on a GPU they run one after the other. Longest jobs first (Grad's double backward
    and MASK's inner solver), so the last core is not left with the longest one.
    """
    from concurrent.futures import ThreadPoolExecutor

    cpu = not str(base.get("device", "cpu")).startswith("cuda")
    workers = max(1, os.cpu_count() or 1) if cpu else 1
    weight = {"grad": 3, "mask": 2}
    order = sorted(range(len(jobs)), key=lambda i: -weight.get(str(jobs[i].get("interpreter")), 1))
    with ThreadPoolExecutor(workers) as pool:
        futs = {i: pool.submit(spawn, {**base, **jobs[i]}, timeout, 1 if cpu else None) for i in order}
        return [futs[i].result() for i in range(len(jobs))]


def _label(attack: str, interp: str | None) -> str:
    return attack if interp is None else f"{attack} / {interp}"


def _target(value: float, limit: float, *, at_most: bool = True) -> str:
    ok = value <= limit if at_most else value >= limit
    return "PASS" if ok else "FAIL"


def _eff_limit(interp: str | None) -> float:
    return 2.0 if interp == "mask" else 1.3
