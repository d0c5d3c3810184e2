"""The bench cell: rows match the samples table, metrics are recomputable, errors become rows."""

from __future__ import annotations

import math

import pytest
import torch

from adv2core.attacks import load_preset
from adv2core.bench import ROW_KEYS, TRANSFER_KEYS, attack_embedded, cross_evaluate, run_cell
from adv2core.data.types import Batch, ImageError
from adv2core.errors import ConfigError
from adv2core.interpreters import CAM, Grad
from adv2core.metrics import apply_int16_perturbation, iou_curve, l1_distance, localization_iou, quantize_uint8

#: a cheap preset for mechanics (the quick preset's strength is tested in test_attacks_adv2.py)
TINY = load_preset("quick").model_copy(
    update={
        "pgd": load_preset("quick").pgd.model_copy(update={"steps": 8}),
        "adv2": load_preset("quick").adv2.model_copy(
            update={"cam": load_preset("quick").adv2.cam.model_copy(update={"stage1_steps": 8, "stage2_steps": 8})}
        ),
    }
)


@pytest.fixture(scope="module")
def model(trained_resnet):
    return trained_resnet[0]


@pytest.fixture(scope="module")
def batch6(test_batch):
    return test_batch.select(range(6))


def test_schema_columns_match_the_samples_table():
    from adv2core.store.schemas import SAMPLES, TRANSFER

    samples = set(SAMPLES.names)
    assert set(ROW_KEYS) <= samples
    # everything else in the table is identity the pipeline adds
    assert samples - set(ROW_KEYS) == {
        "run_id", "config_hash", "code_version", "seed", "dataset", "shard", "num_shards", "model", "interpreter", "attack",
    }
    assert set(TRANSFER_KEYS) <= set(TRANSFER.names)


def test_run_cell_rows_and_metrics_are_recomputable(model, batch6):
    cam = CAM(model)
    bad = ImageError("broken-1", "unreadable file")
    batch = Batch(batch6.images, batch6.labels, batch6.ids, batch6.masks, [bad])
    res = run_cell("resnet-mini", "cam", "adv2", batch, TINY, seed=0, device="cpu", model=model, interpreter=cam)
    assert len(res.rows) == 7 and all(tuple(r) == ROW_KEYS for r in res.rows)
    err = res.rows[-1]
    assert err["image_id"] == "broken-1" and err["status"] == "error" and err["error"] == "unreadable file" and err["l1"] is None
    rows = res.rows[:6]
    x, y = batch6.images, batch6.labels
    # evaluated on the round-to-nearest quantised image, which the int16 perturbation rebuilds exactly
    assert torch.equal(res.x_adv_q, quantize_uint8(res.x_adv_q))
    assert torch.equal(apply_int16_perturbation(x, torch.from_numpy(res.perturbation_int16)), res.x_adv_q)
    with torch.no_grad():
        pred = model(res.x_adv_q).argmax(1)
        benign_pred = model(x).argmax(1)
    adv_maps = cam.explain(res.x_adv_q, res.target_classes)
    benign = cam.explain(x, y)
    assert torch.allclose(res.adv_maps, adv_maps) and torch.allclose(res.benign_maps, benign)
    l1 = l1_distance(adv_maps, benign)
    iou = iou_curve(adv_maps, benign)
    loc = localization_iou(adv_maps, batch6.masks)
    for j, r in enumerate(rows):
        assert r["image_id"] == batch6.ids[j] and r["true_class"] == int(y[j])
        assert r["target_class"] == int(res.target_classes[j]) != r["true_class"]
        assert r["pred_class"] == int(pred[j]) and r["benign_pred"] == int(benign_pred[j])
        own = bool(res.attack_result.success[j])
        assert r["success"] == (own and r["pred_class"] == r["target_class"])
        assert math.isclose(r["l1"], float(l1[j]), abs_tol=1e-6)
        assert math.isclose(r["iou_k10"], float(iou[j, 1]), abs_tol=1e-6)
        assert math.isclose(r["iou_mean"], float(iou[j].mean()), abs_tol=1e-6)
        assert math.isclose(r["loc_iou_adv"], float(loc[j]), abs_tol=1e-6)
        assert r["linf"] <= load_preset("quick").adv2.cam.eps + 1 / 255 + 1e-6
        assert r["steps"] == 16 and r["status"] == "ok" and r["error"] is None and r["seconds"] > 0
        assert 0 <= r["confidence"] <= 1 and r["target_prob"] <= r["confidence"] + 1e-6


