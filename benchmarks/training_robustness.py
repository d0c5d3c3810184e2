"""Is the embedded training recipe robust? Train every embedded model for several seeds and torch thread
counts from an empty data root, then train the RTS masking models for several seeds, and write a report.

Why a script and not a test: it trains 2 x 5 x 2 classifiers and 2 x 3 masking models (about an hour on
2 CPU cores). Its output goes into ``docs/training-robustness.md``; the bars it checks are the ones the
pipeline's preflight gates enforce (classifier accuracy >= 0.97 here, the gate's floor is 0.9; RTS
true-class localisation >= 0.45 and >= wrong class + 0.15).

Each training runs in its own process (``torch.set_num_threads`` before any work, a fresh data root per
thread count so no checkpoint is reused), so the matrix really exercises both floating-point paths.

    python benchmarks/training_robustness.py --out docs/training-robustness.md
    python benchmarks/training_robustness.py --seeds 0 --threads 2 --no-rts   # one cell, quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from machine import machine_line, publish  # noqa: E402
MODELS = ("resnet-mini", "densenet-mini")
ACC_BAR = 0.97
RTS_TRUE_BAR, RTS_GAP_BAR = 0.45, 0.15
PGD_BAR = 0.9  # issue #10 item 4's success bar, on the demo's population (the first 32 correct test images)

_CHILD = r"""
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
PGD_IMAGES = 96
kind, model, seed, override = sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
if kind == "classifier":
    from adv2core.models.registry import train_embedded
    from adv2core.models.training import TrainConfig
    cfg = TrainConfig(**{**override, "seed": seed})
    clf, m = train_embedded(model, None, cfg, progress=False, force=True)
    # the quick preset's targeted PGD on the first 96 test images it classifies correctly (the order and batches
    # of 16 the demo attacks them in; its population is the first 32): is the checkpoint attackable at all?
    from adv2core.attacks.registry import build_attack
    from adv2core.attacks.targets import target_classes
    from adv2core.bench.cell import select_population
    from adv2core.data.synthetic import EmbeddedDataset
    b, _ = select_population(clf, EmbeddedDataset("test").load(list(range(PGD_IMAGES))), "correct")
    target = target_classes(b.labels, b.ids, clf.num_classes, seed=0)
    hit = torch.cat([build_attack("pgd", clf, None, "quick")(b.images[i:i + 16], target[i:i + 16], ids=b.ids[i:i + 16]).success
                     for i in range(0, len(b), 16)])
    with torch.no_grad():
        p_true = clf(b.images).softmax(1).gather(1, b.labels[:, None]).median().item()
    print(json.dumps({"acc": m["test_accuracy"], "seconds": m["train_seconds"], "plateau": m["plateau_steps"],
                      "steps": m["steps"], "pgd": hit.float().mean().item(), "pgd32": hit[:32].float().mean().item(),
                      "p_true_median": p_true, "label_smoothing": cfg.for_model(model).label_smoothing}))
else:
    import time
    from adv2core.interpreters.config import load_interpreter_config
    from adv2core.interpreters.rts_training import train_rts
    from adv2core.models.registry import load_model
    clf = load_model(model, train_if_missing=True)
    base = load_interpreter_config("quick")["rts"]
    cfg = type(base).model_validate({**base.model_dump(), **override, "seed": seed, "quality_retries": 0,
                                     "quality_min_iou": 0.0, "quality_min_gap": 0.0})
    t0 = time.perf_counter()
    try:
        _, m = train_rts(model, clf, None, cfg, progress=False, force=True)
    except Exception as e:  # a wrong class above the true one misses even the zero gap: report its numbers
        import re
        hit = re.search(r"seed \d+: ([0-9.]+) / ([0-9.]+)", str(e))
        if hit is None:
            raise
        m = {"loc_iou_true": float(hit[1]), "loc_iou_wrong": float(hit[2])}
    print(json.dumps({"true": m["loc_iou_true"], "wrong": m["loc_iou_wrong"], "seconds": time.perf_counter() - t0,
                      "selector_acc": m.get("phase1_exists_accuracy")}))
