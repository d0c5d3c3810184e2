#!/usr/bin/env python
"""Host syncs inside the attack loops, counted on a GPU (``python benchmarks/cuda_syncs.py --out F.md``).

The developers' guide asks for no host sync inside an attack loop: a ``.item()``, a boolean mask, a
``nonzero`` or a device-to-host copy stalls the GPU once per step. This audit runs every attack cell of
the quick preset on random-weight embedded models (cost and control flow do not depend on the weights)
under ``torch.cuda.set_sync_debug_mode("warn")``, which makes CUDA's synchronizing calls raise a warning,
and records where in this repository each warning came from.

Each cell runs twice, with every loop count capped at ``--short`` and at ``--long`` steps. Syncs made
once per call (building the result, the final success check) are the same in both runs; syncs inside a
loop grow with the step count, so ``(long - short) / (long - short steps)`` is the number of syncs per
loop step, the figure that should be 0. The benign target map is computed before the audited call.

Needs CUDA: on a machine without one it stops with a one-line message.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from machine import machine_line  # noqa: E402

from benchmarks.perf_attacks_child import _attack, _inputs, _interpreter, _model  # noqa: E402
from benchmarks.perf_attacks_common import CELLS, PRESETS  # noqa: E402

SYNC_MESSAGE = "synchronizing CUDA operation"


def repo_frame(stack: list[traceback.FrameSummary]) -> str:
    """The innermost frame of ``stack`` inside this repository's library code (``adv2core/``), as
    ``path:line (function)``; the innermost frame at all when none is (a sync in torch called from here)."""
    for fr in reversed(stack):
        p = Path(fr.filename)
        try:
            rel = p.resolve().relative_to(REPO)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] == "adv2core":
            return f"{rel}:{fr.lineno} ({fr.name})"
    outside = [fr for fr in stack if Path(fr.filename).name not in ("warnings.py", Path(__file__).name)]
    fr = (outside or stack)[-1]
    return f"{fr.filename}:{fr.lineno} ({fr.name})"


def count_syncs(fn) -> Counter:
    """Run ``fn`` with CUDA's sync debug mode on; the synchronizing calls it made, by repository line."""
    seen: Counter = Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if SYNC_MESSAGE in str(message):
            seen[repo_frame(traceback.extract_stack()[:-1])] += 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return seen


def audit_cell(model_name: str, attack: str, interp_name: str | None, steps: int, batch: int, device: str):
    model = _model(model_name, device)
    apreset, ipreset = PRESETS[model_name]
    interp = _interpreter(interp_name, model, ipreset, steps, device)
    atk = _attack(attack, model, interp, apreset, steps)
    x, y, t, ids = _inputs(model, batch, device)
    tmap = interp.explain(x, y, ids=ids) if interp is not None else None
    atk(x, t, target_map=tmap, ids=ids)  # warm-up: lazy initialisation is not the loop's
    return count_syncs(lambda: atk(x, t, target_map=tmap, ids=ids))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--models", nargs="+", default=["resnet-mini", "densenet-mini"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--short", type=int, default=2)
    ap.add_argument("--long", type=int, default=4)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_syncs: no CUDA device here; this audit needs a GPU", file=sys.stderr)
        return 2
    device = "cuda"
    rows, where = [], {}
    for m in args.models:
        for attack, interp in CELLS:
            label = attack if interp is None else f"{attack} / {interp}"
            try:
                short = audit_cell(m, attack, interp, args.short, args.batch, device)
                long = audit_cell(m, attack, interp, args.long, args.batch, device)
            except Exception as e:  # one broken cell is a row, not a lost audit
                rows.append((m, label, "error", "error", "-", f"{type(e).__name__}: {e}"[:160]))
                continue
            n_s, n_l = sum(short.values()), sum(long.values())
            per_step = (n_l - n_s) / (args.long - args.short)
            grown = [f"`{k}` ×{long[k] - short.get(k, 0)}" for k in long if long[k] > short.get(k, 0)]
            rows.append((m, label, str(n_s), str(n_l), f"{per_step:g}", "; ".join(grown) or "-"))
            where[(m, label)] = long
            print(f"[cuda_syncs] {m} {label}: {n_s} / {n_l} syncs", file=sys.stderr, flush=True)
    lines = [
        "# Host syncs in the attack loops (GPU audit)",
        "",
        f"Generated by `benchmarks/cuda_syncs.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. "
        "Do not edit by hand.",
        "",
        f"* machine: {machine_line()}",
        f"* random-weight models, quick preset, batch {args.batch}, every loop count capped at "
        f"{args.short} and at {args.long}",
        "",
        "A sync is a call that CUDA's sync debug mode flags (`torch.cuda.set_sync_debug_mode('warn')`). "
        "*Per step* is the growth between the two caps over the extra steps: 0 means no sync inside the "
        "loops. *Lines that grow* are the repository lines whose count grew with the steps.",
        "",
        f"| model | cell | syncs, cap {args.short} | syncs, cap {args.long} | per step | lines that grow |",
        "|---|---|---|---|---|---|",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        "## Every sync, by line (cap %d)" % args.long,
        "",
    ]
    for (m, label), c in where.items():
        if c:
            lines.append(f"* {m} {label}: " + "; ".join(f"`{k}` ×{v}" for k, v in c.most_common()))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
