"""Where along its training does an RTS masking model reach (or miss) its quality bar?

Trains one masking model of the quick preset (the classifier from the data root, trained first when
missing) and, every ``--every`` phase-2 iterations, scores it as ``train_rts``'s quality bar does:
top-k IoU with the object for the true class and for a random wrong class on the embedded test split.
It also records the mean mask value (area) for the true and a wrong class on the first 512 training
images, a label-only signal of class selectivity.

The scoring runs on a forked random state and restores the masking model's train mode and gradient
flags, so the final row equals an uninterrupted ``adv2 train-rts`` of the same seed (checked against
docs/rts-recipe-sweep-amd.md). One JSON line per snapshot on stdout.

    ADV2_DATA=<root> OMP_NUM_THREADS=1 python benchmarks/rts_trajectory.py --model resnet-mini --seed 0 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _weight_fake_area(weight: float) -> None:
    """Wrap phase 2's loss so the area of fake-class masks counts ``weight`` times (an experiment of
    docs/rts-recipe-sweep-amd.md, not a recipe setting)."""
    import torch.nn.functional as F

    from adv2core.interpreters import rts_fit

    base = rts_fit.saliency_loss

    def loss(classifier, x, y, mask, is_real, cfg, gen):
        total, terms = base(classifier, x, y, mask, is_real, cfg, gen)
        big = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
        per_image = (big + 5e-4).pow(cfg.area_power).flatten(1).mean(1)
        return total + cfg.area_coeff * (weight - 1.0) * ((~is_real).float() * per_image).mean(), terms

    rts_fit.saliency_loss = loss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet-mini", choices=("resnet-mini", "densenet-mini"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=50, help="score every N phase-2 iterations")
    ap.add_argument("--override", default="{}", help="JSON over the quick preset's rts settings")
    ap.add_argument("--fake-area-weight", type=float, default=1.0,
                    help="experiment: count the area term of fake-class samples this many times (1: the recipe)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.fake_area_weight != 1.0:
        _weight_fake_area(args.fake_area_weight)

    from adv2core.data.synthetic import EmbeddedDataConfig, EmbeddedDataset
    from adv2core.interpreters.localization import localization_report, wrong_classes
    from adv2core.interpreters.registry import interpreter_spec
    from adv2core.interpreters.rts import RTS
    from adv2core.interpreters.rts_fit import fit_rts
    from adv2core.interpreters.rts_model import build_masker
    from adv2core.interpreters.rts_training import resolve_encoder_model
    from adv2core.models.registry import load_model

    clf = load_model(args.model, train_if_missing=True)
    cfg = interpreter_spec("rts", "quick", args.model).config
    override = json.loads(args.override)
    cfg = cfg.model_copy(update={**override, "seed": args.seed})
    encoder = resolve_encoder_model(args.model, clf, None, cfg, train_if_missing=True)
    masker = build_masker(clf, cfg, encoder)
    x, y, _ = EmbeddedDataset("train", EmbeddedDataConfig()).tensors()
    tx, ty, tm = EmbeddedDataset("test", EmbeddedDataConfig()).tensors()
    px, py = x[:512], y[:512]

    def score(iteration: int) -> None:
        training, flags = masker.training, [p.requires_grad for p in masker.parameters()]
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            rts = RTS(clf, masker, confidence=cfg.model_confidence)  # sets eval mode, freezes the masker
            rep = localization_report(rts, tx, ty, tm)
            area_true = float(rts.explain(px, py).mean())
            area_wrong = float(rts.explain(px, wrong_classes(py, masker.num_classes, 1)).mean())
        masker.train(training)
        for p, f in zip(masker.parameters(), flags):
            p.requires_grad_(f)
        print(json.dumps({"model": args.model, "seed": args.seed, "threads": args.threads,
                          "override": override, "fake_area_weight": args.fake_area_weight,
                          "it": iteration,
                          "true": round(rep["iou_true"], 3), "wrong": round(rep["iou_wrong"], 3),
                          "area_true": round(area_true, 3), "area_wrong": round(area_wrong, 3)}), flush=True)

    def callback(phase: int, iteration: int) -> None:
        if phase == 2 and (iteration % args.every == 0 or iteration == cfg.phase2_iterations):
            score(iteration)

    t0 = time.perf_counter()
    fit_rts(masker, clf, x, y, cfg, progress=False, callback=callback)
    print(json.dumps({"model": args.model, "seed": args.seed, "threads": args.threads,
                      "seconds": round(time.perf_counter() - t0)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
