"""Reports: a synthetic results store written through the store API, aggregates checked against numpy.

The rows are generated here with known success patterns and metric values, so every table cell has an
independent expectation (success over all attacked rows, metrics over successful rows only).
"""

from __future__ import annotations

import csv
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch

from adv2core.errors import Adv2Error
from adv2core.metrics.stats import bootstrap_ci
from adv2core.report import ReportError, artifact_tables, build_report, headline_markdown
from adv2core.store import ResultStore, ShardUnit, table_from_rows
from adv2core.store.schemas import IOU_COLUMNS

CFG_A, CFG_B, CFG_EMPTY = "cfga0001", "cfgb0002", "cfge0003"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
N_IMAGES, N_SHARDS = 8, 2
SHAPE = (3, 8, 8)


def run_row(run_id: str, config_hash: str, minutes: int) -> dict:
    return {
        "run_id": run_id, "config_hash": config_hash, "preset": "smoke", "config_json": "{}", "git_sha": "abc",
        "git_dirty": False, "package_versions": "{}", "device": "cpu", "seed": 0,
        "started_at": T0 + timedelta(minutes=minutes), "ended_at": T0 + timedelta(minutes=minutes + 1),
        "status": "completed", "hostname": "test",
    }


def image_ids() -> list[str]:
    return [f"img{n:03d}" for n in range(N_IMAGES)]


def images_for(ids) -> torch.Tensor:
    """Deterministic clean images in [0.2, 0.8] (so small deltas never leave [0, 1])."""
    out = []
    for i in ids:
        g = np.random.default_rng(int(i[3:]))
        out.append(g.uniform(0.2, 0.8, SHAPE).astype(np.float32))
    return torch.from_numpy(np.stack(out))


def make_cell(rng: np.random.Generator, model: str, interp: str, attack: str, config_hash: str, run_id: str, *,
              all_fail: bool = False, with_loc: bool = True, n_error: int = 0, n_failed: int = 0) -> list[dict]:
    """Rows for one (model, interp, attack): successful rows get small L1, unsuccessful ones large L1,
    so the mean over successful rows differs from the mean over all rows."""
    rows = []
    for n, image_id in enumerate(image_ids()):
        base = {
            "run_id": run_id, "config_hash": config_hash, "code_version": "t", "seed": 0, "dataset": "embedded",
            "image_id": image_id, "shard": n % N_SHARDS, "num_shards": N_SHARDS, "model": model,
            "interpreter": interp, "attack": attack,
        }
        if n < n_error:
            rows.append({**base, "status": "error", "error": "CUDA out of memory\ntraceback..."})
            continue
        success = False if (all_fail or n < n_error + n_failed) else bool(rng.random() < 0.7)
        l1 = float(rng.uniform(0.01, 0.1) if success else rng.uniform(0.3, 0.6))
        curve = np.sort(rng.uniform(0.1, 0.9, len(IOU_COLUMNS)))
        row = {
            **base, "status": "failed" if n < n_error + n_failed else "ok", "success": success,
            "confidence": float(rng.uniform(0.5, 1.0)), "l1": l1, "l2": l1 * 1.5 + 0.01,
            **{c: float(v) for c, v in zip(IOU_COLUMNS, curve)}, "iou_mean": float(curve.mean()),
        }
        if with_loc:
            row["loc_iou_benign"] = float(rng.uniform(0.4, 0.9))
            row["loc_iou_adv"] = float(rng.uniform(0.0, 0.5))
        rows.append(row)
    return rows


def write_cell(store: ResultStore, rows: list[dict], config_hash: str, model: str, interp: str, attack: str,
               arrays: bool = False) -> None:
    for shard in range(N_SHARDS):
        part = [r for r in rows if r["shard"] == shard]
        arr = None
        if arrays:
            ids = [r["image_id"] for r in part]
            g = np.random.default_rng(shard + len(attack))
            arr = {
                "image_ids": np.array(ids),
                "delta": g.integers(-3, 4, (len(ids), *SHAPE)).astype(np.int16),
                "benign_maps": g.random((len(ids), 1, 4, 4)).astype(np.float16),
                "adv_maps": g.random((len(ids), 1, 4, 4)).astype(np.float16),
            }
        unit = ShardUnit(config_hash, "attack", model, interp, attack, shard, N_SHARDS)
        store.write_shard(unit, {"samples": table_from_rows("samples", part)}, arr)


