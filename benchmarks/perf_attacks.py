"""Attack efficiency against the pass-count floor, the authors' loop shape, memory, and cost per cell.

Measurements run in child processes (``--child JSON``); the efficiency cells of one model share a process,
with the peak-memory high-water mark reset before each cell and a fixed glibc mmap threshold (see
:func:`bench_efficiency`):

* **efficiency** = measured wall time / (pass-equivalents the attack really performed x the measured
  time of one pass of the same model at the same batch size, in the same process). Pass-equivalents
  are counted by :class:`adv2core.passes.PassCounter` (convolution and matrix FLOPs of everything
  dispatched, over the FLOPs of one forward) in a second, identical run; the reference is one batched
  forward + input-gradient backward (2 pass-equivalents per image). 1.0 means the attack costs exactly
  its passes; the excess is elementwise work, Python and framework overhead.
* **loop shape**: the same attack (same steps, so the same pass count per image) run one image at a
  time, at the official batch size of its interpreter (spec section 7.3), and at our batch, all three
  in one process, one after the other.
* **memory**: the process's peak resident set growth during the attack (CPU), or the peak CUDA memory
  above the level before it (GPU).
* **cost per cell**: pass-equivalents per image at the preset's full step counts (counted on one image)
  x the measured seconds per pass-equivalent per image.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

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


# ------------------------------------------------------------------------------------------ child side
def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> None:
    """Reset the process's resident-set high-water mark (Linux: ``clear_refs`` 5), so that the peak read
    afterwards is the attack's, not an earlier one (imports, the reference pass, FLOP counting)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mib() -> float:
    """VmHWM (peak resident set since the last reset), else ru_maxrss (peak since the process began)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model(name: str, device: str):
    import torch

    from adv2core.models.mini import densenet_mini, resnet_mini
    from adv2core.models.registry import load_model

    torch.manual_seed(0)
    if name == "resnet-mini":
        m = resnet_mini(8, 64)
    elif name == "densenet-mini":
        m = densenet_mini(8, 64)
    else:
        m = load_model(name, weights="imagenet")
    return m.to(device).eval().requires_grad_(False)


def _interpreter(name: str | None, model, preset: str, cap: int | None, device: str):
    from adv2core.config import cap_steps
    from adv2core.interpreters.config import load_interpreter_config
    from adv2core.interpreters.registry import interpreter_class
    from adv2core.interpreters.rts import RTS
    from adv2core.interpreters.rts_model import build_masker

    if name is None:
        return None
    cfgs = load_interpreter_config(preset)
    if name == "rts":  # random-weight masker: cost does not depend on its weights
        return RTS(model, build_masker(model, cfgs["rts"]).to(device).eval().requires_grad_(False))
    if name == "mask":
        cfg = cfgs["mask"]
        if cap is not None:
            cfg = type(cfg).model_validate(cap_steps(cfg.model_dump(), cap, type(cfg)))
        return interpreter_class("mask")(model, cfg)
    return interpreter_class(name)(model)


def _attack(attack: str, model, interp, preset: str, cap: int | None, override: dict | None = None):
    """Attack from a preset, every loop count capped at ``cap``; ``override``: fields of its section."""
    from adv2core.attacks.config import load_preset
    from adv2core.attacks.registry import attack_config, build_attack
    from adv2core.config import cap_steps

    p = load_preset(preset)
    if cap is not None:
        p = type(p).model_validate(cap_steps(p.model_dump(), cap))
    section = attack_config(attack, interp.name if interp is not None else None, p)
    if override:
        section = type(section).model_validate({**section.model_dump(), **override})
    return build_attack(attack, model, interp, section, seed=0)


def _inputs(model, n: int, device: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    side = model.input_size
    x = torch.rand(n, 3, side, side, generator=g).to(device)
    y = torch.randint(0, model.num_classes, (n,), generator=g).to(device)
    return x, y, (y + 1) % model.num_classes, [f"b{seed}-{i}" for i in range(n)]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int = 1) -> float:
    """Minimum wall time over ``repeats`` runs: interference from other processes only ever adds time,
    so the minimum is the estimate least disturbed by it (the reference pass gets 3 repeats; an attack 1,
    which makes its efficiency conservative under load)."""
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement (see the module docstring); ``job['mode']``: ``eff``, ``loop`` or ``count``."""
    import torch

    from adv2core.passes import PassCounter, forward_backward_flops, forward_flops

    device, n, cap = job["device"], job["batch"], job.get("cap")
    out: dict[str, Any] = {**job}
    if job["mode"] == "cells":  # several cells in one process (see bench_efficiency); errors become rows
        import gc

        res = []
        for sub in job["jobs"]:
            try:
                res.append(child({**{k: v for k, v in job.items() if k != "jobs"}, **sub}))
            except Exception as exc:  # a cell that cannot run here becomes a row with its reason
                res.append({**job, **sub, "jobs": None, "error": f"{type(exc).__module__}.{type(exc).__name__}: {exc}"})
            gc.collect()
        return {"results": res}
    torch.manual_seed(0)
    if job["mode"] == "tpass":  # seconds per pass-equivalent per image of a torchvision model at 224
        import torchvision

        m = getattr(torchvision.models, job["model"])(weights=None).to(device).eval().requires_grad_(False)
        xr = torch.rand(n, 3, 224, 224, device=device).requires_grad_(True)

        def fb224():
            m(xr).sum().backward()
            xr.grad = None

        fb224()
        out["s_per_pass_eq_per_image"] = _timed(fb224, device, repeats=3) / (2 * n)
        return out
    model = _model(job["model"], device)
    apreset, ipreset = job.get("presets") or PRESETS[job["model"]]
    interp = _interpreter(job["interpreter"], model, ipreset, cap, device)
    if job["mode"] == "count_map":  # pass-equivalents of one benign map per image
        x, y, _, ids = _inputs(model, n, device)
        with PassCounter() as c:
            interp.explain(x, y, ids=ids)
        out["pass_eq_per_image"] = c.flops / forward_flops(model, x[:1]) / n
        return out
    attack = _attack(job["attack"], model, interp, apreset, cap, job.get("override"))

    def run(x, y, t, ids):
        tmap = interp.explain(x, y, ids=ids) if interp is not None else None
        return lambda: attack(x, t, target_map=tmap, ids=ids)

    if job["mode"] == "count":  # pass-equivalents per image at this config, one image
        x, y, t, ids = _inputs(model, n, device)
        go = run(x, y, t, ids)
        with PassCounter() as c:
            go()
        out["pass_eq_per_image"] = c.flops / forward_flops(model, x[:1]) / n
        return out

    if job["mode"] == "loop":  # images/s one image at a time and at the official batch size
        k = job["images"]
        x, y, t, ids = _inputs(model, k, device)
        singles = [run(x[i:i + 1], y[i:i + 1], t[i:i + 1], ids[i:i + 1]) for i in range(k)]
        singles[0]()  # warm-up
        out["one_image_s"] = _timed(lambda: [s() for s in singles], device) / k
        b = job["official_batch"]
        xb, yb, tb, idb = _inputs(model, b, device, seed=1)
        go = run(xb, yb, tb, idb)
        out["official_batch_s"] = _timed(go, device) / b
        ob = job["our_batch"]  # ours too, in this process: the three loop shapes under the same conditions
        xo, yo, to, ido = _inputs(model, ob, device, seed=3)
        out["ours_s"] = _timed(run(xo, yo, to, ido), device) / ob
        # The batching ceiling: per-image time of one forward+backward at batch 1 over that at our batch.
        # An attack is passes plus overhead, so batching cannot speed it up much beyond this ratio.
        per_image = {}
        for nb in (1, job["our_batch"]):
            xr = _inputs(model, nb, device, seed=2)[0].requires_grad_(True)

            def fb():
                model(xr).sum().backward()
                xr.grad = None

            fb()
            per_image[nb] = _timed(fb, device, repeats=5) / nb
        out["ceiling"] = per_image[1] / per_image[job["our_batch"]]
        return out

    if job["mode"] == "profile":  # where the time goes beyond the passes: top operators by self time
        from torch.profiler import ProfilerActivity, profile

        x, y, t, ids = _inputs(model, n, device)
        go = run(x, y, t, ids)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with profile(activities=acts) as prof:
            go()
        key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
        total = sum(getattr(e, key) for e in events) or 1.0
        out["top"] = [(e.key, getattr(e, key) / total, e.count) for e in events[:job.get("top", 6)]]
        return out

    # mode "eff": reference pass, timed attack with its peak memory, counted attack; "mem": peak only
    x, y, t, ids = _inputs(model, n, device)
    go = run(x, y, t, ids)
    if job["mode"] == "eff":
        xr = x.clone().requires_grad_(True)

        def fb():
            model(xr).sum().backward()
            xr.grad = None

        fb()
        t_fb = _timed(fb, device, repeats=3)
        flops_fb = forward_backward_flops(model, x)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = _rss_mib()
    _reset_peak_rss()
    wall = _timed(go, device)
    if device.startswith("cuda"):
        out["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        out["peak_mib"] = max(0.0, _peak_rss_mib() - rss0)
    if job["mode"] == "mem":
        return out
    # The count runs on 2 of the images: every loop is batched with per-sample losses, so the pass count
    # per image does not depend on the batch (tests/test_passes.py checks PGD's exactly).
    k = min(n, 2)
    small = run(x[:k], y[:k], t[:k], ids[:k])
    with PassCounter() as c:
        small()
    per_image = c.flops / forward_flops(model, x[:1]) / k  # pass-equivalents per image
    passes = per_image * n * forward_flops(model, x[:1]) / flops_fb  # in units of one batched forward+backward
    out.update(wall_s=wall, t_fb_s=t_fb, fb_units=passes, efficiency=wall / (passes * t_fb),
               pass_eq_per_image=per_image, s_per_pass_eq_per_image=wall / per_image / n)
    return out


# ----------------------------------------------------------------------------------------- parent side
def try_spawn(job: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """:func:`spawn`, but a cell that cannot run here (e.g. no RTS masking model for a real model yet)
    becomes a row with its one-line reason instead of ending the benchmark."""
    try:
        return spawn(job, timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {**job, "error": str(exc).split("failed: ")[-1].strip("[]'\"")}


def spawn(job: dict[str, Any], timeout: float = 900, threads: int | None = None,
          fixed_mmap: bool = False) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if fixed_mmap:  # every allocation >= 128 KiB is its own mapping, returned to the OS when freed
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
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
LOOP_METHOD = (
    "The same attack with the same capped loop counts (so the same pass count per image) run one image at a "
    "time (the authors' per-image loop), at the official batch size of its interpreter (spec 7.3), and at our "
    "batch (its size from the efficiency table), all three timed one after the other in one process; random-weight resnet-mini at 64 px. On 2 CPU cores a batched "
    "convolution is already compute-bound at small batches, so batching gains far less than on a GPU, where "
    "a one-image step leaves the device mostly idle: the CPU ratio is a lower bound for the GPU one. The "
    "*batching ceiling* measures that bound: the per-image time of one forward+backward pass of the model at "
    "batch 1 over that at our batch, in the same process. An attack is its passes plus overhead, so where "
    "the ceiling is below 3x the 3x target cannot be shown on this hardware and the row says so.")
COST_METHOD = (
    "Seconds per image of each cell at the quick preset's full loop counts = pass-equivalents per image counted "
    "on one image at those counts x the seconds per pass-equivalent per image measured in the efficiency run "
    "(batch above, random weights, this machine).")


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


def bench_loop_shape(model: str, cap: int, images: int, device: str, eff_rows: list[dict], progress) -> list[str]:
    """images/s: one image at a time vs the official batch vs ours, all three timed in one child process
    (our batch size comes from the efficiency rows)."""
    ours = {(r["attack"], r["interpreter"]): r for r in eff_rows if r["model"] == model}
    lines = [
        "| attack / interpreter | one image at a time (img/s) | official batch (size: img/s) | ours (size: img/s) | "
        "ours / one image | batching ceiling (one F+B pass: per-image time at batch 1 / at ours) | target ≥ 3x |",
        "|---|---|---|---|---|---|---|",
    ]
    for attack, interp in CELLS:
        progress(f"loop shape {model} {_label(attack, interp)}")
        e = ours[(attack, interp)]
        r = spawn(dict(model=model, attack=attack, interpreter=interp, batch=images, images=images, cap=cap,
                       device=device, mode="loop", official_batch=OFFICIAL_BATCH[interp], our_batch=e["batch"]))
        ours_ips = 1.0 / r["ours_s"]
        ratio = ours_ips * r["one_image_s"]
        verdict = _target(ratio, 3.0, at_most=False)
        if verdict == "FAIL" and r["ceiling"] < 3.0 and ratio >= 0.8 * r["ceiling"]:
            verdict = f"out of reach here: the passes themselves gain only {r['ceiling']:.2f}x from batching"
        elif verdict == "FAIL":
            verdict = f"FAIL (batching ceiling here {r['ceiling']:.2f}x)"
        lines.append(
            f"| {_label(attack, interp)} | {1 / r['one_image_s']:.2f} | {OFFICIAL_BATCH[interp]}: "
            f"{1 / r['official_batch_s']:.2f} | {e['batch']}: {ours_ips:.2f} | {ratio:.2f}x | {r['ceiling']:.2f}x | "
            f"{verdict} |")
    return lines


def bench_cell_cost(models: list[str], eff_rows: list[dict], device: str, progress) -> list[str]:
    """Seconds per image of every cell at the preset's full step counts: pass-equivalents per image
    counted on one image at full steps x the measured seconds per pass-equivalent per image."""
    lines = ["| model | attack / interpreter | pass-eq per image (full preset) | s per pass-eq per image (measured) | "
             "s per image |", "|---|---|---|---|---|"]
    progress(f"cost per cell {', '.join(models)}: counting every cell at full loop counts")
    per = {(r["model"], r["attack"], r["interpreter"]): r for r in eff_rows}
    jobs = [dict(model=m, attack=a, interpreter=i) for m in models for a, i in CELLS]
    res = spawn_counts(dict(batch=1, cap=None, device=device, mode="count"), jobs)
    for model in models:
        for r in (r for r in res if r["model"] == model):
            s = per[(model, r["attack"], r["interpreter"])]["s_per_pass_eq_per_image"]
            lines.append(f"| {model} | {_label(r['attack'], r['interpreter'])} | {r['pass_eq_per_image']:.0f} | "
                         f"{s * 1000:.2f} ms | {r['pass_eq_per_image'] * s:.2f} |")
    return lines


def bench_profiles(rows: list[dict], device: str, progress, worst: int = 4) -> list[str]:
    """torch.profiler on the cells that miss their efficiency target (the ``worst`` furthest above it)."""
    missed = sorted((r for r in rows if r["efficiency"] > _eff_limit(r["interpreter"])),
                    key=lambda r: r["efficiency"] / _eff_limit(r["interpreter"]), reverse=True)[:worst]
    if not missed:
        return ["Every cell meets its efficiency target; nothing to profile."]
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


#: ADV^2-MASK counts: (fraction of stage 1, outer iterations of stage 2, re-solve period). A count is
#: a + b1 * stage-1 steps + b2 * outer iterations + r * re-solves (floor(stage 2 / period)); the four
#: designs give b1 (1 vs 2), r (3 vs 4) and b2 (4 vs 1), so the 1000 paper iterations need only 10.
MASK_DESIGN = ((0.1, 5, 5), (0.2, 5, 5), (0.1, 10, 5), (0.1, 10, 10))


def _mask_extrapolate(c: list[float], stage1: int, stage2: int, every: int) -> float:
    """The count at the paper's lengths from the four :data:`MASK_DESIGN` counts ``c``."""
    s1 = [max(1, round(stage1 * f)) for f, _, _ in MASK_DESIGN]
    b1 = (c[1] - c[0]) / (s1[1] - s1[0])
    r = c[2] - c[3]
    b2 = (c[3] - c[0]) / (MASK_DESIGN[3][1] - MASK_DESIGN[0][1])
    return c[0] + b1 * (stage1 - s1[0]) + b2 * (stage2 - MASK_DESIGN[0][1]) + r * (stage2 // every - 1)


#: The two fractions of every stage's length at which the paper-preset counts are taken.
SCALES = (0.1, 0.2)
#: The loop counts that set a stage's length (inner solver and period fields keep their paper values).
STAGE_FIELDS = ("steps", "stage1_steps", "stage2_steps")


def _scaled(section: dict[str, Any], f: float) -> dict[str, Any]:
    """The stage-length fields of an attack section scaled by ``f`` (whole steps, at least 1)."""
    out: dict[str, Any] = {}
    for k in STAGE_FIELDS:
        v = section.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            out[k] = max(1, round(v * f))
        elif isinstance(v, (list, tuple)):
            out[k] = [max(1, round(x * f)) for x in v]
    return out


def bench_paper_projection(device: str, progress) -> list[str]:
    """Projected wall time of the `paper` preset on this device, from pass-equivalents counted at the
    paper's step counts on one image (resnet-mini stand-in at 64 px: the loops, not the network, set the
    count) x the measured seconds per pass-equivalent of ResNet-50 / DenseNet-169 at 224 px, batch 10."""
    from adv2core.attacks.config import load_preset
    from adv2core.config import load_config

    from adv2core.attacks.registry import attack_config

    bench = load_config("paper")
    paper = load_preset("paper")
    base = dict(model="resnet-mini", batch=1, cap=None, device=device, presets=["paper", "paper"])
    jobs = []
    for attack, interp in CELLS:
        if attack not in bench.attacks.names:
            continue
        if interp == "mask":  # stage 1, outer iterations and re-solves each get their own coefficient
            s1 = (paper.adv2.mask if attack == "adv2" else paper.stadv_adv2.mask).stage1_steps
            for d, (f1, s2, every) in enumerate(MASK_DESIGN):
                jobs.append(dict(attack=attack, interpreter=interp, design=d, override={
                    "stage1_steps": max(1, round(s1 * f1)), "stage2_steps": s2, "resolve_every": every}))
        else:  # every stage at 1/10 and 2/10 of its length, extrapolated to full length (see SCALES)
            section = attack_config(attack, interp, paper).model_dump()
            for f in SCALES:
                jobs.append(dict(attack=attack, interpreter=interp, scale=f, override=_scaled(section, f)))
    for interp in bench.interpreters.names:
        jobs.append(dict(attack="pgd", interpreter=interp, mode="count_map"))
    progress(f"paper pass counts: {len(jobs)} counts on one image")
    res = spawn_counts(dict(base, mode="count"), jobs)
    counts: dict[tuple[str, str | None], float] = {}
    maps: dict[str, float] = {}
    mask_at: dict[tuple[str, int], float] = {}  # (attack, stage-2 iterations counted) -> pass-eq per image
    scaled: dict[tuple[str, str | None], dict[float, float]] = {}  # cell -> {scale: pass-eq per image}
    for r in res:
        if r["mode"] == "count_map":
            maps[r["interpreter"]] = r["pass_eq_per_image"]
        elif r["interpreter"] == "mask":
            mask_at[(r["attack"], r["design"])] = r["pass_eq_per_image"]
        else:
            scaled.setdefault((r["attack"], r["interpreter"]), {})[r["scale"]] = r["pass_eq_per_image"]
    for cell, at in scaled.items():
        (fa, ca), (fb, cb) = sorted(at.items())
        counts[cell] = ca + (cb - ca) * (1.0 - fa) / (fb - fa)
    for attack in ("adv2", "stadv-adv2"):
        sec = paper.adv2.mask if attack == "adv2" else paper.stadv_adv2.mask
        if all((attack, d) in mask_at for d in range(len(MASK_DESIGN))):
            counts[(attack, "mask")] = _mask_extrapolate([mask_at[(attack, d)] for d in range(len(MASK_DESIGN))],
                                                         sec.stage1_steps, sec.stage2_steps, sec.resolve_every)
    tpass = {m: spawn(dict(model=m.replace("-", ""), batch=10, device=device, mode="tpass"))["s_per_pass_eq_per_image"]
             for m in ("resnet50", "densenet169")}
    n = bench.data.num_images
    xeval = bench.cross_eval.attacks or bench.attacks.names
    interps = bench.interpreters.names
    # the artifact graph: PGD / StAdv once per model (examples stage), each ADV^2 once per interpreter,
    # benign maps once per interpreter (benign stage), then every example under every interpreter
    uses = ("adv2", "stadv-adv2")
    attack_pe = sum(counts[(a, i)] for i in interps for a in bench.attacks.names if a in uses) + sum(
        counts[(a, None)] for a in bench.attacks.names if a not in uses)
    benign_pe = sum(maps.values())
    xeval_pe = len(xeval) * len(interps) * sum(maps.values())
    lines = [
        "Cost model of the pipeline's artifact graph: PGD and StAdv run once per model (the `examples` stage), "
        "each ADV² once per interpreter; benign maps once per interpreter (the `benign` stage); the "
        "cross-evaluation maps every example "
        f"of {', '.join(xeval)} under every interpreter. Efficiency is taken as 1 (the floor).",
        "",
        f"Pass-equivalents per image at the paper's step counts, counted at two lengths and extrapolated "
        f"linearly (a count is affine in each stage's length: every step does the same passes): every stage at "
        f"{SCALES[0]:g} and {SCALES[1]:g} of its length (MASK: stage 1 at 0.1 and 0.2, stage 2 at 5 and 10 outer "
        f"iterations with a re-solve every 5 or 10, giving per-step, per-iteration and per-re-solve costs; "
        f"rounding a stage to whole steps moves a figure by under 1 %): " + ", ".join(f"{_label(a, i)} {v:,.0f}" for (a, i), v in counts.items()) + "; maps: "
        + ", ".join(f"{i} {v:,.0f}" for i, v in maps.items()) + ".",
        "",
        "| model | s per pass-eq per image (batch 10, 224 px, measured) | attacks (pass-eq / image) | benign maps | "
        f"cross-evaluation | projected wall time, {n} images |",
        "|---|---|---|---|---|---|",
    ]
    total = 0.0
    for m in bench.models.names:
        s = tpass[m.replace("-", "")] if m.replace("-", "") in tpass else tpass["resnet50"]
        pe = attack_pe + benign_pe + xeval_pe
        total += pe * s * n
        lines.append(f"| {m} | {s * 1000:.2f} ms | {attack_pe:,.0f} | {benign_pe:,.0f} | {xeval_pe:,.0f} | "
                     f"{pe * s * n / 3600:,.1f} h |")
    lines += ["", f"Projected `paper` preset on this device at 100 % efficiency: **{total / 3600:,.1f} h** "
              f"({total / 86400:,.1f} days). Multiply by the efficiencies above for the expected figure."]
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        raise SystemExit(0)
    raise SystemExit("run through benchmarks/run.py (make bench)")
