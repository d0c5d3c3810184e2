"""Tune an attack preset against the paper-shape bars: PGD once, then ADV² under several variants of its
configuration, on the first correctly classified test images of the embedded set.

A tuning aid, not a result: the published numbers come from `make demo` / `benchmarks/quick_evidence.py`.
It reuses the pipeline's own pieces (``run_cell`` with shared benign maps, the shape bars of
``adv2core.report.shape``), so what it prints is what the report would check.

    python benchmarks/cell_sweep.py --models resnet-mini --interpreters mask \\
        --variant '{}' --variant '{"stage2_steps": 40}' --device cuda

Each ``--variant`` is a JSON object of fields overriding ``adv2.<interpreter>`` of the preset (``{}`` = the
preset as is). Output: one JSON line per cell, then a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from adv2core.attacks.config import load_preset  # noqa: E402
from adv2core.bench.cell import default_interpreter, run_cell  # noqa: E402
from adv2core.data.registry import get_dataset  # noqa: E402
from adv2core.gates import GatesConfig, map_degeneracy  # noqa: E402
from adv2core.models.registry import load_model  # noqa: E402
from adv2core.models.training import TrainConfig  # noqa: E402
from adv2core.report import shape  # noqa: E402


def _mean(rows: list[dict], key: str, only_success: bool = True) -> float:
    vals = [r[key] for r in rows if r["status"] == "ok" and (r["success"] or not only_success) and r[key] is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def summarise(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    return {"n": len(ok), "success": sum(r["success"] for r in ok) / max(len(ok), 1), "l1": _mean(rows, "l1"),
            "iou": _mean(rows, "iou_mean"), "loc_benign": _mean(rows, "loc_iou_benign", only_success=False)}


def _loc_sweep(model, model_name: str, batch, variants: list[dict], common: dict) -> None:
    """Benign true-class localisation of MASK under interpreter-config variants (no attacks)."""
    from adv2core.interpreters.config import load_interpreter_config
    from adv2core.metrics.maps import localization_iou
    from adv2core.interpreters.registry import build_interpreter, interpreter_spec

    base = load_interpreter_config("quick")["mask"].model_copy(update=common)
    y = batch.labels.long()
    wrong = (y + 1) % model.num_classes
    for v in variants:
        t0 = time.perf_counter()
        interp = build_interpreter(interpreter_spec("mask", config=base.model_copy(update=v)), model)
        m = interp.explain(batch.images, y, ids=list(batch.ids))
        loc = localization_iou(interp.saliency(m), batch.masks)
        loc_w = localization_iou(interp.saliency(interp.explain(batch.images, wrong, ids=list(batch.ids))), batch.masks)
        print(json.dumps({"model": model_name, "mask_cfg": v, "loc_true": loc.mean().item(), "loc_wrong": loc_w.mean().item(),
                          "flat_frac": map_degeneracy(m, GatesConfig(min_range=0.05))["constant_fraction"],
                          "seconds": time.perf_counter() - t0}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet-mini", "densenet-mini"])
    ap.add_argument("--interpreters", nargs="+", default=["grad", "cam", "rts", "mask"])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--dataset", default="embedded", choices=["embedded", "imagenet-samples"],
                    help="imagenet-samples: the packaged photos (use with --preset real and the real models)")
    ap.add_argument("--images", type=int, default=32, help="correctly classified images per cell")
    ap.add_argument("--offset", type=int, default=0, help="first test image (a second sample of images)")
    ap.add_argument("--variant", action="append", default=None, help="JSON overrides of adv2.<interpreter>")
    ap.add_argument("--pgd", default="{}", help="JSON overrides of the preset's pgd section")
    ap.add_argument("--loc-variant", action="append", default=None,
                    help="JSON overrides of the MASK interpreter config: only benign localisation is measured")
    ap.add_argument("--mask-cfg", default="{}", help="JSON overrides of the MASK interpreter config (attacks too)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-seed", type=int, default=0, help="the classifiers' training seed (their checkpoint)")
    args = ap.parse_args()
    variants = [json.loads(v) for v in (args.variant or ["{}"])]
    dev = torch.device(args.device)
    base = load_preset(args.preset)
    if args.pgd != "{}":
        data = base.model_dump()
        data["pgd"].update(json.loads(args.pgd))
        base = load_preset(data)
    ds = get_dataset(args.dataset, "test")
    results = []
    for model_name in args.models:
        t0 = time.perf_counter()
        model = load_model(model_name, train_if_missing=True, device=dev, train_cfg=TrainConfig(seed=args.train_seed))
        # the population of the pipeline: correctly classified images, in dataset order
        cand = ds.load(range(args.offset, min(len(ds), args.offset + 4 * args.images))).to(dev)
        with torch.no_grad():
            keep = (model(cand.images).argmax(1) == cand.labels).nonzero().flatten()[: args.images].tolist()
        batch = cand.select(keep)
        print(f"# {model_name}: {len(keep)} correct images, model ready in {time.perf_counter() - t0:.0f} s", flush=True)
        if args.loc_variant:
            _loc_sweep(model, model_name, batch, [json.loads(v) for v in args.loc_variant], json.loads(args.mask_cfg))
            continue
        for interp_name in args.interpreters:
            interp = default_interpreter(interp_name, model, base, train_if_missing=True)
            if interp_name == "mask" and args.mask_cfg != "{}":
                from adv2core.interpreters.registry import build_interpreter, interpreter_spec

                cfg = interp.cfg.model_copy(update=json.loads(args.mask_cfg))
                interp = build_interpreter(interpreter_spec("mask", config=cfg), model)
            benign = interp.explain(batch.images, batch.labels.long(), ids=list(batch.ids))
            pgd = summarise(run_cell(model_name, interp_name, "pgd", batch, base, seed=args.seed, device=dev,
                                     model=model, interpreter=interp, benign_maps=benign).rows)
            for v in variants:
                data = base.model_dump()
                data["adv2"][interp_name].update(v)
                t1 = time.perf_counter()
                adv = summarise(run_cell(model_name, interp_name, "adv2", batch, load_preset(data), seed=args.seed,
                                         device=dev, model=model, interpreter=interp, benign_maps=benign).rows)
                ratio = adv["l1"] / pgd["l1"] if pgd["l1"] else float("nan")
                ok = (min(pgd["success"], adv["success"]) >= shape.MIN_SUCCESS
                      and abs(pgd["success"] - adv["success"]) <= shape.MAX_SUCCESS_GAP
                      and ratio <= shape.MAX_L1_RATIO and adv["iou"] >= pgd["iou"] + shape.MIN_IOU_GAIN)
                rec = {"model": model_name, "interpreter": interp_name, "variant": v, "pgd": pgd, "adv2": adv,
                       "l1_ratio": ratio, "iou_gain": adv["iou"] - pgd["iou"], "shape_ok": ok,
                       "adv2_seconds": time.perf_counter() - t1}
                results.append(rec)
                print(json.dumps(rec), flush=True)
    print("\n| model | interp. | variant | n | succ. PGD / ADV² | L1 ratio | IoU PGD → ADV² (gain) | benign loc. | shape |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p, a = r["pgd"], r["adv2"]
        print(f"| {r['model']} | {r['interpreter']} | `{json.dumps(r['variant'])}` | {a['n']} | {p['success']:.2f} / "
              f"{a['success']:.2f} | {r['l1_ratio']:.2f} | {p['iou']:.3f} → {a['iou']:.3f} ({r['iou_gain']:+.3f}) | "
              f"{a['loc_benign']:.3f} | {'yes' if r['shape_ok'] else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
