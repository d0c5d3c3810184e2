"""The flow's preflight stage and population, end to end on the smoke preset (inline engine).

* a deliberately degenerate interpreter (CAM patched to constant maps) stops the run with one line before
  any attack; with ``gates.on_degenerate=mark`` the run completes and every table strikes its cells out;
* ``data.population=correct``: an image the model misclassifies is stored as an ``excluded`` row, is not
  attacked (no arrays, no transfer rows) and the report's population table counts it;
* the ``runs`` row records the measured accuracy and the checkpoint's sha256.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from adv2core.config import load_config
from adv2core.gates import GateError
from adv2core.interpreters.cam import CAM
from adv2core.store import run_sql
from adv2core.store.arrays import read_arrays
from flows.benchmark import run_benchmark


def _smoke(root, *extra):
    # no PNG plots: these tests read tables (saves ~1.5 s per report in `make test`)
    return load_config("smoke", overrides=[f"pipeline.results={root}", f"pipeline.reports={root / 'reports'}",
                                           "attacks.step_cap=2", "pipeline.report_plots=false", *extra]).resolve()


@pytest.fixture
def constant_cam(monkeypatch):
    def flat(self, x, target, *, ids=None):  # CAM's evaluation maps, constant: the gate must catch them
        return torch.zeros(x.shape[0], 1, 8, 8, device=x.device)

    monkeypatch.setattr(CAM, "explain", flat)
    from tasks import worker

    worker.clear_caches()
    yield
    worker.clear_caches()


def test_degenerate_interpreter_stops_the_run_before_any_attack(tmp_path, constant_cam):
    rc = _smoke(tmp_path)
    with pytest.raises(GateError) as err:
        run_benchmark(rc, engine="inline")
    msg = str(err.value)
    assert "\n" not in msg and "interpreter cam on resnet-mini is degenerate" in msg and "near-constant" in msg
    assert run_sql(rc.results_root, "SELECT count(*) AS n FROM shards").to_pylist()[0]["n"] == 0
    run = run_sql(rc.results_root, "SELECT status FROM runs").to_pylist()
    assert [r["status"] for r in run] == ["failed"]


def test_marked_cells_are_struck_out_in_every_table(tmp_path, constant_cam):
    rc = _smoke(tmp_path, "gates.on_degenerate=mark")
    summary = run_benchmark(rc, engine="inline")
    assert summary["status"] == "completed"
    pre = json.loads(run_sql(rc.results_root, "SELECT preflight FROM runs").to_pylist()[0]["preflight"])
    cam = pre["models"]["resnet-mini"]["interpreters"]["cam"]
    assert cam["status"] == "degenerate" and "near-constant" in cam["reason"]
    assert pre["models"]["resnet-mini"]["interpreters"]["grad"]["status"] == "ok"
    out = summary["report"]["out_dir"]
    from pathlib import Path

    success = (Path(out) / "table1_success.md").read_text()
    cam_rows = [ln for ln in success.splitlines() if "| CAM" in ln]
    grad_rows = [ln for ln in success.splitlines() if "| Grad" in ln]
    assert cam_rows and all("(degenerate)" in ln and "~~" in ln for ln in cam_rows)
    assert grad_rows and not any("~~" in ln for ln in grad_rows)
    assert "near-constant" in success  # the reason is in the table's note
    assert (Path(out) / "report.md").is_file() and not list(Path(out).glob("*.png"))  # report_plots=false
    csv = (Path(out) / "table2_distances.csv").read_text().splitlines()
    col = csv[0].split(",").index("degenerate")
    for line in csv[1:]:
        cells = line.split(",")
        assert bool(cells[col]) == (cells[1] == "cam"), line


def test_misclassified_images_are_excluded_not_attacked(tmp_path, monkeypatch):
    """Flip the prediction of about a third of the images (chosen by their pixels): 'misclassified'."""
    import adv2core.gates as gates

    real = gates.predictions

    def patched(model, images, batch_size=256):
        pred = real(model, images, batch_size)
        # deterministic: an image's own pixels decide (sum of its first row), independent of batching
        key = images[:, :, 0, :].flatten(1).sum(1)
        flip = (key * 1000).long() % 3 == 1  # 3 of the 8 smoke images
        return torch.where(flip, (pred + 1) % 8, pred)

    monkeypatch.setattr(gates, "predictions", patched)
    rc = _smoke(tmp_path, "gates.accuracy_floor=0.0")  # a third of the images now count as misclassified
    summary = run_benchmark(rc, engine="inline")
    assert summary["status"] == "completed"
    rows = run_sql(rc.results_root, "SELECT model, interpreter, attack, image_id, status, success, l1 FROM samples"
                   ).to_pylist()
    excluded = {r["image_id"] for r in rows if r["status"] == "excluded"}
    attacked = {r["image_id"] for r in rows if r["status"] in ("ok", "failed")}
    assert excluded and attacked and not excluded & attacked
    assert all(r["success"] is None and r["l1"] is None for r in rows if r["status"] == "excluded")
    # every cell excludes the same images (a property of the model, not of the interpreter or attack)
    per_cell = {}
    for r in rows:
        if r["status"] == "excluded":
            per_cell.setdefault((r["interpreter"], r["attack"]), set()).add(r["image_id"])
    assert len(per_cell) == 4 and all(v == excluded for v in per_cell.values())
    transfer_ids = {r["image_id"] for r in run_sql(rc.results_root, "SELECT DISTINCT image_id FROM transfer").to_pylist()}
    assert transfer_ids == attacked
    for f in (tmp_path).rglob("*.npz"):
        assert not set(map(str, read_arrays(f)["image_id"])) & excluded
    pop = (tmp_path / "reports").rglob("table0_population.csv")
    text = next(pop).read_text().splitlines()
    header, first = text[0].split(","), text[1].split(",")
    rec = dict(zip(header, first))
    assert int(rec["drawn"]) == rc.bench.data.num_images
    assert int(rec["excluded"]) == len(excluded) and int(rec["attacked"]) == len(attacked)


def test_runs_row_records_accuracy_and_checkpoint_sha256(tmp_path):
    from adv2core.models.registry import checkpoint_path
    from adv2core.models.training import TrainConfig
    from tasks import worker

    worker.clear_caches()
    rc = _smoke(tmp_path)
    run_benchmark(rc, engine="inline")
    pre = json.loads(run_sql(rc.results_root, "SELECT preflight FROM runs").to_pylist()[0]["preflight"])
    m = pre["models"]["resnet-mini"]
    path = checkpoint_path("resnet-mini", worker.embedded_data_cfg(rc), TrainConfig(**rc.bench.models.train))
    assert m["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m["accuracy"] >= pre["gates"]["accuracy_floor"] and m["accuracy_n"] > 0
    assert set(m["interpreters"]) == {"grad", "cam"}