def test_failed_sample_becomes_a_failed_row(model, batch6):
    from test_attacks import _PoisonedCAM

    res = run_cell("resnet-mini", "cam", "adv2", batch6, TINY, seed=0, device="cpu", model=model, interpreter=_PoisonedCAM(model, bad=1))
    status = [r["status"] for r in res.rows]
    assert status == ["ok", "failed", "ok", "ok", "ok", "ok"]
    assert res.rows[1]["error"] == "non-finite loss" and res.rows[1]["success"] is False


def test_target_kinds_and_user_map(model, batch6):
    cam = CAM(model)
    shape = TINY.model_copy(update={"target": TINY.target.model_copy(update={"kind": "shape"})})
    res = run_cell("resnet-mini", "cam", "adv2", batch6, shape, seed=1, device="cpu", model=model, interpreter=cam)
    assert not torch.allclose(res.target_maps, res.benign_maps)
    # metrics are against the target map
    assert math.isclose(res.rows[0]["l1"], float(l1_distance(res.adv_maps[:1], res.target_maps[:1])), abs_tol=1e-6)
    timg = TINY.model_copy(update={"target": TINY.target.model_copy(update={"kind": "target-image"})})
    res = run_cell("resnet-mini", "cam", "adv2", batch6, timg, seed=1, device="cpu", model=model, interpreter=cam)
    assert all(r["status"] in ("ok", "error") for r in res.rows)
    user = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    res = run_cell("resnet-mini", "cam", "pgd", batch6, TINY, seed=1, device="cpu", model=model, interpreter=cam, target_map=user)
    assert torch.equal(res.target_maps, user)
    with pytest.raises(ConfigError):
        run_cell("resnet-mini", "cam", "adv2", batch6, TINY, seed=1, device="cpu", model=model, interpreter=cam,
                 target_map=torch.rand(6, 1, 5, 5))
    with pytest.raises(ConfigError):
        run_cell("resnet-mini", "cam", "nope", batch6, TINY, seed=1, device="cpu", model=model, interpreter=cam)


def test_cross_evaluate_identity_and_keys(model, batch6):
    x, y = batch6.images, batch6.labels
    interps = {"grad": Grad(model), "cam": CAM(model)}
    rows = cross_evaluate(model, interps, x, x, y, y, batch6.ids)
    assert len(rows) == 12 and all(tuple(r) == TRANSFER_KEYS for r in rows)
    for r in rows:  # the benign image "attacked" into itself transfers perfectly
        assert r["l1"] == 0 and r["iou_mean"] == 1
    xq = quantize_uint8((x + 0.05).clamp(0, 1))
    rows = cross_evaluate(model, interps, x, xq, y, (y + 1) % 8, batch6.ids)
    cam_rows = [r for r in rows if r["eval_interpreter"] == "cam"]
    ref = l1_distance(CAM(model).explain(xq, (y + 1) % 8), CAM(model).explain(x, y))
    assert [round(r["l1"], 5) for r in cam_rows] == [round(float(v), 5) for v in ref]


def test_attack_embedded_summary(small_data_cfg, small_train_cfg, trained_resnet):
    out = attack_embedded("resnet-mini", "cam", "pgd", images=6, preset=TINY, seed=0, data_cfg=small_data_cfg,
                          train_cfg=small_train_cfg, batch_size=4)
    assert out["n_attacked"] == 6 and 0 <= out["success_rate"] <= 1
    assert out["success_rate_lo"] <= out["success_rate"] <= out["success_rate_hi"]
    if out["n_success"]:
        assert out["l1_lo"] <= out["l1"] <= out["l1_hi"]
    with pytest.raises(ConfigError):
        attack_embedded("resnet-mini", "cam", "pgd", images=0, data_cfg=small_data_cfg, train_cfg=small_train_cfg)