def transfer_rows(source_rows: list[dict], eval_interp: str, rng: np.random.Generator,
                  diagonal_from: list[dict] | None = None) -> list[dict]:
    """Cross-evaluation rows of the examples in ``source_rows`` under ``eval_interp``."""
    out = []
    for n, r in enumerate(source_rows):
        if r["status"] == "error":
            continue
        same = diagonal_from is not None
        out.append({
            k: r[k] for k in ("run_id", "config_hash", "code_version", "seed", "dataset", "image_id", "shard",
                              "num_shards", "model", "attack")
        } | {
            "source_interpreter": r["interpreter"], "eval_interpreter": eval_interp, "success": r["success"],
            "l1": diagonal_from[n]["l1"] if same else float(rng.uniform(0.2, 0.5)),
            "iou_mean": diagonal_from[n]["iou_mean"] if same else float(rng.uniform(0.1, 0.4)),
        })
    return out


def write_transfer(store: ResultStore, rows: list[dict], config_hash: str, model: str, attack: str, source: str):
    for shard in range(N_SHARDS):
        part = [r for r in rows if r["shard"] == shard]
        unit = ShardUnit(config_hash, "transfer", model, source, attack, shard, N_SHARDS)
        store.write_shard(unit, {"transfer": table_from_rows("transfer", part)})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    """Store with run-a (cfg A: 2 models x 2 interpreters x PGD/ADV², transfer), run-b (cfg B, later,
    no localisation, PGD only, cross-evaluated from two sources) and run-empty (no rows). Returns the rows written, by cell."""
    root = tmp_path_factory.mktemp("store") / "results"
    store = ResultStore(root)
    rng = np.random.default_rng(1234)
    cells: dict[tuple[str, str, str, str], list[dict]] = {}
    for model in ("resnet-mini", "densenet-mini"):
        for interp in ("grad", "cam"):
            for attack in ("pgd", "adv2"):
                if model == "densenet-mini" and interp == "cam" and attack == "pgd":
                    continue  # a missing cell
                kw = {"with_loc": model == "resnet-mini"}
                if (model, interp, attack) == ("resnet-mini", "grad", "adv2"):
                    kw.update(n_error=1, n_failed=1)
                if (model, interp, attack) == ("densenet-mini", "cam", "adv2"):
                    kw.update(all_fail=True)  # an empty cell: no successful image
                rows = make_cell(rng, model, interp, attack, CFG_A, "run-a", **kw)
                cells[(CFG_A, model, interp, attack)] = rows
                write_cell(store, rows, CFG_A, model, interp, attack,
                           arrays=(model, interp) == ("resnet-mini", "grad"))
    transfer: dict[tuple[str, str, str, str], list[dict]] = {}
    for source in ("grad", "cam"):
        rows = []
        for ev in ("grad", "cam"):
            src = cells[(CFG_A, "resnet-mini", source, "adv2")]
            diag = cells[(CFG_A, "resnet-mini", ev, "adv2")] if ev == source else None
            t = transfer_rows(src, ev, rng, diagonal_from=diag)
            transfer[("resnet-mini", "adv2", source, ev)] = t
            rows += t
        write_transfer(store, rows, CFG_A, "resnet-mini", "adv2", source)
    # densenet: only the off-diagonal grad -> cam, so the (grad, grad) entry falls back to samples
    t = transfer_rows(cells[(CFG_A, "densenet-mini", "grad", "adv2")], "cam", rng)
    transfer[("densenet-mini", "adv2", "grad", "cam")] = t
    write_transfer(store, t, CFG_A, "densenet-mini", "adv2", "grad")

    # PGD needs no interpreter: the pipeline cross-evaluates the same examples from every source, so the
    # transfer rows of the two sources are identical (run-a: shown only as ADV²'s reference row)
    for ref_cfg in (CFG_A,):
        pgd = [dict(r, interpreter="grad") for r in cells[(ref_cfg, "resnet-mini", "grad", "pgd")]]
        t = transfer_rows(pgd, "cam", rng)
        for source in ("grad", "cam"):
            write_transfer(store, [dict(r, source_interpreter=source) for r in t], ref_cfg, "resnet-mini", "pgd", source)

    rows = make_cell(rng, "resnet-mini", "grad", "pgd", CFG_B, "run-b", with_loc=False)
    cells[(CFG_B, "resnet-mini", "grad", "pgd")] = rows
    write_cell(store, rows, CFG_B, "resnet-mini", "grad", "pgd")
    t = transfer_rows(rows, "grad", rng, diagonal_from=rows)  # run-b: PGD alone, cross-evaluated from 2 sources
    transfer[("resnet-mini", "pgd", "none", "grad")] = t
    for source in ("grad", "cam"):
        write_transfer(store, [dict(r, source_interpreter=source) for r in t], CFG_B, "resnet-mini", "pgd", source)

    store.write_run(run_row("run-a", CFG_A, 0))
    store.write_run(run_row("run-empty", CFG_EMPTY, 5))
    store.write_run(run_row("run-b", CFG_B, 10))
    return {"root": root, "cells": cells, "transfer": transfer}


