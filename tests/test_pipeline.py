"""The pipeline glue, run inline (no Prefect server): counts, provenance, resume, arrays, budgets.

The smoke benchmark is run once per module into a temporary results root; the checks below compare
what the store holds with independent computations (counts from the config, git from ``git``,
success re-decided from the stored perturbation with the model).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from adv2core.config import load_config
from adv2core.errors import Adv2Error, ConfigError
from adv2core.store import ResultStore, ShardUnit, run_sql
from adv2core.store.arrays import apply_perturbation, read_arrays
from adv2core.store.layout import arrays_path, manifest_path
from flows.benchmark import BenchmarkFailed, run_benchmark
from tasks.common import is_transient, retry_transient

REPO = Path(__file__).resolve().parents[1]


def _smoke(root: Path, *extra: str):
    # no PNG plots: these tests check the plumbing; the report's plots are tested in test_report.py and
    # test_defences_stage.py (saves ~1.5 s per report in `make test`)
    return load_config("smoke", overrides=[f"pipeline.results={root}", f"pipeline.reports={root / 'reports'}",
                                           "pipeline.report_plots=false", *extra]).resolve()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke preset (2 interpreters x 2 attacks x 2 shards + cross-evaluation), 2 steps per stage:
    these tests check the plumbing, not the attacks."""
    root = tmp_path_factory.mktemp("results")
    rc = _smoke(root, "attacks.step_cap=2")
    summary = run_benchmark(rc, engine="inline")
    return rc, root, summary


def _expected(rc):
    b = rc.bench
    m, i, a, s = len(b.models.names), len(b.interpreters.names), len(b.attacks.names), rc.num_shards
    x = len(rc.cross_eval_attacks)
    f = sum(1 for name in b.attacks.names if name in ("pgd", "stadv"))  # interpreter-free: examples once
    n = b.data.num_images
    return {
        "samples": m * i * a * n,
        "examples": m * f * n,
        "transfer": m * x * i * i * n,  # every source (interp, attack) x every evaluation interpreter
        "examples_units": m * f * s,
        "benign_units": m * i * s,
        "attack_units": m * i * a * s,
        "transfer_units": m * x * i * s,
        "tasks": m * i * s + m * f * s + m * i * a * s + (m * s if x else 0),
    }


def test_smoke_rows_are_exact_and_carry_their_identity(smoke):
    rc, root, summary = smoke
    exp = _expected(rc)
    assert summary["status"] == "completed" and not summary["failures"]
    assert summary["computed"] == exp["tasks"] and summary["skipped"] == 0
    h = rc.config_hash
    n, keys = run_sql(root, "SELECT count(*), count(DISTINCT (model, interpreter, attack, image_id)) FROM samples "
                            "WHERE config_hash = ?", [h]).to_pylist()[0].values()
    assert n == keys == exp["samples"]
    n, keys = run_sql(root, "SELECT count(*), count(DISTINCT (model, attack, source_interpreter, eval_interpreter, "
                            "image_id)) FROM transfer WHERE config_hash = ?", [h]).to_pylist()[0].values()
    assert n == keys == exp["transfer"]
    stages = {r["stage"]: r["n"] for r in run_sql(root, "SELECT stage, count(*) AS n FROM shards GROUP BY stage").to_pylist()}
    assert stages == {"benign": exp["benign_units"], "examples": exp["examples_units"], "attack": exp["attack_units"],
                      "transfer": exp["transfer_units"]}
    n, keys = run_sql(root, "SELECT count(*), count(DISTINCT (model, attack, image_id)) FROM examples "
                            "WHERE config_hash = ?", [h]).to_pylist()[0].values()
    assert n == keys == exp["examples"]
    ident = run_sql(root, "SELECT DISTINCT run_id, code_version, seed, dataset, num_shards FROM samples").to_pylist()
    assert len(ident) == 1
    assert ident[0]["run_id"] == summary["run_id"] and ident[0]["seed"] == rc.bench.seed
    assert ident[0]["dataset"] == "embedded" and ident[0]["num_shards"] == rc.num_shards
    # every image of the selection appears once per cell, in the shard that owns it
    per_shard = run_sql(root, "SELECT shard, count(DISTINCT image_id) AS n FROM samples GROUP BY shard ORDER BY shard")
    assert [r["n"] for r in per_shard.to_pylist()] == [rc.bench.data.shard_size] * rc.num_shards


