"""What a second-order attack step costs on efficientnet-lite0, and what the two CPU fixes buy.

The second-order attack steps (ADV²-MASK's hypergradient through MASK's unrolled inner steps; ADV²-Grad's
map gradient through the smooth-ReLU twin) differentiate twice through the classifier. On the depthwise
EfficientNet-Lite0 two aten paths dominated that on CPU:

* the double backward of a grouped convolution loops over its groups (one convolution per channel);
  :class:`adv2core.models.grouped_conv.GroupedConvMode` makes it one grouped convolution per layer;
* BatchNorm's double backward recomputes batch reductions even in eval mode; the packaged model folds its
  BatchNorms into the convolutions (``adv2core.models.packaged._fold_batchnorm``).

This times, at batch 4 and 224 px on random images (the cost does not depend on the pixels), the median of
``--repeats`` runs after one warm-up of:

* MASK: 2 plain + 2 unrolled inner steps and the hypergradient (one ADV²-MASK outer step of the `real` preset
  without its prediction step and line search);
* Grad: the twin's map and its gradient (one ADV²-Grad stage-2 step);

for aten's paths (BN kept, the MASK mode off), the grouped-convolution mode alone, and both fixes (what the
code runs). The values agree to float rounding (the tests check that); only the time differs.

    python benchmarks/second_order_cost.py [--repeats 3]      # needs `make` (the efficientnet packages)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import adv2core.interpreters.mask as mask_mod  # noqa: E402
import adv2core.models.packaged as packaged  # noqa: E402
from adv2core.interpreters.config import MaskConfig  # noqa: E402
from adv2core.interpreters.grad import Grad  # noqa: E402
from adv2core.interpreters.mask import MASK  # noqa: E402
from machine import machine_line  # noqa: E402

BATCH, SIZE = 4, 224
_MODE = mask_mod.GroupedConvMode


def _model(fold: bool):
    real_fold = packaged._fold_batchnorm
    if not fold:
        packaged._fold_batchnorm = lambda net: None
    try:
        model = packaged.efficientnet_lite0().eval()
    finally:
        packaged._fold_batchnorm = real_fold
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _mask_step(model, x, target, target_map) -> None:
    interp = MASK(model, MaskConfig())
    state = interp.init_state(x, target)
    xr = x.clone().requires_grad_(True)
    z = interp.prepare(xr)
    state = interp.plain_steps(x, target, state, 2, z=z)
    _, lint = interp.unrolled_steps(xr, target, state, 2, target_map, z=z)
    torch.autograd.grad(lint.sum(), xr)


def _grad_step(model, x, target, target_map) -> None:
    interp = Grad(model)
    xr = x.clone().requires_grad_(True)
    m = interp.differentiable_map(xr, target)
    torch.autograd.grad((m - target_map).abs().sum(), xr)


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    target = torch.tensor([1, 2, 3, 4])
    mask_map = torch.rand(BATCH, 1, SIZE // 8, SIZE // 8, generator=gen)
    grad_map = torch.rand(BATCH, 1, SIZE // 4, SIZE // 4, generator=gen)  # Grad pools by 4
    settings = [("aten (BatchNorm kept, no grouped-conv mode)", False, False),
                ("grouped-conv mode, BatchNorm kept", False, True),
                ("grouped-conv mode + BatchNorm folded (the code)", True, True)]
    rows = []
    for label, fold, mode in settings:
        model = _model(fold)
        if not mode:
            mask_mod.GroupedConvMode = contextlib.nullcontext  # type: ignore[assignment,misc]
        try:
            t_mask = _time(lambda: _mask_step(model, x, target, mask_map), args.repeats)
        finally:
            mask_mod.GroupedConvMode = _MODE  # type: ignore[misc]
        # the twin always routes grouped convolutions (it extends the mode): Grad only shows the BN fold
        t_grad = _time(lambda: _grad_step(model, x, target, grad_map), args.repeats) if mode else float("nan")
        rows.append((label, t_mask, t_grad))
        print(f"# {label}: MASK {t_mask:.2f} s, Grad {t_grad:.2f} s", file=sys.stderr, flush=True)
    base = rows[0][1]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"efficientnet-lite0, batch {BATCH}, {SIZE} px; {machine_line()}; {torch.get_num_threads()} threads; {stamp}\n")
    print("| setting | MASK: 2 + 2 inner steps + hypergradient (s) | speed-up | Grad: twin map + its gradient (s) |")
    print("|---|---|---|---|")
    for label, t_mask, t_grad in rows:
        grad = "– (the twin always has the mode)" if t_grad != t_grad else f"{t_grad:.2f}"
        print(f"| {label} | {t_mask:.2f} | {base / t_mask:.1f}x | {grad} |")


if __name__ == "__main__":
    main()
