#!/usr/bin/env python
"""Speed and memory benchmarks -> BENCHMARKS.md (``make bench``).

What is measured, and why:

* **classifier passes** (forward+backward, batch 32): the unit in which spec section 7.3 states every
  attack's cost ("pass-equivalents"), so attack timings can be read against the official code's;
* **interpreter maps** (batch 32): the benign-map cost per interpreter, and Grad's double backward;
* **attack steps**: seconds per step per image for PGD and each ADV^2 variant at the quick preset's
  settings (step counts capped so the benchmark finishes), on random-weight models — cost does not
  depend on the weights;
* **store**: shard writes (atomic, with manifest) and a DuckDB group-by over all shards;
* **peak RSS** of the process.

Timings are medians of repeats after a warm-up. Run on a GPU host with ``--device cuda``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import machine_line  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn: Callable[[], object], device: str, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _mini(name: str, device: str):
    from adv2core.models.mini import densenet_mini, resnet_mini

    torch.manual_seed(0)
    fn = resnet_mini if name == "resnet-mini" else densenet_mini
    return fn(8, 64).to(device).eval().requires_grad_(False)


def bench_passes(device: str, batch: int, repeats: int) -> list[tuple[str, str, str]]:
    rows = []
    for name in ("resnet-mini", "densenet-mini"):
        m = _mini(name, device)
        x = torch.rand(batch, 3, 64, 64, device=device)

        def fb():
            xr = x.clone().requires_grad_(True)
            m(xr).sum().backward()

        t = timeit(fb, device, repeats)
        rows.append((name, f"forward+backward, batch {batch}, 64x64", f"{t * 1000:.1f} ms ({batch / t:.0f} img/s)"))
    return rows


def bench_maps(device: str, batch: int, repeats: int, mask_iters: int) -> list[tuple[str, str, str]]:
    from adv2core.interpreters import CAM, Grad
    from adv2core.interpreters.config import load_interpreter_config
    from adv2core.interpreters.mask import MASK
    from adv2core.interpreters.rts import RTS
    from adv2core.interpreters.rts_model import build_masker

    rows = []
    cfgs = load_interpreter_config("quick")
    for name in ("resnet-mini", "densenet-mini"):
        m = _mini(name, device)
        x = torch.rand(batch, 3, 64, 64, device=device)
        y = torch.randint(0, 8, (batch,), device=device)
        ids = [f"b{i}" for i in range(batch)]
        interps = {
            "grad": Grad(m),
            "cam": CAM(m),
            "rts": RTS(m, build_masker(m, cfgs["rts"]).to(device).eval()),
            "mask": MASK(m, cfgs["mask"].model_copy(update={"iterations": mask_iters})),
        }
        for iname, interp in interps.items():
            t = timeit(lambda: interp.explain(x, y, ids=ids), device, repeats)
            note = f" ({mask_iters} Adam iterations)" if iname == "mask" else ""
            rows.append((name, f"{iname} map, batch {batch}{note}", f"{t * 1000:.1f} ms ({t / batch * 1000:.2f} ms/img)"))
        grad = interps["grad"]

        def dbl():
            xr = x.clone().requires_grad_(True)
            grad.differentiable_map(xr, y).pow(2).sum().backward()

        t = timeit(dbl, device, repeats)
        rows.append((name, f"grad map + double backward (attack step core), batch {batch}", f"{t * 1000:.1f} ms"))
    return rows


def bench_store(n_shards: int, rows_per_shard: int) -> list[tuple[str, str, str]]:
    import numpy as np

    from adv2core.store.layout import ShardUnit
    from adv2core.store.query import run_sql
    from adv2core.store.schemas import IOU_COLUMNS
    from adv2core.store.writer import ResultStore

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(tmp)
        rng = np.random.default_rng(0)

        def rows(shard: int) -> list[dict]:
            base = dict(run_id="bench", config_hash="c0ffee", code_version="bench", seed=0, dataset="embedded",
                        shard=shard, num_shards=n_shards, model="resnet-mini", interpreter="cam", attack="adv2",
                        status="ok", error=None, true_class=0, target_class=1, pred_class=1, success=True,
                        confidence=0.9, target_prob=0.9, benign_pred=0, l1=0.1, l2=0.1, iou_mean=0.5,
                        loc_iou_benign=0.5, loc_iou_adv=0.4, linf=0.03, steps=10, seconds=0.1)
            return [dict(base, image_id=f"img-{shard}-{i}", l1=float(rng.random()), **{c: 0.5 for c in IOU_COLUMNS})
                    for i in range(rows_per_shard)]

        t0 = time.perf_counter()
        for s in range(n_shards):
            store.write_shard(ShardUnit("c0ffee", "attack", "resnet-mini", "cam", "adv2", s, n_shards), {"samples": rows(s)})
        dt = time.perf_counter() - t0
        out.append(("store", f"write {n_shards} shards x {rows_per_shard} rows (atomic + manifest)", f"{dt:.2f} s ({dt / n_shards * 1000:.1f} ms/shard)"))
        q = "select model, interpreter, attack, avg(l1), count(*) from samples group by all"
        t = timeit(lambda: run_sql(tmp, q), "cpu", 3)
        out.append(("store", f"DuckDB group-by over {n_shards} shards (adv2 sql path)", f"{t * 1000:.0f} ms"))
    return out


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _gpu_note(device: str) -> list[str]:
    if device.startswith("cuda"):
        return [f"Measured on {torch.cuda.get_device_name()}: the tables above are the GPU figures."]
    return ["No GPU was available to this run: the tables above are CPU figures. On a GPU host run "
            "`python benchmarks/run.py --device cuda --out BENCHMARKS-gpu.md`: the same script measures "
            "s/image, efficiency and the paper projection on that GPU. GPU figures measured so far, and "
            "which of their sections are missing, are in BENCHMARKS-gpu.md and the README's Benchmarks "
            "section; `benchmarks/cuda_syncs.py` audits the attack loops for host syncs on a GPU "
            "(docs/gpu-syncs.md)."]


def main(argv: list[str] | None = None) -> int:
    import perf_attacks as pa

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cap", type=int, default=2, help="step cap of the efficiency runs (every loop count)")
    ap.add_argument("--effnet-cap", type=int, default=1, help="step cap for efficientnet-lite0 at 224 px")
    ap.add_argument("--effnet-batch", type=int, default=2, help="batch of the efficientnet-lite0 efficiency runs")
    ap.add_argument("--loop-images", type=int, default=2, help="images run one at a time for the loop shape")
    ap.add_argument("--mask-iters", type=int, default=20)
    ap.add_argument("--duckdb-rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=200)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs (tests)")
    ap.add_argument("--skip", action="append", default=[], help="section to skip (repeatable): "
                    "efficiency, loop, cost, projection, pipeline, duckdb")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.repeats, args.cap, args.effnet_cap, args.loop_images, args.effnet_batch = 2, 1, 1, 1, 1, 1
        args.mask_iters, args.shards, args.duckdb_rows = 2, 3, 10_000
    t_start = time.perf_counter()

    section_s: dict[str, float] = {}
    load: dict[str, float] = {}  # 1-minute load average at the end of each section (2 cores: > 2 = shared)
    mark = [t_start, "setup"]

    def section(name: str) -> None:
        """Close the running section (its wall time goes into the report) and open ``name``."""
        now = time.perf_counter()
        section_s[mark[1]] = section_s.get(mark[1], 0.0) + now - mark[0]
        load[mark[1]] = os.getloadavg()[0]
        mark[:] = [now, name]
        progress(name)
        if name != "end":  # a partial report survives a killed run (a lease or a job limit running out)
            args.out.write_text("\n".join([*lines, "", f"*Incomplete: the run stopped during section "
                                           f"'{name}'.*", ""]))

    def progress(msg: str) -> None:
        print(f"[bench {time.perf_counter() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    lines = [
        "# BENCHMARKS",
        "",
        f"Generated by `make bench` (`benchmarks/run.py`) on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. "
        "Do not edit by hand.",
        "",
        f"* machine: {machine_line()}",
        f"* device: {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""),
        f"* torch {torch.__version__}, python {platform.python_version()}",
        "* embedded models have random weights (cost does not depend on them); efficientnet-lite0 has its "
        "packaged ImageNet weights. Sections above the efficiency tables: medians of repeats after one warm-up; attack timings: minimum of repeats (load only adds time), the load average is printed per section below.",
        "",
    ]
    section("classifier passes")
    lines += ["## Classifier passes", "", *_table(("model", "what", "time"), bench_passes(args.device, args.batch, args.repeats)), ""]
    section("interpreter maps")
    lines += ["## Interpreter maps", "",
              *_table(("model", "what", "time"), bench_maps(args.device, args.batch, args.repeats, args.mask_iters)), ""]

    eff_rows: list[dict] = []
    if "efficiency" not in args.skip:
        models = {"resnet-mini": args.batch, "densenet-mini": args.batch}
        section("efficiency, embedded models")
        table, eff_rows = pa.bench_efficiency(models, args.cap, args.device, progress)
        section("efficiency, efficientnet-lite0")
        eff_224, rows_224 = pa.bench_efficiency({"efficientnet-lite0": args.effnet_batch}, args.effnet_cap,
                                                args.device, progress)
        eff_rows += rows_224
        section("memory at the paper's batch sizes")
        memory = pa.bench_memory_official("efficientnet-lite0", args.device, progress, smoke=args.smoke)
        section("profiles of the cells that miss")
        profiles = pa.bench_profiles(eff_rows, args.device, progress)
        lines += ["## Attack efficiency against the pass-count floor", "", pa.EFFICIENCY_METHOD, "",
                  f"Embedded models at 64 px, batch {args.batch}, every loop count capped at {args.cap}:", "",
                  *table, "",
                  f"efficientnet-lite0 (ImageNet weights) at 224 px, batch {args.effnet_batch}, loop counts capped "
                  f"at {args.effnet_cap}:", "", *eff_224, "",
                  "### Memory at the paper's batch sizes, 224 px", "",
                  "Peak memory of PGD and the ADV² cells at the official batch size of their interpreter (spec 7.3: "
                  "Grad 10, CAM 50, RTS 40, MASK 12; PGD 40), every loop count capped at 1 (the first step "
                  "reaches the peak):", "",
                  *memory, "",
                  "### Where the time goes in the cells that miss", "",
                  *profiles, ""]
    if "loop" not in args.skip and eff_rows:
        section("loop shape")
        lines += ["## Versus the authors' loop shape", "", pa.LOOP_METHOD, "",
                  *pa.bench_loop_shape("resnet-mini", args.cap, args.loop_images, args.device, eff_rows, progress), ""]
    if "cost" not in args.skip and eff_rows and not args.smoke:
        section("cost per cell")
        lines += ["## Cost per cell of the quick preset", "", pa.COST_METHOD, "",
                  *pa.bench_cell_cost(["resnet-mini", "densenet-mini"], eff_rows, args.device, progress), ""]
    if "projection" not in args.skip and not args.smoke:
        section("paper projection")
        lines += ["## Projected wall time of the paper preset", "", *pa.bench_paper_projection(args.device, progress), ""]
    if "pipeline" not in args.skip:
        section("pipeline overhead")
        from perf_pipeline import bench_pipeline

        lines += [*bench_pipeline(smoke=args.smoke), ""]
    if "duckdb" not in args.skip:
        section("duckdb")
        from perf_pipeline import bench_duckdb

        lines += [*bench_duckdb(rows=args.duckdb_rows, smoke=args.smoke), ""]
    section("results store")
    lines += ["## Results store writes", "", *_table(("what", "measured", "time"), bench_store(args.shards, 32)), ""]
    lines += ["## GPU", "", *_gpu_note(args.device), ""]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    section("end")
    lines += ["## Where the benchmark's own time goes", "",
              f"The 1-minute load average of the machine at the end of each section ({os.cpu_count()} cores: a load "
              "above that means other processes shared them and the timings of that section are inflated).", "",
              *_table(("section", "wall (s)", "load at its end"), [
                  (k, f"{v:.0f}", f"{load[k]:.1f}") for k, v in section_s.items() if k != "end"]), ""]
    lines += ["## Memory", "", "Per-attack peaks are in the efficiency tables (each cell measured in its own "
              f"process). Peak resident set size of the parent benchmark process: {peak:.0f} MiB.", "",
              f"Total benchmark wall time: {(time.perf_counter() - t_start) / 60:.1f} min.", ""]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
