"""AID before / after: ADV² against RTS and against the AID-hardened RTS of the same run (issue 13, item 2).

A run with ``defences: [aid]`` (or ``interpreters.names`` holding both ``rts`` and ``rts-aid``) attacks both
interpreters with the same attacks on the same images, so each row compares the same attack against the
masking model before and after adversarial interpretation distillation. A defence that makes ADV² worse
at keeping the map (higher L1, lower IoU) without lowering the interpreter's benign localisation is one
that works; one that destroys the explanation is not (the localisation column says which).

Built from the already computed success / distance / IoU / localisation tables (no second query).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from adv2core.report.shape import _get
from adv2core.report.rendering import Block, ReportTable, attack_name, fmt_num, fmt_pct

BEFORE, AFTER = "rts", "rts-aid"


def aid_table(success: ReportTable, distances: ReportTable, iou: ReportTable,
              localisation: ReportTable | None) -> ReportTable | None:
    """One row per (model, attack) run against both ``rts`` and ``rts-aid``; None when there is none."""
    have = {(r["model"], r["interpreter"], r["attack"]) for r in success.records}
    cells = sorted({(m, a) for m, i, a in have if i == BEFORE and (m, AFTER, a) in have})
    if not cells:
        return None
    loc_recs: Sequence[dict[str, Any]] = localisation.records if localisation is not None else []
    records = []
    for m, a in cells:
        rec: dict[str, Any] = {"model": m, "attack": a}
        for tag, i in (("before", BEFORE), ("after", AFTER)):
            rec[f"success_{tag}"] = _get(success.records, m, i, a, "success_rate")
            rec[f"l1_{tag}"] = _get(distances.records, m, i, a, "l1_mean")
            rec[f"iou_{tag}"] = _get(iou.records, m, i, a, "iou_mean_mean")
            rec[f"loc_benign_{tag}"] = _get(loc_recs, m, i, a, "loc_benign_mean")
        records.append(rec)

    def pair(r: dict[str, Any], key: str, fmt=fmt_num) -> str:
        return f"{fmt(r[f'{key}_before'])} → {fmt(r[f'{key}_after'])}"

    header = ["Model", "Attack", "success % RTS → AID", "L1 to benign map", "IoU with benign map", "benign localisation"]
    rows = [[r["model"], attack_name(r["attack"]), pair(r, "success", fmt_pct), pair(r, "l1"), pair(r, "iou"),
             pair(r, "loc_benign") if not math.isnan(r["loc_benign_before"]) else "n/a (no masks)"] for r in records]
    return ReportTable(
        key="aid",
        title="AID: the attack against RTS before → after adversarial interpretation distillation",
        note="Same attacks, same images, RTS's masking model before (rts) and after AID (rts-aid). AID works when "
             "the adversarial map moves away from the benign one (L1 up, IoU down) while the benign localisation "
             "stays. L1 over successful examples, IoU = mean over k; means as in the tables above.",
        columns=list(records[0]),
        records=records,
        blocks=[Block(header, rows)],
    )
