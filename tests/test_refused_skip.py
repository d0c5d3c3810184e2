"""``gates.on_refused``: a refused interpreter stops the run (``stop``, the default) or is skipped for its
model only (``skip``), end to end on the smoke preset (inline engine, 2 steps per stage).

Two ways an interpreter is refused at preparation, both covered:

* its construction raises ``GateError`` (what an RTS masking model below its quality bar does while it
  trains; here CAM's construction is patched to raise the same error) — with ``skip`` it is built once, in
  the prepare task, and no shard task tries again;
* its benign maps are degenerate (CAM patched to constant maps, ``on_degenerate: refuse``).

With ``skip`` the run completes, the store has no rows of the refused (model, interpreter) and all rows
of the others, the ``runs`` row's preflight JSON and the report carry the reason, and a rerun of the same
config recomputes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adv2core.config import load_config
from adv2core.gates import GateError
from adv2core.interpreters.cam import CAM
from adv2core.store import run_sql
from flows.benchmark import run_benchmark

QUALITY = "RTS masking model for resnet-mini missed its quality bar on the test photos (patched)"


def _smoke(root: Path, *extra: str):
    # no PNG plots: these tests read tables and report.md (saves ~1.5 s per report in `make test`)
    return load_config("smoke", overrides=[f"pipeline.results={root}", f"pipeline.reports={root / 'reports'}",
                                           "attacks.step_cap=2", "pipeline.report_plots=false", *extra]).resolve()


@pytest.fixture
def clean_worker():
    from tasks import worker

    worker.clear_caches()
    yield
    worker.clear_caches()


@pytest.fixture
def cam_fails_to_train(monkeypatch, clean_worker):
    """CAM's construction raises the GateError of an RTS masker that missed its quality bar; counts tries."""
    import adv2core.interpreters.registry as registry

    real = registry.build_interpreter
    tries: list[str] = []

    def build(spec, model, **kw):
        if spec.name == "cam":
            tries.append(model.name)
            raise GateError(QUALITY)
        return real(spec, model, **kw)

    monkeypatch.setattr(registry, "build_interpreter", build)
    return tries


@pytest.fixture
def constant_cam(monkeypatch, clean_worker):
    def flat(self, x, target, *, ids=None):  # constant maps: the degeneracy gate refuses CAM
        return torch.zeros(x.shape[0], 1, 8, 8, device=x.device)

    monkeypatch.setattr(CAM, "explain", flat)


def _rows(rc, sql: str) -> list[dict]:
    return run_sql(rc.results_root, sql, [rc.config_hash]).to_pylist()


def _check_skipped(rc, summary, reason_part: str) -> None:
    """Completed, CAM absent from every table of the store, Grad complete, the reason in the run row and report."""
    assert summary["status"] == "completed" and not summary["failures"]
    (ref,) = summary["refused"]
    assert (ref["model"], ref["interpreter"]) == ("resnet-mini", "cam")
    assert reason_part in ref["reason"] and "\n" not in ref["reason"]
    n = rc.bench.data.num_images
    samples = _rows(rc, "SELECT interpreter, attack, count(*) AS n FROM samples WHERE config_hash = ? GROUP BY ALL")
    assert {(r["interpreter"], r["attack"]): r["n"] for r in samples} == {("grad", "pgd"): n, ("grad", "adv2"): n}
    benign = _rows(rc, "SELECT DISTINCT interpreter FROM benign WHERE config_hash = ?")
    assert [r["interpreter"] for r in benign] == ["grad"]
    transfer = _rows(rc, "SELECT source_interpreter AS s, eval_interpreter AS e, count(*) AS n FROM transfer "
                         "WHERE config_hash = ? GROUP BY ALL")
    assert transfer and {(r["s"], r["e"]) for r in transfer} == {("grad", "grad")}
    shards = _rows(rc, "SELECT DISTINCT interpreter FROM shards WHERE config_hash = ?")
    assert "cam" not in {r["interpreter"] for r in shards}
    runs = _rows(rc, "SELECT status, preflight FROM runs WHERE config_hash = ?")
    assert [r["status"] for r in runs] == ["completed"]
    pre = json.loads(runs[0]["preflight"])
    interps = pre["models"]["resnet-mini"]["interpreters"]
    assert interps["cam"]["status"] == "refused" and reason_part in interps["cam"]["reason"]
    assert interps["grad"]["status"] == "ok" and pre["gates"]["on_refused"] == "skip"
    out = Path(summary["report"]["out_dir"])
    line = f"CAM on resnet-mini: refused — {interps['cam']['reason']}"
    assert line in (out / "report.md").read_text()
    success = (out / "table1_success.md").read_text()
    assert line not in success and "CAM on resnet-mini" in success  # named under the table, reason once
    cam_rows = [ln for ln in success.splitlines() if ln.startswith("| resnet-mini | CAM")]
    assert len(cam_rows) == 1 and set(c.strip() for c in cam_rows[0].strip("|").split("|")[2:]) == {"refused"}
    assert any(ln.startswith("| resnet-mini | Grad") and "refused" not in ln for ln in success.splitlines())
    assert "cam" not in (out / "table2_distances.csv").read_text().split("\n", 1)[1]  # no number for it