@pytest.fixture(scope="module")
def report_a(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-a")
    return build_report(synthetic["root"], "run-a", out, load_images=images_for)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def num(s: str) -> float:
    return math.nan if s == "" else float(s)


def by_cell(rows: list[dict[str, str]]) -> dict[tuple[str, str, str], dict[str, str]]:
    return {(r["model"], r["interpreter"], r["attack"]): r for r in rows}


def f32(values) -> np.ndarray:
    """Values as stored (float32), then float64 for the mean."""
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def attacked(rows):
    return [r for r in rows if r.get("success") is not None]


def successful(rows):
    return [r for r in rows if r.get("success")]


# ---------------------------------------------------------------------------- tables 1 and 2
def test_success_and_distance_tables_match_numpy(synthetic, report_a):
    t1 = by_cell(read_csv(report_a.tables["success"].files["csv"]))
    t2 = by_cell(read_csv(report_a.tables["distances"].files["csv"]))
    cells = {k[1:]: v for k, v in synthetic["cells"].items() if k[0] == CFG_A}
    assert set(t1) == set(cells) == set(t2)
    differs = 0
    for key, rows in cells.items():
        att, succ = attacked(rows), successful(rows)
        r1, r2 = t1[key], t2[key]
        assert int(r1["n_rows"]) == len(rows)
        assert int(r1["n_attacked"]) == len(att)
        assert int(r1["n_success"]) == len(succ)
        assert num(r1["success_rate"]) == pytest.approx(len(succ) / len(att))
        assert float(r1["success_rate_lo"]) <= num(r1["success_rate"]) <= float(r1["success_rate_hi"])
        if not succ:
            assert r1["confidence_mean"] == "" and r2["l1_mean"] == "" and r2["l1_lo"] == ""
            continue
        l1 = f32([r["l1"] for r in succ])
        assert num(r1["confidence_mean"]) == pytest.approx(f32([r["confidence"] for r in succ]).mean(), rel=1e-9)
        assert num(r2["l1_mean"]) == pytest.approx(l1.mean(), rel=1e-9)
        assert num(r2["l2_mean"]) == pytest.approx(f32([r["l2"] for r in succ]).mean(), rel=1e-9)
        assert int(r2["l1_n"]) == len(succ)
        _, lo, hi = bootstrap_ci(l1)
        assert (num(r2["l1_lo"]), num(r2["l1_hi"])) == pytest.approx((lo, hi), rel=1e-9)
        if len(succ) < len(att):
            differs += abs(l1.mean() - f32([r["l1"] for r in att]).mean()) > 0.1
    assert differs >= 3  # the data really separates "over successful" from "over all"


def test_error_and_failed_rows(synthetic, report_a):
    t1 = by_cell(read_csv(report_a.tables["success"].files["csv"]))
    t6 = by_cell(read_csv(report_a.tables["status"].files["csv"]))
    key = ("resnet-mini", "grad", "adv2")
    assert (t6[key]["n_rows"], t6[key]["ok"], t6[key]["failed"], t6[key]["error"]) == ("8", "6", "1", "1")
    assert t6[key]["top_error"] == "CUDA out of memory (x1)"  # first line only
    assert t1[key]["n_attacked"] == "7"  # the error row is not an attacked image; the failed one is
    other = t6[("resnet-mini", "cam", "pgd")]
    assert (other["ok"], other["failed"], other["error"], other["top_error"]) == ("8", "0", "0", "")


def test_markdown_formats_and_empty_cells(report_a):
    md = report_a.tables["success"].markdown()
    lines = [l for l in md.splitlines() if l.startswith("| densenet-mini | CAM |")]
    assert len(lines) == 1
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    # columns: model, interp, PGD succ, ADV2 succ, PGD conf, ADV2 conf, n; PGD missing, ADV2 all failed
    assert cells[2] == "–" and cells[4] == "–" and cells[5] == "–"
    assert re.fullmatch(r"0\.0 \[0\.0, \d+\.\d\]", cells[3])
    assert re.search(r"\| \d+\.\d \[\d+\.\d, \d+\.\d\] \|", md)  # percentages, one decimal
    assert re.search(r"\| 0\.\d{3} \[0\.\d{3}, 0\.\d{3}\] \|", report_a.tables["distances"].markdown())
    tex = report_a.tables["success"].files["tex"].read_text()
    assert "ADV$^2$" in tex and r"\begin{tabular}" in tex and "densenet-mini" in tex


# ---------------------------------------------------------------------------- table 3
def test_iou_table(synthetic, report_a):
    t3 = by_cell(read_csv(report_a.tables["iou"].files["csv"]))
    for key, rows in ((k[1:], v) for k, v in synthetic["cells"].items() if k[0] == CFG_A):
        succ = successful(rows)
        for c in (*IOU_COLUMNS, "iou_mean"):
            got = num(t3[key][f"{c}_mean"])
            if not succ:
                assert math.isnan(got)
            else:
                assert got == pytest.approx(f32([r[c] for r in succ]).mean(), rel=1e-9)


# ---------------------------------------------------------------------------- table 4
def test_transfer_matrix(synthetic, report_a):
    rows = read_csv(report_a.tables["transfer"].files["csv"])
    t2 = by_cell(read_csv(report_a.tables["distances"].files["csv"]))
    res = [r for r in rows if r["model"] == "resnet-mini" and r["attack"] == "adv2"]
    attack_rows = {(r["source"], r["eval_interpreter"]): r for r in res if r["kind"] == "attack"}
    ref_rows = {r["eval_interpreter"]: r for r in res if r["kind"] == "reference"}
    assert set(attack_rows) == {(i, j) for i in ("grad", "cam") for j in ("grad", "cam")}  # 2 x 2
    assert set(ref_rows) == {"grad", "cam"} and all(r["source"] == "pgd" for r in ref_rows.values())
    for i in ("grad", "cam"):
        # diagonal = white-box ADV^2 of table 2; PGD row = PGD of table 2
        assert num(attack_rows[(i, i)]["l1_mean"]) == pytest.approx(num(t2[("resnet-mini", i, "adv2")]["l1_mean"]))
        assert num(ref_rows[i]["l1_mean"]) == pytest.approx(num(t2[("resnet-mini", i, "pgd")]["l1_mean"]))
    for (i, j), rec in attack_rows.items():
        trows = [r for r in synthetic["transfer"][("resnet-mini", "adv2", i, j)] if r["success"]]
        assert int(rec["n_success"]) == len(trows)
        assert num(rec["l1_mean"]) == pytest.approx(f32([r["l1"] for r in trows]).mean(), rel=1e-9)
        assert num(rec["iou_mean_mean"]) == pytest.approx(f32([r["iou_mean"] for r in trows]).mean(), rel=1e-9)
    # densenet: the missing diagonal comes from the samples table; the PGD row lacks CAM (no such cell)
    den = {(r["kind"], r["source"], r["eval_interpreter"]): r for r in rows if r["model"] == "densenet-mini"}
    assert den[("attack", "grad", "grad")]["origin"] == "samples"
    assert num(den[("attack", "grad", "grad")]["l1_mean"]) == pytest.approx(num(t2[("densenet-mini", "grad", "adv2")]["l1_mean"]))
    assert den[("attack", "grad", "cam")]["origin"] == "transfer"
    assert ("reference", "pgd", "cam") not in den and ("reference", "pgd", "grad") in den
    # markdown: one L1 and one IoU block per (model, attack); 3 rows (PGD ref., Grad, CAM) for resnet
    blocks = report_a.tables["transfer"].blocks
    assert [b.caption for b in blocks] == [
        "densenet-mini / ADV²: L1", "densenet-mini / ADV²: IoU (mean over k)",
        "resnet-mini / ADV²: L1", "resnet-mini / ADV²: IoU (mean over k)",
    ]
    assert [r[0] for r in blocks[2].rows] == ["PGD (ref.)", "Grad", "CAM"]
    assert blocks[2].header[:3] == ["Source \\ eval", "Grad", "CAM"]


def test_interpreter_free_attack_is_one_transfer_row(synthetic, report_a, tmp_path):
    """PGD's examples do not depend on an interpreter: its cross-evaluation from several sources is one row
    ("PGD (no interpreter)", source 'none'), and no block of its own where it is ADV²'s reference row."""
    rows = read_csv(report_a.tables["transfer"].files["csv"])
    assert not [r for r in rows if r["attack"] == "pgd"]  # run-a: only ADV²'s "PGD (ref.)" row shows it
    assert [r.caption for r in report_a.tables["transfer"].blocks if "PGD" in r.caption] == []
    res = build_report(synthetic["root"], "run-b", tmp_path / "b", make_plots=False)
    block = res.tables["transfer"].blocks[0]
    assert block.caption == "resnet-mini / PGD: L1"
    assert [r[0] for r in block.rows] == ["PGD (no interpreter)"] and block.header == ["Source \\ eval", "Grad", "n succ."]
    recs = [r for r in read_csv(res.tables["transfer"].files["csv"]) if r["kind"] == "attack"]
    assert {(r["source"], r["eval_interpreter"]) for r in recs} == {("none", "grad")}
    succ = [r for r in synthetic["transfer"][("resnet-mini", "pgd", "none", "grad")] if r["success"]]
    l1 = [r for r in recs][0]
    assert int(l1["n_success"]) == len(succ)
    assert num(l1["l1_mean"]) == pytest.approx(f32([r["l1"] for r in succ]).mean(), rel=1e-9)


# ---------------------------------------------------------------------------- table 5
def test_localisation_table(synthetic, report_a):
    t5 = by_cell(read_csv(report_a.tables["localisation"].files["csv"]))
    assert {k[0] for k in t5} == {"resnet-mini"}  # densenet rows have no localisation values
    for key, rec in t5.items():
        rows = synthetic["cells"][(CFG_A, *key)]
        assert num(rec["loc_benign_mean"]) == pytest.approx(f32([r["loc_iou_benign"] for r in attacked(rows)]).mean())
        assert num(rec["loc_adv_mean"]) == pytest.approx(f32([r["loc_iou_adv"] for r in successful(rows)]).mean())


# ---------------------------------------------------------------------------- files, plots, determinism
def test_files_written(report_a, tmp_path, synthetic):
    out = report_a.out_dir
    for stem in ("table1_success", "table2_distances", "table3_iou_vs_k", "table4_transfer",
                 "table5_localisation", "table6_status"):
        for ext in ("md", "csv", "tex"):
            assert (out / f"{stem}.{ext}").is_file()
    for png in ("iou_vs_k", "success_l1", "transfer_resnet-mini_adv2", "transfer_densenet-mini_adv2",
                "samples_resnet-mini_grad"):
        assert (out / f"{png}.png").stat().st_size > 1000
        assert png in report_a.plots
    assert not (out / "samples_resnet-mini_cam.png").exists()  # no arrays for that cell
    assert set(report_a.paths) == {p for p in out.iterdir()}
    assert "table1_success.csv" in report_a.report_path.read_text()
    # same data, same bytes (tables, report.md and PNGs)
    again = build_report(synthetic["root"], "run-a", tmp_path / "again", load_images=images_for)
    assert sorted(p.name for p in again.paths) == sorted(p.name for p in report_a.paths)
    for p in report_a.paths:
        assert (tmp_path / "again" / p.name).read_bytes() == p.read_bytes(), p.name


def test_headline_and_artifacts(report_a):
    head = headline_markdown(report_a)
    assert "Attack success rate" in head and "Map distance" in head
    assert "resnet-mini / ADV²: L1" in head and "IoU (mean over k)**" not in head
    arts = artifact_tables(report_a)
    assert all(re.fullmatch(r"[a-z0-9-]+", k) for k in arts)
    assert {"adv2-success", "adv2-distances", "adv2-transfer-l1", "adv2-transfer-iou", "adv2-status"} <= set(arts)
    assert len(arts["adv2-success"]) == 4  # model x interpreter rows
    assert {"Model", "Interp."} <= set(arts["adv2-success"][0])
    assert len(arts["adv2-transfer-l1"]) == 3 + 2  # resnet: PGD + 2 sources; densenet: PGD + 1 source


# ---------------------------------------------------------------------------- run resolution
def test_latest_is_the_most_recent_run_and_only_its_config(synthetic, tmp_path):
    res = build_report(synthetic["root"], "latest", tmp_path / "b", make_plots=False)
    assert res.run_id == "run-b" and res.config_hash == CFG_B
    t1 = read_csv(res.tables["success"].files["csv"])
    assert [(r["model"], r["interpreter"], r["attack"]) for r in t1] == [("resnet-mini", "grad", "pgd")]
    rows = synthetic["cells"][(CFG_B, "resnet-mini", "grad", "pgd")]
    assert float(t1[0]["success_rate"]) == pytest.approx(len(successful(rows)) / len(rows))
    assert "localisation" not in res.tables and not (tmp_path / "b" / "table5_localisation.csv").exists()
    assert any("localisation" in s for s in res.skipped)
    # run-b's only transfer rows are PGD's (one row per block, see test_interpreter_free_attack_is_one_transfer_row)
    assert [b.caption for b in res.tables["transfer"].blocks] == ["resnet-mini / PGD: L1", "resnet-mini / PGD: IoU (mean over k)"]


def test_unknown_run_id_is_a_one_line_error(synthetic, tmp_path):
    with pytest.raises(ReportError) as exc:
        build_report(synthetic["root"], "nope", tmp_path / "x")
    assert isinstance(exc.value, Adv2Error)
    msg = str(exc.value)
    assert "\n" not in msg and "'nope'" in msg and "run-b" in msg
    assert not (tmp_path / "x").exists()
    empty_root = tmp_path / "empty"
    empty_root.mkdir()
    with pytest.raises(ReportError, match="no runs"):
        build_report(empty_root, "latest", tmp_path / "y")


def test_run_without_rows_and_default_out_dir(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("ADV2_DATA", str(tmp_path / "data"))
    res = build_report(synthetic["root"], "run-empty", make_plots=False)
    assert res.out_dir == (tmp_path / "data" / "reports" / "run-empty").resolve()
    assert all(t.empty for t in res.tables.values())
    assert read_csv(res.tables["success"].files["csv"]) == []
    assert "_(no data)_" in res.tables["success"].files["md"].read_text()
    assert res.report_path.is_file()
    assert artifact_tables(res)["adv2-success"] == []


# ---------------------------------------------------------------------------- one sort per cell
def _lists_per_column(cols) -> str:
    """The report's earlier list SQL, kept as the reference: one ordered aggregate per column."""
    pairs = [(c, c) if isinstance(c, str) else c for c in cols]
    return ",\n  ".join(f"list({c}::DOUBLE ORDER BY image_id) FILTER (WHERE success IS NOT NULL) AS {a}"
                        for c, a in pairs)


def _same(a, b) -> bool:
    """Equal values, NaN equal to NaN, lists element by element (order matters)."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def test_single_sort_lists_equal_per_column_lists(synthetic, monkeypatch):
    """The list SQL (one ordered struct aggregate per cell) gives the same rows, element for element,
    as one ordered aggregate per column, and the tables built on it the same records."""
    from adv2core.report import cells as C
    from adv2core.report import tables as T
    from adv2core.store.query import connect

    con = connect(synthetic["root"])
    try:
        cols = ["success", *IOU_COLUMNS, "iou_mean", "l1", "l2", ("loc_iou_benign", "loc_benign")]
        new, old = (f"SELECT model, interpreter, attack, {fn(cols)} FROM samples WHERE config_hash = ? "
                    f"GROUP BY ALL ORDER BY ALL" for fn in (C._lists, _lists_per_column))
        got, ref = (con.execute(q, [CFG_A]).fetchall() for q in (new, old))
        assert len(got) == len(ref) == 7
        assert all(_same(list(g), list(r)) for g, r in zip(got, ref)), (got, ref)
        # the stored order is by shard (img000, img002, ..., img001, ...): the lists must be by image
        succ_col = [d[0] for d in con.execute(new, [CFG_A]).description].index("success")
        assert any(r[succ_col] != sorted(r[succ_col]) for r in got)  # not trivially sorted values

        builders = [T.success_table, T.distance_table, T.iou_table, T.transfer_table, T.localisation_table]
        after = [b(con, CFG_A).records for b in builders]
        for name, cols_q in (("_LOC_QUERY", ["success", ("loc_iou_benign", "loc_benign"), ("loc_iou_adv", "loc_adv")]),
                             ("_TRANSFER_QUERY", ["success", "l1", "iou_mean"])):
            q = getattr(T, name)
            assert C._lists(cols_q) in q
            monkeypatch.setattr(T, name, q.replace(C._lists(cols_q), _lists_per_column(cols_q)))
        monkeypatch.setattr(C, "_lists", _lists_per_column)  # _cells_query builds its SQL at call time
        assert "list_transform" not in T._LOC_QUERY + T._TRANSFER_QUERY + C._cells_query(["l1"])
        before = [b(con, CFG_A).records for b in builders]
    finally:
        con.close()
    for a, b in zip(after, before):
        assert len(a) == len(b) > 0
        for ra, rb in zip(a, b):
            assert ra.keys() == rb.keys()
            assert all(_same(ra[k], rb[k]) for k in ra), (ra, rb)


def test_provenance_says_when_the_report_is_its_own_runs_last_stage():
    """A run's report is written before the run's status is recorded: it says so instead of a bare
    `running` / `ended: -`; a finished run's report shows its status and end time as stored."""
    from types import SimpleNamespace

    from adv2core.report.build import _provenance

    base = {"git_sha": "abc", "device": "cpu", "seed": 0, "started_at": "t0", "config_json": '{"preset": "quick"}'}
    live = _provenance(SimpleNamespace(run_id="r1", config_hash="h", run={**base, "status": "running", "ended_at": None}))
    assert "(running: this report is its last stage)" in live and "ended: after this report" in live
    done = _provenance(SimpleNamespace(run_id="r1", config_hash="h", run={**base, "status": "completed", "ended_at": "t1"}))
    assert "(completed)" in done and "ended: t1" in done and "last stage" not in done


def test_provenance_names_the_settings_that_depart_from_the_presets():
    """A step-capped or overridden run says so in its report (from its stored config alone), naming the settings
    and the preset values; a run of the presets as they are gets no such line."""
    from types import SimpleNamespace

    from adv2core.config import load_config
    from adv2core.config.resolve import preset_departures
    from adv2core.report.build import _provenance

    plain = load_config("quick").resolve()
    assert preset_departures(plain.hashed()) == []
    capped = load_config("quick", overrides=["attacks.step_cap=5", "attacks.overrides.pgd.eps=0.03"]).resolve()
    deps = preset_departures(capped.hashed())
    assert "attacks.pgd.steps 5 (preset quick: 40)" in deps and "attacks.pgd.eps 0.03 (preset quick: 0.0627)" in deps
    assert "attacks.adv2.cam.stage1_steps 5 (preset quick: 40)" in deps
    assert not [d for d in deps if d.startswith("interpreters.")]  # the cap here is the attacks section's only

    def provenance(rc):
        run = {"git_sha": "abc", "device": "cpu", "seed": 0, "started_at": "t0", "status": "completed", "ended_at": "t1",
               "preset": "quick", "config_json": rc.canonical_json()}
        return _provenance(SimpleNamespace(run_id="r1", config_hash=rc.config_hash, run=run))

    line = provenance(capped).splitlines()[-1]
    assert line.startswith(f"- **departs from its attack / interpreter presets in {len(deps)} settings**") and f"`{deps[0]}`" in line
    assert f"and {len(deps) - 6} more" in line
    assert "departs from" not in provenance(plain)