def test_run_row_has_provenance(smoke):
    rc, root, summary = smoke
    row = run_sql(root, "SELECT * FROM runs WHERE run_id = ?", [summary["run_id"]]).to_pylist()[0]
    assert row["status"] == "completed" and row["config_hash"] == rc.config_hash
    assert row["started_at"] < row["ended_at"]
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert row["git_sha"] == (sha or "unknown") and row["git_dirty"] in (True, False, None)
    versions = json.loads(row["package_versions"])
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert {"prefect", "duckdb", "pyarrow", "python"} <= set(versions)
    # the stored JSON is what the hash was computed over
    assert hashlib.sha256(row["config_json"].encode()).hexdigest()[:16] == rc.config_hash
    assert json.loads(row["config_json"])["config"]["seed"] == rc.bench.seed
    assert row["device"] and row["seed"] == rc.bench.seed


def test_rerun_skips_and_a_lost_unit_is_recomputed_alone(smoke):
    rc, root, first = smoke
    exp = _expected(rc)
    again = run_benchmark(rc, engine="inline")
    assert again["computed"] == 0 and again["skipped"] == exp["tasks"]
    # lose one attack unit (its manifest): exactly that unit is recomputed, nothing else
    unit = ShardUnit(rc.config_hash, "attack", rc.bench.models.names[0], rc.bench.interpreters.names[-1], "adv2", 1,
                     rc.num_shards)
    manifest_path(root, unit).unlink()
    third = run_benchmark(rc, engine="inline")
    assert third["computed"] == 1
    writers = run_sql(root, "SELECT run_id, count(*) AS n FROM shards GROUP BY run_id").to_pylist()
    assert {r["run_id"]: r["n"] for r in writers}[third["run_id"]] == 1
    n, keys = run_sql(root, "SELECT count(*), count(DISTINCT (model, interpreter, attack, image_id)) FROM samples "
                            "WHERE config_hash = ?", [rc.config_hash]).to_pylist()[0].values()
    assert n == keys == exp["samples"]
    assert run_sql(root, "SELECT count(*) AS n FROM runs").to_pylist()[0]["n"] == 3
    assert ResultStore(root).completed_units(rc.config_hash, full=True) >= {unit}


def test_stored_perturbation_reproduces_the_judged_image(smoke):
    """Re-apply the int16 delta to the reloaded clean image (numpy, independent of the cell): the model's
    prediction on it is the stored ``pred_class``, and every success is classified as its target."""
    from tasks import worker

    rc, root, _ = smoke
    ds = worker.get_dataset(rc)
    model = worker.load_classifier(rc, rc.bench.models.names[0], "cpu", allow_train=False)
    eps = rc.attack_params["pgd"]["eps"]
    checked = 0
    for interp in rc.bench.interpreters.names:
        for attack in rc.bench.attacks.names:
            for s in range(rc.num_shards):
                unit = ShardUnit(rc.config_hash, "attack", rc.bench.models.names[0], interp, attack, s, rc.num_shards)
                arr = read_arrays(arrays_path(root, unit))
                x = ds.load(arr["index"].tolist()).images.numpy()
                assert list(ds.load(arr["index"].tolist()).ids) == [str(i) for i in arr["image_id"]]
                x_adv = apply_perturbation(x, arr["perturbation"])
                assert np.abs(arr["perturbation"]).max() <= math.ceil(eps * 255) + 1  # inside the eps-ball (+ rounding)
                with torch.no_grad():
                    pred = model(torch.from_numpy(x_adv)).argmax(1).numpy()
                rows = run_sql(root, "SELECT image_id, success, pred_class FROM samples WHERE config_hash = ? AND "
                                     "interpreter = ? AND attack = ? AND shard = ?", [rc.config_hash, interp, attack, s])
                by_id = {r["image_id"]: r for r in rows.to_pylist()}
                for image_id, p, t in zip(arr["image_id"], pred, arr["target_class"]):
                    row = by_id[str(image_id)]
                    assert row["pred_class"] == p  # the stored delta rebuilds the image that was judged
                    assert not row["success"] or p == t  # success requires the target class on that image
                    checked += 1
    assert checked == len(rc.bench.interpreters.names) * len(rc.bench.attacks.names) * rc.bench.data.num_images