def test_skip_an_interpreter_whose_training_is_refused(tmp_path, cam_fails_to_train):
    rc = _smoke(tmp_path, "gates.on_refused=skip")
    summary = run_benchmark(rc, engine="inline")
    _check_skipped(rc, summary, "missed its quality bar")
    assert cam_fails_to_train == ["resnet-mini"]  # tried once, at preparation: no shard task retrained it
    assert summary["plan"]["pending_attack"] == 2 * rc.num_shards and summary["plan"]["pending_benign"] == 2

    # resume: the same config again recomputes nothing; the refused interpreter is tried again (and refused)
    again = run_benchmark(rc, engine="inline")
    assert again["status"] == "completed" and again["computed"] == 0 and not again["failures"]
    assert again["plan"]["pending_attack"] == 0 and again["plan"]["pending_transfer"] == 0
    assert cam_fails_to_train == ["resnet-mini"] * 2 and again["refused"][0]["interpreter"] == "cam"


def test_skip_a_degenerate_interpreter(tmp_path, constant_cam):
    rc = _smoke(tmp_path, "gates.on_refused=skip")
    summary = run_benchmark(rc, engine="inline")
    _check_skipped(rc, summary, "interpreter cam on resnet-mini is degenerate")


def test_stop_is_the_default_and_ends_the_run_with_one_line(tmp_path, cam_fails_to_train):
    rc = _smoke(tmp_path)
    assert rc.bench.gates.on_refused == "stop"
    assert _smoke(tmp_path, "gates.on_refused=skip").config_hash == rc.config_hash  # not hashed: resume either way
    with pytest.raises(GateError) as err:
        run_benchmark(rc, engine="inline")
    assert str(err.value) == QUALITY
    assert run_sql(rc.results_root, "SELECT count(*) AS n FROM shards").to_pylist()[0]["n"] == 0
    assert [r["status"] for r in run_sql(rc.results_root, "SELECT status FROM runs").to_pylist()] == ["failed"]


def test_report_never_shows_a_number_for_a_refused_cell():
    """Rows an earlier run stored for a now refused cell: replaced by 'refused' (tables) or dropped (records)."""
    from adv2core.report.refused import apply_refusals, refusals_from_run
    from adv2core.report.rendering import Block, ReportTable

    run = {"preflight": json.dumps({"models": {"m": {"interpreters": {
        "rts": {"status": "refused", "reason": "masker below its bar"}, "cam": {"status": "ok"}}}}})}
    refusals = refusals_from_run(run)
    assert refusals == {("m", "rts"): "masker below its bar"}
    wide = ReportTable("success", "t", "note.", ["model", "interpreter", "v"],
                       [{"model": "m", "interpreter": "rts", "v": 0.5}, {"model": "m", "interpreter": "cam", "v": 0.7}],
                       [Block(["Model", "Interp.", "PGD"], [["m", "CAM", "0.7"], ["m", "RTS", "0.5"]])])
    apply_refusals(wide, refusals)
    assert wide.blocks[0].rows == [["m", "CAM", "0.7"], ["m", "RTS", "refused"]]
    assert [r["interpreter"] for r in wide.records] == ["cam"]
    assert "RTS on m;" in wide.note and "masker below its bar" not in wide.note
    by_attack = ReportTable("iou", "t", "", [], [],
                            [Block(["Model", "Interp.", "Attack", "k=1%"], [["m", "CAM", "PGD", "0.1"]])])
    assert apply_refusals(by_attack, refusals).blocks[0].rows[-1] == ["m", "RTS", "–", "refused"]
    matrix = ReportTable("transfer", "t", "", [], [], [Block(["Source \\ eval", "CAM", "RTS", "n succ."],
                                                             [["CAM", "0.1", "0.2", "4"], ["RTS", "0.3", "0.4", "4"]],
                                                             caption="m / ADV²: L1")])
    assert apply_refusals(matrix, refusals).blocks[0].rows == [["CAM", "0.1", "refused", "4"],
                                                               ["RTS", "refused", "refused", "refused"]]


@pytest.mark.heavy  # ~15-25 s on 2 cores: three runs with the defence stage
def test_defences_run_over_the_kept_interpreters_and_rerun_when_the_refusals_change(tmp_path, cam_fails_to_train,
                                                                                      monkeypatch):
    """With CAM refused, FS still scores Grad's examples (the unit records the refusal); the ensemble, which
    needs two interpreters, is left out. A rerun with the same refusal recomputes nothing; one without it
    rewrites the FS unit (its rows lacked CAM's examples) and adds the ensemble."""
    extra = ["gates.on_refused=skip", "attacks.names=[pgd]", "attacks.step_cap=20", "attacks.overrides.pgd.alpha=0.0078",
             "defences=[fs, ensemble]", "defence_settings.calibration_images=12",
             "defence_settings.fs.combinations=[bit5]"]
    rc = _smoke(tmp_path, *extra)
    summary = run_benchmark(rc, engine="inline")
    assert summary["status"] == "completed" and not summary["failures"]
    assert summary["plan"]["defence_units"] == 1  # fs only: one interpreter left, no ensemble
    det = _rows(rc, "SELECT detector, interpreter, count(*) AS n FROM detections WHERE config_hash = ? "
                    "AND role = 'adversarial' GROUP BY ALL")
    assert det and {(r["detector"], r["interpreter"]) for r in det} == {("fs", "grad")}

    again = run_benchmark(rc, engine="inline")
    assert again["computed"] == 0 and again["plan"]["pending_defence"] == 0

    monkeypatch.undo()  # CAM builds again: nothing refused
    from tasks import worker

    worker.clear_caches()
    third = run_benchmark(rc, engine="inline")
    assert third["status"] == "completed" and not third["failures"] and not third.get("refused")
    assert third["plan"]["pending_defence"] == 2
    det = _rows(rc, "SELECT DISTINCT detector, interpreter FROM detections WHERE config_hash = ? "
                    "AND role = 'adversarial'")
    assert {(r["detector"], r["interpreter"]) for r in det} == {(d, i) for d in ("fs", "ensemble")
                                                                for i in ("grad", "cam")}
