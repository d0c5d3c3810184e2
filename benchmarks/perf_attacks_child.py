"""The child side of the attack benchmarks: one measurement per process (``python
benchmarks/perf_attacks.py --child JSON`` calls :func:`child`; see ``benchmarks/perf_attacks.py`` for what
each mode measures)."""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.perf_attacks_common import PRESETS  # noqa: E402


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
        if device.startswith("cuda"):  # first call: lazy kernel loading and cuDNN set-up, not the attack's cost
            go()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with profile(activities=acts) as prof:
            go()
        averages = prof.key_averages()
        # torch >= 2.4 names the accelerator's self time self_device_time_total (self_cuda_time_total went)
        key = "self_cpu_time_total"
        if device.startswith("cuda"):
            key = "self_device_time_total" if hasattr(averages[0], "self_device_time_total") else "self_cuda_time_total"
        events = sorted(averages, key=lambda e: getattr(e, key), reverse=True)
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
        # One untimed call first: on a GPU the first call of a process pays CUDA's lazy kernel loading and
        # cuDNN's set-up (the 2026-12-04 H200 profiles: "Lazy Function Loading" and layout kernels), which at
        # capped loop counts outweighs the attack itself. On the CPU that cost is small and the attack runs once.
        go()
        _sync(device)
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