def test_shard_budget_exceeded_writes_nothing(tmp_path):
    rc = _smoke(tmp_path, "pipeline.shard_budget_s=1e-9", "attacks.names=[pgd]", "cross_eval.enabled=false",
                "pipeline.report=false")
    with pytest.raises(BenchmarkFailed, match="budget") as ei:
        run_benchmark(rc, engine="inline")
    assert "\n" not in str(ei.value)
    assert not list(tmp_path.rglob("evaluations/**/*.parquet")) and not list(tmp_path.rglob("*.npz"))
    assert ResultStore(tmp_path).completed_units(rc.config_hash) == set()
    row = run_sql(tmp_path, "SELECT status FROM runs").to_pylist()
    assert [r["status"] for r in row] == ["failed"]


def test_retry_only_transient_errors():
    class State:
        def __init__(self, exc):
            self.exc = exc

        def result(self, raise_on_failure=False):
            return self.exc

    transient = [OSError("nfs hiccup"), RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")]
    permanent = [Adv2Error("bad input"), ConfigError("unknown model"), ValueError("bug"), RuntimeError("shape")]
    if hasattr(torch.cuda, "OutOfMemoryError"):
        transient.append(torch.cuda.OutOfMemoryError("oom"))
    assert all(is_transient(e) and retry_transient(None, None, State(e)) for e in transient)
    assert not any(is_transient(e) or retry_transient(None, None, State(e)) for e in permanent)


def test_distributed_run_without_server_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    rc = _smoke(tmp_path, "pipeline.dask_address=tcp://127.0.0.1:9")
    with pytest.raises(ConfigError) as ei:
        run_benchmark(rc)
    msg = str(ei.value)
    assert "prefect server start" in msg and "PREFECT_API_URL" in msg and "\n" not in msg


def test_unwritable_results_root_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = _smoke(blocker / "results")
    with pytest.raises(Adv2Error, match="not writable"):
        run_benchmark(rc, engine="inline")


def test_changed_folder_dataset_recomputes_only_the_shards_that_changed(tmp_path):
    """A folder's path is hashed, not its files: shards whose images changed are detected and redone."""
    from PIL import Image

    folder = tmp_path / "imgs"
    for c in range(2):
        (folder / f"c{c}").mkdir(parents=True)
    rng = np.random.default_rng(0)

    def add(name: str) -> None:
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / name)

    for name in ("c0/b.png", "c1/d.png", "c1/e.png", "c1/f.png"):
        add(name)
    smoke_data = load_config("smoke").data.options  # the embedded model keeps its training set
    rc = _smoke(tmp_path / "res", "data.dataset=imagenet", f"data.path={folder}",
                "data.options={image_size: 64, num_classes: 8}", f"models.embedded_data={json.dumps(smoke_data)}",
                "data.num_images=4", "data.shard_size=2", "interpreters.names=[cam]",
                "attacks.names=[pgd]", "attacks.step_cap=2", "pipeline.report=false",
                "gates.enabled=false", "data.population=all")  # random pixels: accuracy is meaningless
    first = run_benchmark(rc, engine="inline")
    assert first["computed"] == 2 + 2 + 2 + 2  # per shard: benign maps, PGD examples, their evaluation, cross-eval.
    add("c0/a.png")  # sorts first: shard 0 becomes (a, b), shard 1 (d, e); f drops out of the selection
    from tasks import worker

    worker.clear_caches()  # a new process would rescan the folder
    second = run_benchmark(rc, engine="inline")
    assert second["plan"]["stale"] == 2 * 4 and second["computed"] == 8
    ids = run_sql(tmp_path / "res", "SELECT shard, list(image_id ORDER BY image_id) AS ids FROM samples "
                                    "GROUP BY shard ORDER BY shard").to_pylist()
    assert [r["ids"] for r in ids] == [["c0/a.png", "c0/b.png"], ["c1/d.png", "c1/e.png"]]
    worker.clear_caches()
    assert run_benchmark(rc, engine="inline")["computed"] == 0  # and stable afterwards


