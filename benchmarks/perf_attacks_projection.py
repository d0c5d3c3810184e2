"""Projected wall time of the `paper` preset: pass-equivalents counted at the paper's step counts (short
stages, extrapolated) x the measured seconds per pass-equivalent of the paper's models."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.perf_attacks_common import CELLS, _label, spawn, spawn_counts  # noqa: E402


#: ADV^2-MASK counts: (fraction of stage 1, outer iterations of stage 2, re-solve period). A count is
#: a + b1 * stage-1 steps + b2 * outer iterations + r * re-solves (floor(stage 2 / period)); the four
#: designs give b1 (1 vs 2), r (3 vs 4) and b2 (4 vs 1), so the 1000 paper iterations need only 10.
MASK_DESIGN = ((0.1, 5, 5), (0.2, 5, 5), (0.1, 10, 5), (0.1, 10, 10))


def _mask_extrapolate(c: list[float], stage1: int, stage2: int, every: int) -> float:
    """The count at the paper's lengths from the four :data:`MASK_DESIGN` counts ``c``."""
    s1 = [max(1, round(stage1 * f)) for f, _, _ in MASK_DESIGN]
    b1 = (c[1] - c[0]) / (s1[1] - s1[0])
    r = c[2] - c[3]
    b2 = (c[3] - c[0]) / (MASK_DESIGN[3][1] - MASK_DESIGN[0][1])
    return c[0] + b1 * (stage1 - s1[0]) + b2 * (stage2 - MASK_DESIGN[0][1]) + r * (stage2 // every - 1)


#: The two fractions of every stage's length at which the paper-preset counts are taken.
SCALES = (0.1, 0.2)
#: The loop counts that set a stage's length (inner solver and period fields keep their paper values).
STAGE_FIELDS = ("steps", "stage1_steps", "stage2_steps")


def _scaled(section: dict[str, Any], f: float) -> dict[str, Any]:
    """The stage-length fields of an attack section scaled by ``f`` (whole steps, at least 1)."""
    out: dict[str, Any] = {}
    for k in STAGE_FIELDS:
        v = section.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            out[k] = max(1, round(v * f))
        elif isinstance(v, (list, tuple)):
            out[k] = [max(1, round(x * f)) for x in v]
    return out


def bench_paper_projection(device: str, progress) -> list[str]:
    """Projected wall time of the `paper` preset on this device, from pass-equivalents counted at the
    paper's step counts on one image (resnet-mini stand-in at 64 px: the loops, not the network, set the
    count) x the measured seconds per pass-equivalent of ResNet-50 / DenseNet-169 at 224 px, batch 10."""
    from adv2core.attacks.config import load_preset
    from adv2core.config import load_config

    from adv2core.attacks.registry import attack_config

    bench = load_config("paper")
    paper = load_preset("paper")
    base = dict(model="resnet-mini", batch=1, cap=None, device=device, presets=["paper", "paper"])
    jobs = []
    for attack, interp in CELLS:
        if attack not in bench.attacks.names:
            continue
        if interp == "mask":  # stage 1, outer iterations and re-solves each get their own coefficient
            s1 = (paper.adv2.mask if attack == "adv2" else paper.stadv_adv2.mask).stage1_steps
            for d, (f1, s2, every) in enumerate(MASK_DESIGN):
                jobs.append(dict(attack=attack, interpreter=interp, design=d, override={
                    "stage1_steps": max(1, round(s1 * f1)), "stage2_steps": s2, "resolve_every": every}))
        else:  # every stage at 1/10 and 2/10 of its length, extrapolated to full length (see SCALES)
            section = attack_config(attack, interp, paper).model_dump()
            for f in SCALES:
                jobs.append(dict(attack=attack, interpreter=interp, scale=f, override=_scaled(section, f)))
    for interp in bench.interpreters.names:
        jobs.append(dict(attack="pgd", interpreter=interp, mode="count_map"))
    progress(f"paper pass counts: {len(jobs)} counts on one image")
    res = spawn_counts(dict(base, mode="count"), jobs)
    counts: dict[tuple[str, str | None], float] = {}
    maps: dict[str, float] = {}
    mask_at: dict[tuple[str, int], float] = {}  # (attack, stage-2 iterations counted) -> pass-eq per image
    scaled: dict[tuple[str, str | None], dict[float, float]] = {}  # cell -> {scale: pass-eq per image}
    for r in res:
        if r["mode"] == "count_map":
            maps[r["interpreter"]] = r["pass_eq_per_image"]
        elif r["interpreter"] == "mask":
            mask_at[(r["attack"], r["design"])] = r["pass_eq_per_image"]
        else:
            scaled.setdefault((r["attack"], r["interpreter"]), {})[r["scale"]] = r["pass_eq_per_image"]
    for cell, at in scaled.items():
        (fa, ca), (fb, cb) = sorted(at.items())
        counts[cell] = ca + (cb - ca) * (1.0 - fa) / (fb - fa)
    for attack in ("adv2", "stadv-adv2"):
        sec = paper.adv2.mask if attack == "adv2" else paper.stadv_adv2.mask
        if all((attack, d) in mask_at for d in range(len(MASK_DESIGN))):
            counts[(attack, "mask")] = _mask_extrapolate([mask_at[(attack, d)] for d in range(len(MASK_DESIGN))],
                                                         sec.stage1_steps, sec.stage2_steps, sec.resolve_every)
    tpass = {m: spawn(dict(model=m.replace("-", ""), batch=10, device=device, mode="tpass"))["s_per_pass_eq_per_image"]
             for m in ("resnet50", "densenet169")}
    n = bench.data.num_images
    xeval = bench.cross_eval.attacks or bench.attacks.names
    interps = bench.interpreters.names
    # the artifact graph: PGD / StAdv once per model (examples stage), each ADV^2 once per interpreter,
    # benign maps once per interpreter (benign stage), then every example under every interpreter
    uses = ("adv2", "stadv-adv2")
    attack_pe = sum(counts[(a, i)] for i in interps for a in bench.attacks.names if a in uses) + sum(
        counts[(a, None)] for a in bench.attacks.names if a not in uses)
    benign_pe = sum(maps.values())
    xeval_pe = len(xeval) * len(interps) * sum(maps.values())
    lines = [
        "Cost model of the pipeline's artifact graph: PGD and StAdv run once per model (the `examples` stage), "
        "each ADV² once per interpreter; benign maps once per interpreter (the `benign` stage); the "
        "cross-evaluation maps every example "
        f"of {', '.join(xeval)} under every interpreter. Efficiency is taken as 1 (the floor).",
        "",
        f"Pass-equivalents per image at the paper's step counts, counted at two lengths and extrapolated "
        f"linearly (a count is affine in each stage's length: every step does the same passes): every stage at "
        f"{SCALES[0]:g} and {SCALES[1]:g} of its length (MASK: stage 1 at 0.1 and 0.2, stage 2 at 5 and 10 outer "
        f"iterations with a re-solve every 5 or 10, giving per-step, per-iteration and per-re-solve costs; "
        f"rounding a stage to whole steps moves a figure by under 1 %): " + ", ".join(f"{_label(a, i)} {v:,.0f}" for (a, i), v in counts.items()) + "; maps: "
        + ", ".join(f"{i} {v:,.0f}" for i, v in maps.items()) + ".",
        "",
        "| model | s per pass-eq per image (batch 10, 224 px, measured) | attacks (pass-eq / image) | benign maps | "
        f"cross-evaluation | projected wall time, {n} images |",
        "|---|---|---|---|---|---|",
    ]
    total = 0.0
    for m in bench.models.names:
        s = tpass[m.replace("-", "")] if m.replace("-", "") in tpass else tpass["resnet50"]
        pe = attack_pe + benign_pe + xeval_pe
        total += pe * s * n
        lines.append(f"| {m} | {s * 1000:.2f} ms | {attack_pe:,.0f} | {benign_pe:,.0f} | {xeval_pe:,.0f} | "
                     f"{pe * s * n / 3600:,.1f} h |")
    lines += ["", f"Projected `paper` preset on this device at 100 % efficiency: **{total / 3600:,.1f} h** "
              f"({total / 86400:,.1f} days). Multiply by the efficiencies above for the expected figure."]
    return lines
