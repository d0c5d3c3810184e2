"""Attack efficiency against the pass-count floor, peak memory at the official batch sizes, and profiles of
the cells that miss their efficiency target (sections of ``BENCHMARKS.md``)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.perf_attacks_common import (CELLS, MEMORY_CELLS, OFFICIAL_BATCH, _eff_limit, _label,  # noqa: E402
                                            _target, spawn, try_spawn)


EFFICIENCY_METHOD = (
    "Efficiency = measured wall time of the attack / (pass-equivalents it really performed x the measured time "
    "of one pass of the same model at the same batch size, in the same process). The pass count comes from "
    "`adv2core.passes.PassCounter` (FLOPs of every convolution and matrix product dispatched, forward, "
    "backward and double backward, over one forward's) in a second, identical run; the reference pass is one "
    "batched forward + input-gradient backward. Targets: <= 1.3 for PGD, Grad, CAM, RTS (and StAdv), <= 2 for "
    "MASK. Pass-equivalents per image: one forward or one backward of one image (spec 7.3), at the capped loop "
    "counts of this table. Peak memory: growth of the process's resident set during the attack (CPU), or "
    "peak CUDA memory above the level before it (GPU). The cells of one model share a process: the "
    "high-water mark is reset before each cell, and glibc's mmap threshold is fixed at 128 KiB so that every "
    "tensor is a mapping returned to the OS when freed (one cell's freed memory cannot hide the next one's).")


def _eff_table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | attack / interpreter | batch | wall (s) | pass-eq per image (counted) | one F+B pass (ms) | "
        "efficiency | target | peak memory (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lim = _eff_limit(r["interpreter"])
        if "error" in r:
            lines.append(f"| {r['model']} | {_label(r['attack'], r['interpreter'])} | {r['batch']} | not measured: "
                         f"{r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {_label(r['attack'], r['interpreter'])} | {r['batch']} | {r['wall_s']:.2f} | "
            f"{r['pass_eq_per_image']:.1f} | {r['t_fb_s'] * 1000:.1f} | {r['efficiency']:.2f} | "
            f"≤ {lim:g}: {_target(r['efficiency'], lim)} | {r['peak_mib']:.0f} |")
    return lines


def bench_efficiency(models: dict[str, int], cap: int, device: str, progress) -> tuple[list[str], list[dict]]:
    """Efficiency, pass-equivalents and peak memory for every (model, attack, interpreter) cell.
    ``models``: name -> batch size."""
    rows = []
    for model, batch in models.items():
        # One process per model, not per cell: the imports and start-up of 10 processes cost more than the
        # cells at these sizes. Each cell's peak memory stays its own: the high-water mark is reset before
        # it and measured above the resident set at its start, and with a fixed glibc mmap threshold every
        # tensor >= 128 KiB is a mapping that goes back to the OS when freed, so one cell's freed memory
        # does not hide the next one's growth.
        progress(f"efficiency {model}: {len(CELLS)} cells")
        jobs = [dict(attack=a, interpreter=i) for a, i in CELLS]
        rows += spawn(dict(model=model, batch=batch, cap=cap, device=device, mode="cells",
                           jobs=[{**j, "mode": "eff"} for j in jobs]), timeout=3600, fixed_mmap=True)["results"]
    return _eff_table(rows), [r for r in rows if "error" not in r]


def bench_memory_official(model: str, device: str, progress, smoke: bool = False) -> list[str]:
    """Peak memory of :data:`MEMORY_CELLS` at the official batch size of their interpreter (spec 7.3),
    every loop count capped at 1 (the peak is reached in the first step)."""
    lines = ["| model | attack / interpreter | batch | peak memory (MiB) |", "|---|---|---|---|"]
    for attack, interp in MEMORY_CELLS:
        progress(f"memory {model} {_label(attack, interp)}")
        r = try_spawn(dict(model=model, attack=attack, interpreter=interp, cap=1, device=device,
                           batch=1 if smoke else OFFICIAL_BATCH[interp], mode="mem"))
        peak = f"not measured: {r['error']}" if "error" in r else f"{r['peak_mib']:.0f}"
        lines.append(f"| {model} | {_label(attack, interp)} | {r['batch']} | {peak} |")
    return lines


def bench_profiles(rows: list[dict], device: str, progress, worst: int = 4) -> list[str]:
    """torch.profiler on the cells that miss their efficiency target (the ``worst`` furthest above it)."""
    missed = sorted((r for r in rows if r["efficiency"] > _eff_limit(r["interpreter"])),
                    key=lambda r: r["efficiency"] / _eff_limit(r["interpreter"]), reverse=True)[:worst]
    if not rows:
        return ["No cell was measured (see the rows above); nothing to profile."]
    if not missed:
        return ["Every measured cell meets its efficiency target; nothing to profile."]
    lines = ["Share of the profiled operator self time (a conv or matmul kernel is pass work; everything else "
             "is the overhead that the efficiency figure counts):", ""]
    for r in missed:
        progress(f"profile {r['model']} {_label(r['attack'], r['interpreter'])}")
        p = spawn({**{k: r[k] for k in ("model", "attack", "interpreter", "batch", "cap", "device")},
                   "mode": "profile"})
        ops = "; ".join(f"`{k}` {share:.0%} ({count} calls)" for k, share, count in p["top"])
        lines.append(f"* **{r['model']} {_label(r['attack'], r['interpreter'])}** (efficiency "
                     f"{r['efficiency']:.2f}): {ops}.")
    return lines