def test_pgd_runs_once_per_model_and_shard_and_each_interpreter_measures_it(smoke):
    """Two interpreters, one PGD computation per (model, shard) in the manifest; every interpreter's
    samples rows for PGD equal what a direct :func:`run_cell` with that interpreter computes."""
    from adv2core.bench.cell import run_cell, select_population
    from tasks import worker
    from tasks.attack import attack_config

    rc, root, _ = smoke
    assert len(rc.bench.interpreters.names) >= 2
    per = run_sql(root, "SELECT model, shard, count(*) AS n FROM shards WHERE attack = 'pgd' AND stage = 'examples' "
                        "GROUP BY ALL").to_pylist()
    assert sorted((r["model"], r["shard"]) for r in per) == [(m, s) for m in rc.bench.models.names
                                                             for s in range(rc.num_shards)]
    assert {r["n"] for r in per} == {1}
    model_name, shard = rc.bench.models.names[0], 0
    ds = worker.get_dataset(rc)
    model = worker.load_classifier(rc, model_name, "cpu", allow_train=False)
    ex = read_arrays(arrays_path(root, ShardUnit(rc.config_hash, "examples", model_name, "none", "pgd", shard,
                                                 rc.num_shards)))
    for interp_name in rc.bench.interpreters.names:
        arr = read_arrays(arrays_path(root, ShardUnit(rc.config_hash, "attack", model_name, interp_name, "pgd", shard,
                                                      rc.num_shards)))
        assert np.array_equal(arr["perturbation"], ex["perturbation"])  # the one computation, not a new one
        interp = worker.get_interpreter(rc, model_name, interp_name, "cpu")
        stored = {r["image_id"]: r for r in run_sql(
            root, "SELECT * FROM samples WHERE config_hash = ? AND interpreter = ? AND attack = 'pgd' AND shard = ?",
            [rc.config_hash, interp_name, shard]).to_pylist()}
        indices = worker.shard_dataset_indices(rc, len(ds), shard)
        bs = rc.bench.attacks.batch_size
        for start in range(0, len(indices), bs):
            batch, _ = select_population(model, ds.load(indices[start:start + bs]), rc.bench.data.population)
            res = run_cell(model_name, interp_name, "pgd", batch, attack_config(rc), seed=int(rc.bench.seed),
                           device="cpu", model=model, interpreter=interp)
            for r in res.rows:
                s = stored[r["image_id"]]
                assert (s["status"], s["success"], s["pred_class"], s["target_class"]) == \
                    (r["status"], r["success"], r["pred_class"], r["target_class"])
                for k in ("l1", "l2", "iou_mean", "loc_iou_adv"):
                    assert (s[k] is None) == (r[k] is None)
                    if r[k] is not None:
                        assert s[k] == pytest.approx(r[k], rel=1e-3, abs=1e-4), (interp_name, k)


