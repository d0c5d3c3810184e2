"""MASK's benign localisation on the embedded models against its settings (the quick preset's MASK section).

For the first 32 correctly classified test images of each model (the preflight gate's images), it computes
the true-class and wrong-class MASK maps with the quick interpreter preset, each time with one override,
and prints the mean top-k IoU of the saliency with the object mask (k = object area), exactly as the gate
measures it (adv2core.gates.check_interpreter). Issue #10's bar is 0.3 for the true class.

    ADV2_DATA=<a data root where `adv2 run --preset quick` trained the models> python benchmarks/mask_blur_sweep.py \
        --model densenet-mini --set '{}' '{"blur_kernel": 7, "blur_sigma": 2.0}' '{"blur_kernel": 13, "blur_sigma": 4.0}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adv2core.bench.cell import select_population  # noqa: E402
from adv2core.data.synthetic import EmbeddedDataset  # noqa: E402
from adv2core.gates import GatesConfig, check_interpreter  # noqa: E402
from adv2core.interpreters.config import load_interpreter_config  # noqa: E402
from adv2core.interpreters.registry import build_interpreter, interpreter_spec  # noqa: E402
from adv2core.models.registry import load_model  # noqa: E402
from machine import machine_line  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="embedded model(s); default both")
    ap.add_argument("--set", nargs="*", default=["{}"], help="JSON overrides of the quick MASK settings, one per variant")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_interpreter_config("quick")["mask"]
    print(f"# quick MASK preset: blur {base.blur_kernel} / sigma {base.image_sigma:g}; {machine_line()}, "
          f"{args.threads} threads")
    print("| model | override | IoU true class | IoU wrong class | seconds |")
    print("|---|---|---|---|---|")
    for name in args.model or ["resnet-mini", "densenet-mini"]:
        model = load_model(name)
        correct, _ = select_population(model, EmbeddedDataset("test").load(list(range(48))), "correct")
        b = correct.select(torch.arange(min(32, len(correct))))
        for raw in args.set:
            cfg = base.model_copy(update=json.loads(raw))
            interp = build_interpreter(interpreter_spec("mask", config=cfg.model_dump()), model)
            t0 = time.perf_counter()
            r = check_interpreter(interp, name, b.images, b.labels, b.masks, GatesConfig(), ids=b.ids)
            print(f"| {name} | {raw} | {r['loc_true']:.3f} | {r['loc_control']:.3f} | {time.perf_counter() - t0:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
