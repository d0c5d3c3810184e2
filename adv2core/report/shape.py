"""Does a run show the paper's shape? One row per (model, interpreter), checked against stated bars.

The paper's headline (Zhang et al. 2020, tables 2-4): ADV² is about as successful as PGD, and its
adversarial maps stay much closer to the benign ones. The bars (issue #10, item 4) turn that into checks:

* PGD and ADV² success >= 0.9, and ADV² within 10 points of PGD;
* ADV² L1 to the benign map <= 0.6 x PGD's;
* ADV² top-k IoU with the benign map (mean over k) >= PGD's + 0.1;
* the interpreter's benign localisation (top-k IoU with the object mask, where masks exist) >= 0.3.

Built from the already computed success / distance / IoU / localisation tables (no second query), so the
check and the numbers it judges can never disagree.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from adv2core.report.rendering import Block, ReportTable, fmt_num, fmt_pct, interpreter_key, interpreter_name

MIN_SUCCESS = 0.9
MAX_SUCCESS_GAP = 0.10
MAX_L1_RATIO = 0.6
MIN_IOU_GAIN = 0.1
MIN_LOCALISATION = 0.3


def _get(records: Sequence[dict[str, Any]], model: str, interp: str, attack: str, key: str) -> float:
    for r in records:
        if (r["model"], r["interpreter"], r["attack"]) == (model, interp, attack):
            v = r.get(key)
            return math.nan if v is None else float(v)
    return math.nan


def shape_table(success: ReportTable, distances: ReportTable, iou: ReportTable,
                localisation: ReportTable | None) -> ReportTable:
    """The check table; cells without PGD or ADV² results are left out."""
    pairs = sorted({(r["model"], r["interpreter"]) for r in success.records
                    if r["attack"] in ("pgd", "adv2")}, key=lambda p: (p[0], interpreter_key(p[1])))
    loc_recs = localisation.records if localisation is not None else []
    records = []
    for m, i in pairs:
        s_p, s_a = _get(success.records, m, i, "pgd", "success_rate"), _get(success.records, m, i, "adv2", "success_rate")
        l_p, l_a = _get(distances.records, m, i, "pgd", "l1_mean"), _get(distances.records, m, i, "adv2", "l1_mean")
        u_p, u_a = _get(iou.records, m, i, "pgd", "iou_mean_mean"), _get(iou.records, m, i, "adv2", "iou_mean_mean")
        loc = _get(loc_recs, m, i, "adv2", "loc_benign_mean")
        if math.isnan(loc):
            loc = _get(loc_recs, m, i, "pgd", "loc_benign_mean")
        checks = {
            "success": s_p >= MIN_SUCCESS and s_a >= MIN_SUCCESS,
            "success_gap": abs(s_p - s_a) <= MAX_SUCCESS_GAP,
            "l1_ratio": l_a <= MAX_L1_RATIO * l_p,
            "iou_gain": u_a >= u_p + MIN_IOU_GAIN,
            "localisation": math.isnan(loc) or loc >= MIN_LOCALISATION,  # no masks: not applicable
        }
        rec = {"model": m, "interpreter": i, "success_pgd": s_p, "success_adv2": s_a, "l1_pgd": l_p, "l1_adv2": l_a,
               "l1_ratio": l_a / l_p if l_p else math.nan, "iou_pgd": u_p, "iou_adv2": u_a, "loc_benign": loc,
               **{f"ok_{k}": v for k, v in checks.items()}, "ok": all(checks.values())}
        records.append(rec)
    header = ["Model", "Interp.", "succ. PGD / ADV² %", "L1 ADV²/PGD", "IoU PGD → ADV²", "benign loc.", "shape"]
    rows = []
    for r in records:
        bad = [k for k in ("success", "success_gap", "l1_ratio", "iou_gain", "localisation") if not r[f"ok_{k}"]]
        rows.append([r["model"], interpreter_name(r["interpreter"]),
                     f"{fmt_pct(r['success_pgd'])} / {fmt_pct(r['success_adv2'])}", fmt_num(r["l1_ratio"], 2),
                     f"{fmt_num(r['iou_pgd'])} → {fmt_num(r['iou_adv2'])}", fmt_num(r["loc_benign"]),
                     "yes" if r["ok"] else "no: " + ", ".join(bad)])
    return ReportTable(
        key="shape",
        title="The paper's shape, checked",
        note=f"Bars: PGD and ADV² success >= {MIN_SUCCESS:.0%} and within {MAX_SUCCESS_GAP:.0%} of each other; "
             f"ADV² L1 <= {MAX_L1_RATIO} x PGD; ADV² IoU (mean over k) >= PGD + {MIN_IOU_GAIN}; benign "
             f"localisation >= {MIN_LOCALISATION} where masks exist. Means as in the tables above.",
        columns=list(records[0]) if records else ["model", "interpreter", "ok"],
        records=records,
        blocks=[Block(header, rows)] if records else [],
    )