def test_pgd_once_per_shard_and_benign_maps_once_per_interpreter_with_two_interpreters(tmp_path, monkeypatch):
    """Instrumented: PGD attacks each image once (not once per interpreter), and each interpreter explains
    each clean image for its label once (the benign stage), although two units and the cross-evaluation use it."""
    import traceback

    from adv2core.attacks.base import Attack
    from adv2core.interpreters.cam import CAM
    from adv2core.interpreters.grad import Grad
    from tasks import worker

    attacked: list[str] = []
    explained: list[tuple[str, str, int]] = []  # (interpreter, image id, class explained)
    attack_call = Attack.__call__

    def counting_attack(self, x, target, **kw):
        if self.name == "pgd":
            attacked.extend(kw.get("ids") or ())
        return attack_call(self, x, target, **kw)

    def counting_explain(cls):
        original = cls.explain

        def explain(self, x, target, *, ids=None):
            if not any(f.filename.endswith("gates.py") for f in traceback.extract_stack()):  # not the preflight
                explained.extend((self.name, i, int(t)) for i, t in zip(ids or [], target.tolist()))
            return original(self, x, target, ids=ids)
        return explain

    monkeypatch.setattr(Attack, "__call__", counting_attack)
    for cls in (Grad, CAM):
        monkeypatch.setattr(cls, "explain", counting_explain(cls))
    rc = _smoke(tmp_path, "attacks.names=[pgd]", "attacks.step_cap=1", "pipeline.report=false",
                "interpreters.names=[grad, cam]", "gates.enabled=false")
    run_benchmark(rc, engine="inline")
    n = run_sql(tmp_path, "SELECT count(DISTINCT image_id) AS n FROM samples WHERE status IN ('ok', 'failed')")
    assert attacked and len(attacked) == len(set(attacked)) == n.to_pylist()[0]["n"]  # no image attacked twice
    ds = worker.get_dataset(rc)
    every = ds.load(list(range(len(ds))))
    label = dict(zip(every.ids, every.labels.tolist()))
    benign = [(name, i) for name, i, c in explained if c == label[i]]  # PGD's targets differ from the labels
    assert sorted(benign) == sorted({(name, i) for name in ("grad", "cam") for i in attacked})  # each once


def test_transfer_measures_the_attack_stages_maps_instead_of_recomputing_them(smoke, monkeypatch):
    """The cross-evaluation reads the maps the attack stage already computed for the same examples (the
    diagonal j = i, and every j for PGD, whose examples all interpreters share) and explains only the rest;
    a forced rewrite of a transfer shard makes exactly those calls and stores the same rows."""
    from tasks import worker
    from tasks.transfer import run_transfer_shard

    rc, root, summary = smoke
    names = list(rc.bench.interpreters.names)
    cols = "source_interpreter, eval_interpreter, attack, image_id, l1, l2, iou_mean, success"
    sql = f"SELECT {cols} FROM transfer WHERE config_hash = ? AND shard = 0 ORDER BY ALL"
    before = run_sql(root, sql, [rc.config_hash]).to_pylist()
    assert before and {r["attack"] for r in before} == {"pgd", "adv2"}
    calls: list[str] = []
    for it in worker.get_interpreters(rc, "resnet-mini", names, "cpu").values():
        cls = type(it)

        def counting(self, x, target, *, ids=None, _orig=cls.explain):
            calls.append(self.name)
            return _orig(self, x, target, ids=ids)

        monkeypatch.setattr(cls, "explain", counting)
    run = {"run_id": summary["run_id"], "code_version": "test"}
    out = run_transfer_shard(rc.to_payload(), run, "resnet-mini", 0, force=True)
    assert out["status"] == "done" and out["units"] == len(names) * len(rc.cross_eval_attacks)
    # only ADV²-i's examples under j != i are new maps: one batched call per such pair, none for PGD
    assert sorted(calls) == sorted(j for i in names for j in names if j != i)
    assert run_sql(root, sql, [rc.config_hash]).to_pylist() == before
    # the diagonal is the white-box measurement itself (here the target map is the benign map)
    diag = run_sql(root, "SELECT t.l1 AS t1, s.l1 AS s1, t.iou_mean AS ti, s.iou_mean AS si FROM transfer t "
                         "JOIN samples s ON s.config_hash = t.config_hash AND s.model = t.model AND s.attack = "
                         "t.attack AND s.image_id = t.image_id AND s.interpreter = t.source_interpreter "
                         "WHERE t.config_hash = ? AND t.eval_interpreter = t.source_interpreter AND s.status = 'ok'",
                   [rc.config_hash]).to_pylist()
    assert diag and all(r["t1"] == r["s1"] and r["ti"] == r["si"] for r in diag)
