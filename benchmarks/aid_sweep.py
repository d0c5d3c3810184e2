"""AID settings against ADV^2 at the tests' scale: how far ADV^2-RTS (quick preset) ends from the benign map
when it attacks the RTS masking model, and when it attacks AID-hardened copies of it trained with each variant.

A tuning aid, not a result: resnet-mini and RTS are the test suite's (small embedded set, 200-iteration RTS
masker; trained into ``ADV2_DATA`` when missing, default ``data/test-cache``, the tests' cache). For each
``--variant`` (a JSON object over the quick preset's ``rts-aid.aid`` section) it prints one JSON line: ADV^2
success, mean L1 and top-k IoU to the hardened masker's own benign maps (successful examples), the masker's
true / wrong-class localisation on the whole test split, and AID's training seconds.

    python benchmarks/aid_sweep.py --images 32 --variant '{}' --variant '{"seed": 1}' --variant '{"adv_weight": 1.0}'
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("ADV2_DATA", str(REPO / "data" / "test-cache"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from adv2core.attacks.config import load_preset  # noqa: E402
from adv2core.bench.cell import run_cell, select_population  # noqa: E402
from adv2core.data.synthetic import EmbeddedDataConfig, EmbeddedDataset  # noqa: E402
from adv2core.interpreters.aid import fit_aid  # noqa: E402
from adv2core.interpreters.config import RTSAIDConfig, load_interpreter_config  # noqa: E402
from adv2core.interpreters.localization import localization_report  # noqa: E402
from adv2core.interpreters.registry import InterpreterSpec, build_interpreter  # noqa: E402
from adv2core.interpreters.rts import RTS, RTSAID  # noqa: E402
from adv2core.models.registry import train_embedded  # noqa: E402
from adv2core.models.training import TrainConfig  # noqa: E402

#: the test suite's data, fixture training and RTS settings (copies of tests/conftest.py's; keep them equal)
DATA = EmbeddedDataConfig(seed=0, image_size=64, num_classes=8, train_per_class=160, test_per_class=24)
TRAIN = TrainConfig(epochs=8, batch_size=64, lr=0.05, max_plateau_epochs=60)
SMALL_RTS = {"phase2_iterations": 200, "phase2_lr_step": 140, "quality_min_iou": 0.0, "quality_min_gap": 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32, help="correctly classified test images attacked")
    ap.add_argument("--variant", action="append", default=[], help="JSON over the quick rts-aid.aid section")
    args = ap.parse_args()
    model, _ = train_embedded("resnet-mini", DATA, TRAIN, progress=False)
    cfgs = load_interpreter_config("quick")
    rts = build_interpreter(InterpreterSpec("rts", cfgs["rts"].model_copy(update=SMALL_RTS)), model,
                            data_cfg=DATA, train_if_missing=True)
    aid_base = cfgs["rts-aid"].model_copy(update=SMALL_RTS)
    test = EmbeddedDataset("test", DATA)
    batch = select_population(model, test.load(list(range(3 * args.images))), "correct")[0]
    batch = batch.select(list(range(min(args.images, len(batch)))))
    train_x, train_y, _ = EmbeddedDataset("train", DATA).tensors()
    quick = load_preset("quick")

    def evaluate(interp: RTS, tag: str, extra: dict) -> None:
        t0 = time.perf_counter()
        loc = localization_report(interp, *test.tensors())
        rows = run_cell("resnet-mini", interp.name, "adv2", batch, quick, seed=0, device="cpu", model=model,
                        interpreter=interp).rows
        ok = [r for r in rows if r["success"]]
        print(json.dumps({"variant": tag, "n": len(rows), "success": len(ok) / len(rows),
                          "l1": round(float(np.mean([r["l1"] for r in ok])), 4),
                          "iou": round(float(np.mean([r["iou_mean"] for r in ok])), 4),
                          "loc_true": round(loc["iou_true"], 3), "loc_wrong": round(loc["iou_wrong"], 3),
                          "eval_s": round(time.perf_counter() - t0, 1), **extra}), flush=True)

    evaluate(rts, "rts (before AID)", {"threads": torch.get_num_threads()})
    for v in args.variant:
        cfg = RTSAIDConfig(**{**aid_base.model_dump(), "aid": {**aid_base.aid.model_dump(), **json.loads(v)}})
        masker = copy.deepcopy(rts.masker)
        t0 = time.perf_counter()
        fit = fit_aid(masker, model, train_x, train_y, cfg)
        # the last 10 % of AID's training: the inner attack's success and the map gap it leaves
        train = {k: round(fit[f"aid_{k}"], 3) for k in ("gap", "attack_success") if f"aid_{k}" in fit}
        evaluate(RTSAID(model, masker, confidence=cfg.model_confidence), v,
                 {"aid_s": round(time.perf_counter() - t0, 1), **train})


if __name__ == "__main__":
    main()
