"""Which targets does the quick preset's PGD miss on an embedded model, and would more steps reach them?

Context for issue #10's success bar (PGD >= 90 %) and the README's Known limitations: for the first N test
images that the model classifies correctly (the order `make demo` attacks them in), it runs the quick
preset's targeted PGD (through the attack registry, so success is judged on the uint8 image as in the
report) with several step counts, step sizes and early stopping, in batches of 16 as the run does, and
prints the success over all images and over the first 32 (the quick run's population) and which images
are missed. Then, for the images no setting reached, a plain float sign-PGD traces the best margin
logit_target - max other logit over the iterates, for the cross-entropy and a CW margin loss at eps and
1.5 x eps: a margin that stays far below 0 at every iterate means a target out of reach inside the ball,
not a step size that oscillates around it.

    ADV2_DATA=<a data root where `adv2 run --preset quick` trained the models> \
        python benchmarks/pgd_resistance.py --model densenet-mini --images 96
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from adv2core.attacks.config import load_preset  # noqa: E402
from adv2core.attacks.losses import cw_margin  # noqa: E402
from adv2core.attacks.registry import build_attack  # noqa: E402
from adv2core.attacks.targets import target_classes  # noqa: E402
from adv2core.bench.cell import select_population  # noqa: E402
from adv2core.data.synthetic import EmbeddedDataset  # noqa: E402
from adv2core.models.registry import load_model  # noqa: E402
from machine import machine_line  # noqa: E402


def float_trace(model, x, target, loss: str, eps: float, steps: int) -> tuple[list[float], list[int]]:
    """Best margin over the iterates of a float sign-PGD (alpha = eps / 8), and the final predictions."""
    xa, best = x.clone(), torch.full((len(x),), float("-inf"))
    for _ in range(steps):
        xr = xa.detach().requires_grad_(True)
        logits = model(xr)
        obj = F.cross_entropy(logits, target, reduction="sum") if loss == "ce" else cw_margin(logits, target, -5.0).sum()
        (g,) = torch.autograd.grad(obj, xr)
        best = torch.maximum(best, -cw_margin(logits.detach(), target))
        xa = (x + (xa - eps / 8 * g.sign() - x).clamp(-eps, eps)).clamp(0, 1).detach()
    with torch.no_grad():
        pred = model(xa).argmax(1)
    return [round(v, 2) for v in best.tolist()], pred.tolist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="densenet-mini")
    ap.add_argument("--images", type=int, default=96, help="first N test images (the correct ones are attacked)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eps", type=float, default=None, help="L-inf budget instead of the preset's (e.g. 8/255 = 0.0314)")
    ap.add_argument("--alpha", type=float, default=None, help="step size (default: the preset's, scaled with --eps)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    b, _ = select_population(model, EmbeddedDataset("test").load(list(range(args.images))), "correct")
    target = target_classes(b.labels, b.ids, model.num_classes, seed=0)
    preset = load_preset("quick")
    if args.eps is not None or args.alpha is not None:  # another budget: the preset's pgd section rewritten once
        data, eps = preset.model_dump(), args.eps or preset.pgd.eps
        data["pgd"].update(eps=eps, alpha=args.alpha or preset.pgd.alpha * eps / preset.pgd.eps)
        preset = load_preset(data)
    pgd = preset.pgd
    print(f"# {args.model}: {len(b)} of the first {args.images} test images correct; quick PGD eps {pgd.eps:g}, "
          f"alpha {pgd.alpha:.5f}, {pgd.steps} steps; {machine_line()}, {args.threads} threads")
    variants = [("quick (40 steps)", {}), ("80 steps", {"steps": 80}), ("160 steps", {"steps": 160}),
                ("80 steps, alpha / 2", {"steps": 80, "alpha": pgd.alpha / 2}),
                ("40 steps, early stop", {"early_stop": True}), ("80 steps, early stop", {"steps": 80, "early_stop": True})]
    print("| PGD | success, all | success, first 32 | missed (index among the correct images) | seconds |")
    print("|---|---|---|---|---|")
    never = None
    for label, ov in variants:
        t0 = time.perf_counter()
        hits = []
        for s in range(0, len(b), 16):
            atk = build_attack("pgd", model, None, preset, **ov)
            hits.append(atk(b.images[s:s + 16], target[s:s + 16], ids=b.ids[s:s + 16]).success)
        hit = torch.cat(hits)
        missed = (~hit).nonzero().flatten()
        never = missed if never is None else never[torch.isin(never, missed)]
        print(f"| {label} | {hit.float().mean():.3f} | {hit[:32].float().mean():.3f} | {missed.tolist()} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)
    if never is None or not len(never):
        return 0
    x, t, y = b.images[never], target[never], b.labels[never]
    print(f"\nmissed by every setting: {never.tolist()}; true classes {y.tolist()}, targets {t.tolist()}")
    print("| float sign-PGD | eps | steps | best margin over the iterates | final prediction |")
    print("|---|---|---|---|---|")
    for loss in ("ce", "cw"):
        for scale, steps in ((1.0, 80), (1.5, 160)):
            best, pred = float_trace(model, x, t, loss, pgd.eps * scale, steps)
            print(f"| {loss} | {pgd.eps * scale:.4f} | {steps} | {best} | {pred} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