"""


def _child(kind: str, model: str, seed: int, threads: int, data_root: Path, override: dict | None = None) -> dict:
    env = {**os.environ, "ADV2_DATA": str(data_root), "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(threads), kind, model, str(seed),
                          json.dumps(override or {})], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rts-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--no-rts", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="trainings at once (each with its own thread count)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown report (default: print only)")
    ap.add_argument("--from-log", type=Path, default=None, help="render the JSON rows an earlier run printed")
    ap.add_argument("--done", type=Path, action="append", default=[],
                    help="log of an earlier (interrupted) run: its cells are not retrained, its rows are reported")
    ap.add_argument("--root", action="append", default=[], metavar="THREADS=PATH",
                    help="reuse this data root for a thread count (e.g. the one an interrupted run trained in)")
    ap.add_argument("--rts-threads", type=int, nargs="+", default=None,
                    help="thread counts of the RTS trainings (default: the largest of --threads); each must be "
                    "one of --threads (its data root holds the classifiers)")
    ap.add_argument("--rts-only", action="store_true",
                    help="train only the RTS maskers (the classifiers of each root are loaded, trained if missing)")
    ap.add_argument("--rts-override", type=json.loads, default={}, metavar="JSON",
                    help='RTS recipe fields over the quick preset\'s, e.g. \'{"phase2_iterations": 800}\' (a sweep)')
    ap.add_argument("--train-override", type=json.loads, default={}, metavar="JSON",
                    help="classifier recipe fields over the default TrainConfig, e.g. '{\"label_smoothing\": 0.0}'")
    ap.add_argument("--rts-first", action="store_true",
                    help="train seed 0 and the RTS maskers before the other seeds (a short budget gets both halves)")
    args = ap.parse_args()
    rts_threads = args.rts_threads or [max(args.threads)]
    if not set(rts_threads) <= set(args.threads):
        ap.error(f"--rts-threads {rts_threads} must be among --threads {args.threads}")

    t_start = time.perf_counter()
    rows, rts_rows = [], []
    if args.from_log is not None:  # render what an earlier (possibly interrupted) run printed
        rows, rts_rows = _read_log([args.from_log])
        return _render(args, rows, rts_rows, None, partial=True if rows else "sweep")
    done_rows, done_rts = _read_log(args.done)
    done = {("classifier", r["model"], r["seed"], r["threads"]) for r in done_rows if "acc" in r}
    done |= {("rts", r["model"], r["seed"], r["threads"]) for r in done_rts if "true" in r}
    given = {int(t): Path(p) for t, p in (item.split("=", 1) for item in args.root)}
    roots = {t: given.get(t) or Path(tempfile.mkdtemp(prefix=f"adv2-robust-t{t}-")) for t in args.threads}
    from concurrent.futures import ThreadPoolExecutor

    def job(kind: str, model: str, seed: int, threads: int) -> dict:
        override = (args.rts_override if kind == "rts" else args.train_override) or None
        r = {"model": model, "seed": seed, "threads": threads,
             **({"override": override} if override else {}),
             **_child(kind, model, seed, threads, roots[threads], override)}
        print(json.dumps({"kind": kind, **r}), flush=True)
        return r

    # the resnet-mini of each root first: densenet-mini's RTS encoder is the default resnet-mini
    order = sorted(args.models, key=lambda m: m != "resnet-mini")
    threads = max(args.threads)
    clf = [] if args.rts_only else [("classifier", m, s, t) for t in args.threads for m in order for s in args.seeds]
    rts = [] if args.no_rts else [("rts", m, s, t) for t in rts_threads for m in order for s in args.rts_seeds]
    if args.rts_first:  # the RTS jobs need the seed-0 classifiers of their root: those go first
        first = [c for c in clf if c[2] == 0 and c[3] == threads]
        plan = first + rts + [c for c in clf if c not in first]
    else:
        plan = clf + rts
    first_futs: dict[str, object] = {}

    def job_after_first(*spec):  # an RTS job waits for the seed-0 classifiers it loads, not retraining them
        needs = {spec[1], "resnet-mini"}  # densenet-mini's masker uses the resnet-mini encoder
        for m in needs:
            if m in first_futs:
                first_futs[m].result()  # type: ignore[attr-defined]
        return job(*spec)

    with ThreadPoolExecutor(args.jobs) as pool:
        futs = []
        for spec in plan:
            if spec in done:
                continue
            f = pool.submit(job_after_first if spec[0] == "rts" else job, *spec)
            if spec[0] == "classifier" and spec[2] == 0 and spec[3] == threads:
                first_futs[spec[1]] = f
            futs.append((spec, f))
        for spec, f in futs:
            (rows if spec[0] == "classifier" else rts_rows).append(f.result())
    return _render(args, done_rows + rows, done_rts + rts_rows, time.perf_counter() - t_start if futs else None,
                   partial="combined" if args.done else False)


def _read_log(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    rows: list[dict] = []
    rts_rows: list[dict] = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.startswith("{") and '"kind"' in line:
                r = json.loads(line)
                (rows if r.pop("kind") == "classifier" else rts_rows).append(r)
    return rows, rts_rows


def _render(args: argparse.Namespace, rows: list[dict], rts_rows: list[dict], seconds: float | None,
            partial: bool | str = False) -> int:
    ok_acc = all("acc" in r and r["acc"] >= ACC_BAR for r in rows)
    measured = {(r["model"], r["threads"], r["seed"]) for r in rows}
    missing = any((m, t, s) not in measured for m in args.models for t in args.threads for s in args.seeds)
    ok_rts = all("true" in r and r["true"] >= RTS_TRUE_BAR and r["true"] - r["wrong"] >= RTS_GAP_BAR for r in rts_rows)
    lines = [
        "# Training robustness of the embedded recipe",
        "",
        f"Generated by `python benchmarks/training_robustness.py` on {datetime.now(timezone.utc):%Y-%m-%d} "
        f"({machine_line()}), every training from an empty data root "
        f"per thread count" + (f"; total {seconds:.0f} s" if seconds is not None else "") + ". Do not edit by hand."
        + {False: "",
           True: " **Partial**: rendered (`--from-log`) from the rows an interrupted run had finished; the "
                 "missing cells of the matrix were not measured.",
           "sweep": " Rendered (`--from-log`) from the rows of RTS-only runs (`--rts-only`: a recipe sweep); "
                    "each masker was trained in the data root of its thread count, on that root's seed-0 classifiers.",
           "combined": " Rows of an earlier, interrupted run of the same code (`--done`) are combined with this "
                       "run's; cells marked 'not run' were not measured by either."}[partial],
        "",
        f"## Classifiers (`adv2 train` default recipe): test accuracy, bar >= {ACC_BAR}: "
        f"**{'PASS' if ok_acc else 'FAIL'}{' on the measured cells' if missing else ''}**",
        "",
        "Cells: test accuracy (steps at the constant learning rate before the anneal started: the loss "
        "sits at chance, then learning, until its running mean is 0.35 above its floor).",
        "",
        "Recipe: `TrainConfig()` with the model's defaults; label smoothing by model: " + "; ".join(
            f"{m} {', '.join(sorted({str(r.get('label_smoothing', '0 (rows before 2026-12-05)')) for r in rows if r['model'] == m}))}"
            for m in args.models) + ".",
        "",
        "| model | torch threads | " + " | ".join(f"seed {s}" for s in args.seeds) + " | min |",
        "|---|---|" + "---|" * (len(args.seeds) + 1),
    ]
    for model in args.models:
        for threads in args.threads:
            cells = {r["seed"]: r for r in rows if r["model"] == model and r["threads"] == threads}
            vals = [("not run" if s not in cells else f"{cells[s]['acc']:.4f} ({cells[s]['plateau']})"
                     if "acc" in cells[s] else f"error: {cells[s]['error']}") for s in args.seeds]
            accs = [cells[s]["acc"] for s in args.seeds if "acc" in cells.get(s, {})]
            lines.append(f"| {model} | {threads} | " + " | ".join(vals) + (f" | {min(accs):.4f} |" if accs else " | – |"))
    secs = [r["seconds"] for r in rows if "seconds" in r]
    if secs:
        lines += ["", f"Training time per model: {min(secs):.0f}-{max(secs):.0f} s."]
    pgd_rows = [r for r in rows if "pgd" in r]
    if pgd_rows:  # rows of runs before 2026-12-05 have no PGD measurement
        ok_pgd = all(r["pgd32"] >= PGD_BAR for r in pgd_rows)
        lines += ["", f"### Quick PGD on each checkpoint: success on the demo's 32 images, bar >= {PGD_BAR}: "
                  f"**{'PASS' if ok_pgd else 'FAIL'}**", "",
                  "Cells: targeted success of the quick preset's PGD (16/255, 40 steps, uint8 images) on the first 32 "
                  "correctly classified test images (the demo's population) / on the first 96 test images' correct "
                  "ones; median benign p(y) in brackets. Measured in the training's process (same thread count).", "",
                  "| model | torch threads | " + " | ".join(f"seed {s}" for s in args.seeds) + " | min (32) |",
                  "|---|---|" + "---|" * (len(args.seeds) + 1)]
        for model in args.models:
            for threads in args.threads:
                cells = {r["seed"]: r for r in pgd_rows if r["model"] == model and r["threads"] == threads
                                   and r["seed"] in args.seeds}
                vals = ["not run" if s not in cells else
                        f"{cells[s]['pgd32']:.3f} / {cells[s]['pgd']:.3f} ({cells[s]['p_true_median']:.3f})" for s in args.seeds]
                lines.append(f"| {model} | {threads} | " + " | ".join(vals)
                             + (f" | {min(c['pgd32'] for c in cells.values()):.3f} |" if cells else " | – |"))
    else:
        ok_pgd = True
    if not rows:  # an RTS-only run (a recipe sweep): no classifier table of "not run" cells
        del lines[next(i for i, line in enumerate(lines) if line.startswith("## Classifiers")):]
    if rts_rows:
        recipes = sorted({json.dumps(r.get("override", {}), sort_keys=True) for r in rts_rows})
        lines += [
            "",
            f"## RTS masking models (`adv2 train-rts`, quick preset): localisation top-k IoU true / wrong class, "
            f"bar true >= {RTS_TRUE_BAR} and gap >= {RTS_GAP_BAR}: **{'PASS' if ok_rts else 'FAIL'}**",
            "",
            "Recipe: the quick preset's `rts` section" + ("" if recipes == ["{}"] else ", with " + "; ".join(
                "none" if r == "{}" else f"`{r}`" for r in recipes) + " over it (column *recipe*)") + ".",
            "",
            "| model | torch threads | seed | true class | wrong class | gap | bar | seconds | recipe |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rts_rows:
            head = f"| {r['model']} | {r.get('threads', '–')} | {r['seed']} |"
            recipe = json.dumps(r["override"], sort_keys=True) if r.get("override") else "preset"
            if "true" in r:
                ok = r["true"] >= RTS_TRUE_BAR and r["true"] - r["wrong"] >= RTS_GAP_BAR
                lines.append(f"{head} {r['true']:.3f} | {r['wrong']:.3f} | {r['true'] - r['wrong']:.3f} | "
                             f"{'pass' if ok else '**miss**'} | "
                             f"{'–' if r.get('seconds') is None else format(r['seconds'], '.0f')} | {recipe} |")
            else:
                lines.append(f"{head} error: {r['error']} | | | | | {recipe} |")
    text = "\n".join(lines) + "\n"
    publish(text, args.out)
    return 0 if ok_acc and ok_rts and ok_pgd else 1



if __name__ == "__main__":
    raise SystemExit(main())
