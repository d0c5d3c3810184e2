"""The pass counter behind BENCHMARKS.md's efficiency figures (adv2core/passes.py, benchmarks/perf_attacks.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from adv2core.models.mini import resnet_mini
from adv2core.passes import PassCounter, forward_backward_flops, forward_flops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return resnet_mini(8, 64).eval().requires_grad_(False)


def test_counts_backward_and_double_backward(model):
    """Frozen weights: an input-gradient backward costs one forward's convolutions; a double backward (the
    Grad-map attack step) more than forward + backward. A counter blind to autograd would give 1 and 1."""
    x = torch.rand(3, 3, 64, 64)
    fwd = forward_flops(model, x)
    assert fwd > 0
    assert forward_backward_flops(model, x) == 2 * fwd
    with PassCounter() as c:
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xr).sum(), xr, create_graph=True)
        g.pow(2).sum().backward()
    assert c.flops > 3 * fwd


@pytest.mark.parametrize("steps", [1, 3])
def test_pgd_performs_exactly_its_passes(model, steps):
    """PGD with k steps = k forward+backward passes + one forward to score the result: 2k + 1
    pass-equivalents per image. More would mean hidden recomputation in the attack loop."""
    import perf_attacks as pa

    out = pa.child(dict(model="resnet-mini", attack="pgd", interpreter=None, batch=2, cap=steps, device="cpu",
                        mode="count"))
    assert out["pass_eq_per_image"] == pytest.approx(2 * steps + 1, abs=1e-9)


def test_efficiency_child_reports_finite_figures():
    import math

    import perf_attacks as pa

    out = pa.child(dict(model="resnet-mini", attack="adv2", interpreter="cam", batch=2, cap=1, device="cpu",
                        mode="eff"))
    for key in ("wall_s", "t_fb_s", "efficiency", "pass_eq_per_image", "peak_mib"):
        assert math.isfinite(out[key]) and out[key] >= 0, (key, out[key])
    assert out["pass_eq_per_image"] > 2  # stage 1 + stage 2 each do at least one forward+backward


@pytest.mark.heavy  # ~40 child processes: every section of `make bench` at tiny sizes
@pytest.mark.skipif(os.environ.get("ADV2_BENCH_TEST") != "1",
                    reason="opt-in (ADV2_BENCH_TEST=1): over 10 minutes on 2 busy cores, not yet timed idle")
def test_bench_smoke_writes_every_section(tmp_path):
    import run as bench_run

    out = tmp_path / "BENCHMARKS.md"
    assert bench_run.main(["--smoke", "--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    for title in ("## Attack efficiency", "## Versus the authors' loop shape", "## Pipeline overhead",
                  "## DuckDB at scale", "## GPU"):
        assert title in text, title
    assert "PASS" in text or "FAIL" in text


@pytest.mark.parametrize("attack,interp", [pytest.param("adv2", "grad", marks=pytest.mark.heavy), ("adv2", "cam")])
def test_counts_are_affine_in_stage_length(attack, interp):
    """The paper projection counts every stage at 1/10 and 2/10 of its length and extrapolates linearly.
    Check that rule at the paper's settings on short stages: counts at lengths L and 2L predict the count
    at 4L (Grad's stage 2 is four lambda segments plus a best-iterate check every 10 steps, CAM's a
    growing-c schedule)."""
    import perf_attacks as pa

    from adv2core.attacks.config import load_preset
    from adv2core.attacks.registry import attack_config

    section = attack_config(attack, interp, load_preset("paper")).model_dump()
    base = dict(model="resnet-mini", attack=attack, interpreter=interp, batch=1, cap=None, device="cpu",
                mode="count", presets=["paper", "paper"])
    counts = {}
    for k in (1, 2, 4):
        over = {"stage1_steps": 10 * k,
                "stage2_steps": [10 * k] * len(section["stage2_steps"]) if isinstance(section["stage2_steps"], (list, tuple))
                else 10 * k}
        counts[k] = pa.child({**base, "override": over})["pass_eq_per_image"]
    predicted = counts[1] + (counts[2] - counts[1]) * 3
    assert predicted == pytest.approx(counts[4], rel=0.01), (counts, predicted)
    assert counts[2] > counts[1]  # the lengths were really changed


@pytest.mark.heavy  # ~40 s on 2 cores: the re-solves are full MASK explanations
def test_mask_count_model_predicts_a_longer_run():
    """ADV²-MASK's projection counts four short designs (stage-1 steps, outer iterations, re-solves) and
    extrapolates; check the model against a real count at other lengths (quick preset's inner settings)."""
    import perf_attacks as pa

    from adv2core.attacks.config import load_preset

    s1 = load_preset("quick").adv2.mask.stage1_steps
    base = dict(model="resnet-mini", attack="adv2", interpreter="mask", batch=1, cap=None, device="cpu",
                mode="count", presets=["quick", "quick"])

    def count(stage1: int, stage2: int, every: int) -> float:
        over = {"stage1_steps": stage1, "stage2_steps": stage2, "resolve_every": every}
        return pa.child({**base, "override": over})["pass_eq_per_image"]

    c = [count(max(1, round(s1 * f)), s2, e) for f, s2, e in pa.MASK_DESIGN]
    assert pa._mask_extrapolate(c, s1, 20, 5) == pytest.approx(count(s1, 20, 5), rel=0.01)
