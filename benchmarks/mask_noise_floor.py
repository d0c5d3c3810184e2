"""How far do *unoptimised* changes move the MASK maps of the embedded models? Context for the quick preset's
MASK cells (docs/results-quick.md), where ADV^2's L1 to the benign map is judged against 0.6 x PGD's.

For the first N correctly classified embedded test images of each model (the images `make demo` attacks),
it prints the mean L1 and mean top-k IoU (mean over k) between the benign MASK map (true class, quick preset)
and the MASK map of
  (a) the same image with another jitter seed: the interpreter's own run-to-run spread;
  (b) the image plus uniform random sign noise of the quick radius eps = 16/255 (quantised to uint8);
  (c) the same with eps / 4.
No attack can be expected to bring its map closer to the benign one than (a), and an input change of the
attack's size that carries no information moves it as far as (b).

    ADV2_DATA=<a data root where `adv2 run --preset quick` trained the models> python benchmarks/mask_noise_floor.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adv2core.data.synthetic import EmbeddedDataConfig, EmbeddedDataset  # noqa: E402
from adv2core.interpreters.registry import build_interpreter, interpreter_spec  # noqa: E402
from adv2core.metrics import quantize_uint8  # noqa: E402
from adv2core.metrics.maps import DEFAULT_KS, iou_curve, l1_distance  # noqa: E402
from adv2core.models.registry import load_model  # noqa: E402
from machine import machine_line  # noqa: E402

EPS = 0.0627  # adv2core/configs/attacks/quick.yaml


def _sign_noise(x: torch.Tensor, size: float, gen: torch.Generator) -> torch.Tensor:
    s = torch.randint(0, 2, x.shape, generator=gen).to(x.dtype).mul_(2).sub_(1)
    return quantize_uint8((x + size * s).clamp(0, 1), "round")


def _row(interp, ref: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    l1 = float(l1_distance(other, ref).mean())
    iou = float(iou_curve(interp.saliency(other), interp.saliency(ref), DEFAULT_KS).mean())
    return l1, iou


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet-mini", "densenet-mini"])
    ap.add_argument("--images", type=int, default=32)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    ds = EmbeddedDataset("test", EmbeddedDataConfig())
    batch = ds.load(list(range(min(len(ds), 4 * args.images))))
    print(f"{machine_line()}; first {args.images} correctly classified test images per model\n")
    print("| model | change | L1 to the benign map | IoU with it (mean over k) |")
    print("|---|---|---|---|")
    for name in args.models:
        t0 = time.perf_counter()
        model = load_model(name, train_if_missing=False)
        with torch.no_grad():
            ok = (model(batch.images).argmax(1) == batch.labels).nonzero().flatten()[: args.images]
        b = batch.select(ok)
        spec = interpreter_spec("mask", "quick", name)
        mask = build_interpreter(spec, model)
        reseeded = build_interpreter(interpreter_spec("mask", "quick", name,
                                                      config=spec.config.model_copy(update={"seed": spec.config.seed + 1})),
                                     model)
        ids = list(b.ids)
        ref = mask.explain(b.images, b.labels, ids=ids)
        rows = {
            "(a) another jitter seed": reseeded.explain(b.images, b.labels, ids=ids),
            "(b) random sign noise, eps": mask.explain(_sign_noise(b.images, EPS, gen), b.labels, ids=ids),
            "(c) random sign noise, eps/4": mask.explain(_sign_noise(b.images, EPS / 4, gen), b.labels, ids=ids),
        }
        for label, other in rows.items():
            l1, iou = _row(mask, ref, other)
            print(f"| {name} | {label} | {l1:.3f} | {iou:.3f} |")
        print(f"<!-- {name}: {len(ids)} images, {time.perf_counter() - t0:.0f} s -->")


if __name__ == "__main__":
    main()
