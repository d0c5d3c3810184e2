"""``defences: [aid]`` adds the AID-hardened RTS to the run, and the report compares the two."""

from __future__ import annotations

import math

import pytest

from adv2core.config import load_config
from adv2core.errors import ConfigError
from adv2core.report.aid import aid_table
from adv2core.report.tables import ReportTable


def test_aid_defence_adds_rts_aid_and_keeps_detectors_apart():
    bench = load_config("smoke", None, ["defences=[aid, fs]", "interpreters.names=[cam, rts]"])
    assert bench.interpreters.names == ["cam", "rts", "rts-aid"]
    assert bench.detectors == ["fs"]
    plain = load_config("smoke", None, ["interpreters.names=[cam, rts, rts-aid]"])
    assert bench.resolve().config_hash == plain.resolve().config_hash  # the same run as listing it by hand


def test_aid_defence_needs_rts():
    with pytest.raises((ConfigError, ValueError)) as e:
        load_config("smoke", None, ["defences=[aid]", "interpreters.names=[grad, cam]"])
    assert "rts" in str(e.value) and "\n" not in str(e.value).strip().splitlines()[-1]


def _table(key: str, rows: list[tuple[str, str, str, float]], field: str) -> ReportTable:
    return ReportTable(key=key, title=key, note="", columns=[], blocks=[],
                       records=[{"model": m, "interpreter": i, "attack": a, field: v} for m, i, a, v in rows])


def test_aid_table_pairs_the_same_attack_before_and_after():
    cells = [("m", "rts", "adv2"), ("m", "rts-aid", "adv2"), ("m", "rts", "pgd"), ("m", "cam", "adv2")]
    success = _table("success", [(*c, 0.9 + 0.01 * k) for k, c in enumerate(cells)], "success_rate")
    dist = _table("distances", [(*c, 0.1 * (k + 1)) for k, c in enumerate(cells)], "l1_mean")
    iou = _table("iou", [(*c, 0.5) for c in cells], "iou_mean_mean")
    t = aid_table(success, dist, iou, None)
    assert t is not None and len(t.records) == 1  # pgd has no rts-aid cell, cam is not RTS
    r = t.records[0]
    assert (r["model"], r["attack"]) == ("m", "adv2")
    assert (r["l1_before"], r["l1_after"]) == pytest.approx((0.1, 0.2))
    assert (r["success_before"], r["success_after"]) == pytest.approx((0.90, 0.91))
    assert math.isnan(r["loc_benign_before"]) and "n/a" in t.blocks[0].rows[0][-1]
    assert aid_table(_table("s", [("m", "rts", "adv2", 1.0)], "success_rate"), dist, iou, None) is None
