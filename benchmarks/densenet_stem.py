"""densenet-mini's stem against issue #10's item-4 bars: does a stride-1 convolution + max-pool stem train as
reliably as the default stride-2 convolution, and does it change how far PGD reaches and how well MASK
localises?

For every stem (``adv2core.models.mini.DENSENET_STEMS``) and seed, from an empty data root per stem (made
under ``--root``, or a temporary folder): train densenet-mini with that stem and the default recipe
(``adv2 train``'s TrainConfig with the seed), then, on the first test images it classifies correctly (the
pipeline's population, in dataset order):

* the quick preset's targeted PGD (through the attack registry, judged on the uint8 image as in the report)
  on the first ``--images`` test images: success over all of them and over the first 32 (a quick run's cell);
* benign localisation (top-k IoU with the object, true class / wrong class) of Grad, CAM and MASK with the
  quick interpreter preset on the first 32, as the preflight gate measures it (bar 0.3 for MASK);
* with ``--adv2-mask``, the MASK cell of the quick preset on those 32 images (PGD and ADV², shared benign
  maps, ``adv2core.bench.cell.run_cell``): success, the L1 ratio ADV²/PGD (bar 0.6) and the IoU gain (bar 0.1).

A study, not a result of the default pipeline: the default stem is unchanged. Output: one JSON line per
(stem, seed), then a Markdown report (``--out``).

    python benchmarks/densenet_stem.py --seeds 0 1 2 --adv2-mask --out docs/densenet-stem.md
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from adv2core.models.mini import DENSENET_STEMS  # noqa: E402
from cell_sweep import summarise  # noqa: E402
from machine import machine_line, publish  # noqa: E402

LOC_IMAGES = 32


def measure(stem: str, seed: int, images: int, adv2_mask: bool) -> dict:
    """Train (in the current ``ADV2_DATA``) and measure one (stem, seed); see the module docstring."""
    from adv2core.attacks.config import load_preset
    from adv2core.attacks.registry import build_attack
    from adv2core.attacks.targets import target_classes
    from adv2core.bench.cell import default_interpreter, run_cell, select_population
    from adv2core.data.synthetic import EmbeddedDataset
    from adv2core.gates import GatesConfig, check_interpreter
    from adv2core.models import registry
    from adv2core.models.mini import densenet_mini
    from adv2core.models.training import TrainConfig

    registry.EMBEDDED_MODELS["densenet-mini"] = functools.partial(densenet_mini, stem=stem)
    t0 = time.perf_counter()
    model, met = registry.train_embedded("densenet-mini", None, TrainConfig(seed=seed), progress=False, force=True)
    model = model.eval().requires_grad_(False)
    row: dict = {"stem": stem, "seed": seed, "accuracy": met["test_accuracy"], "plateau_steps": met["plateau_steps"],
                 "train_seconds": round(time.perf_counter() - t0)}
    preset = load_preset("quick")
    b, _ = select_population(model, EmbeddedDataset("test").load(list(range(images))), "correct")
    target = target_classes(b.labels, b.ids, model.num_classes, seed=0)
    atk = build_attack("pgd", model, None, "quick")
    hits = []
    for s in range(0, len(b), 16):  # the run's attack batch size
        hits.append(atk(b.images[s:s + 16], target[s:s + 16], ids=b.ids[s:s + 16]).success)
    hit = torch.cat(hits)
    row.update(pgd_n=len(b), pgd_success=hit.float().mean().item(), pgd_success_32=hit[:32].float().mean().item())
    c = b.select(torch.arange(min(LOC_IMAGES, len(b))))
    for name in ("grad", "cam", "mask"):
        interp = default_interpreter(name, model, preset)
        r = check_interpreter(interp, "densenet-mini", c.images, c.labels, c.masks, GatesConfig(), ids=c.ids)
        row[f"loc_{name}"] = [r["loc_true"], r["loc_control"]]
        if name == "mask" and adv2_mask:
            benign = interp.explain(c.images, c.labels.long(), ids=list(c.ids))
            out = {attack: summarise(run_cell("densenet-mini", "mask", attack, c, preset, seed=0,
                                              device=torch.device("cpu"), model=model, interpreter=interp,
                                              benign_maps=benign).rows)
                   for attack in ("pgd", "adv2")}
            row["mask_cell"] = out
            row["mask_l1_ratio"] = out["adv2"]["l1"] / out["pgd"]["l1"] if out["pgd"]["l1"] else float("nan")
            row["mask_iou_gain"] = out["adv2"]["iou"] - out["pgd"]["iou"]
    row["seconds"] = round(time.perf_counter() - t0)
    return row


def render(rows: list[dict], header: str) -> str:
    out = [header, "",
           "| stem | seed | test acc. | plateau steps | train s | PGD succ. (N) | PGD succ., first 32 | "
           "loc. Grad | loc. CAM | loc. MASK | ADV²-MASK L1 ratio | ADV²-MASK IoU gain |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (DENSENET_STEMS.index(r["stem"]), r["seed"])):
        loc = {k: f"{r[f'loc_{k}'][0]:.3f} / {r[f'loc_{k}'][1]:.3f}" for k in ("grad", "cam", "mask")}
        ratio = f"{r['mask_l1_ratio']:.2f}" if "mask_l1_ratio" in r else "not run"
        gain = f"{r['mask_iou_gain']:+.3f}" if "mask_iou_gain" in r else "not run"
        out.append(f"| {r['stem']} | {r['seed']} | {r['accuracy']:.4f} | {r['plateau_steps']} | {r['train_seconds']} | "
                   f"{r['pgd_success']:.3f} ({r['pgd_n']}) | {r['pgd_success_32']:.3f} | {loc['grad']} | {loc['cam']} | "
                   f"{loc['mask']} | {ratio} | {gain} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stems", nargs="+", default=list(DENSENET_STEMS), choices=DENSENET_STEMS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=96, help="first N test images for PGD (the correct ones)")
    ap.add_argument("--adv2-mask", action="store_true", help="also run the quick MASK cell (PGD + ADV²) on 32 images")
    ap.add_argument("--root", type=Path, default=None, help="folder for the per-stem data roots (default: temporary)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown report")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = args.root or Path(tempfile.mkdtemp(prefix="densenet-stem-"))
    started = datetime.now(timezone.utc)
    rows = []
    for stem in args.stems:
        root = base / stem
        root.mkdir(parents=True, exist_ok=True)
        os.environ["ADV2_DATA"] = str(root)  # read at every cache access: one fresh data root per stem
        for seed in args.seeds:
            row = measure(stem, seed, args.images, args.adv2_mask)
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = (f"# densenet-mini stems (issue #10, item 4)\n\nGenerated by `python benchmarks/densenet_stem.py "
              f"--seeds {' '.join(map(str, args.seeds))}{' --adv2-mask' if args.adv2_mask else ''}` on "
              f"{started:%Y-%m-%d} ({machine_line()}, {args.threads} torch threads), every model trained from an "
              f"empty data root (one per stem). Do not edit by hand.\n\n"
              f"Cells: test accuracy; constant-lr steps before the anneal; training seconds; the quick preset's PGD "
              f"(eps 16/255, 40 steps) success on the correctly classified among the first {args.images} test images "
              f"and on the first 32 of them; benign top-k IoU with the object, true / wrong class, on the first "
              f"{LOC_IMAGES} (issue #10's bar for MASK: 0.3); the quick MASK cell's ADV² / PGD L1 ratio (bar 0.6) and "
              f"IoU gain (bar 0.1) on those {LOC_IMAGES}.")
    text = render(rows, header)
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
