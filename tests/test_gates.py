"""Preflight gates: a model at chance and an interpreter with degenerate maps are refused with one line.

The degenerate interpreters here are deliberately broken on purpose (constant maps, NaN maps, maps that
ignore the class); the broken model is a seeded, untrained resnet-mini (accuracy at chance, 1/8).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adv2core.gates import GateError, GatesConfig, check_interpreter, check_model, map_degeneracy, preflight
from adv2core.interpreters.base import Interpreter
from adv2core.interpreters.cam import CAM
from adv2core.models.mini import resnet_mini

REPO = Path(__file__).resolve().parents[1]


class _Stub(Interpreter):
    """An interpreter whose maps are whatever ``fn(x, target)`` returns (8x8)."""

    name = "stub"

    def __init__(self, model, fn):
        super().__init__(model)
        self.fn = fn

    def map_size(self, input_size=None):
        return 8

    def differentiable_map(self, x, target):
        return self.fn(x, target)


@pytest.fixture(scope="module")
def model(trained_resnet):
    return trained_resnet[0]


@pytest.fixture(scope="module")
def gate_batch(small_data_cfg):
    from adv2core.data.synthetic import EmbeddedDataset

    return EmbeddedDataset("test", small_data_cfg).load(list(range(64)))


def _untrained():
    torch.manual_seed(0)
    return resnet_mini(8, 64).eval().requires_grad_(False)


def test_trained_fixture_passes_the_model_gate(model, gate_batch):
    rep = check_model(model, "resnet-mini", gate_batch.images, gate_batch.labels, GatesConfig())
    assert rep["accuracy"] >= 0.9 and rep["accuracy_n"] == 64 and rep["accuracy_floor"] == 0.9


def test_model_at_chance_is_refused_with_one_line(gate_batch):
    with pytest.raises(GateError) as err:
        check_model(_untrained(), "resnet-mini", gate_batch.images, gate_batch.labels, GatesConfig(), split="test split")
    msg = str(err.value)
    assert "\n" not in msg and "resnet-mini" in msg and "below the floor 0.90" in msg
    assert "adv2 train --model resnet-mini --force" in msg
    # the floor is configurable; a disabled gate measures but never refuses
    rep = check_model(_untrained(), "resnet-mini", gate_batch.images, gate_batch.labels,
                      GatesConfig(per_model_floor={"resnet-mini": 0.0}))
    assert rep["accuracy"] < 0.5
    assert check_model(_untrained(), "resnet-mini", gate_batch.images, gate_batch.labels,
                       GatesConfig(enabled=False))["accuracy"] < 0.5


def test_real_model_floor_is_separate():
    cfg = GatesConfig()
    assert cfg.floor_for("resnet-mini") == 0.9 and cfg.floor_for("resnet50") == 0.3
    assert GatesConfig(per_model_floor={"resnet50": 0.7}).floor_for("resnet50") == 0.7


def test_degeneracy_statistics():
    cfg = GatesConfig()
    maps = torch.rand(8, 1, 8, 8)
    maps[:3] = 0.5  # three constant maps
    maps[3, 0, 0, 0] = float("nan")
    st = map_degeneracy(maps, cfg)
    assert st["nonfinite"] == 1 and st["constant_fraction"] == pytest.approx(3 / 8) and st["n_maps"] == 8


@pytest.mark.parametrize("kind, words", [
    ("constant", "near-constant"),
    ("nan", "non-finite"),
    ("class-blind", "not above the wrong-class control"),
])
def test_degenerate_interpreter_is_refused(model, gate_batch, kind, words):
    fixed = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fns = {
        "constant": lambda x, t: torch.zeros(x.shape[0], 1, 8, 8) + 0 * x.sum(),
        "nan": lambda x, t: torch.full((x.shape[0], 1, 8, 8), float("nan")) + 0 * x.sum(),
        "class-blind": lambda x, t: fixed.expand(x.shape[0], 1, 8, 8) + 0 * x.sum(),  # ignores image and class
    }
    stub = _Stub(model, fns[kind])
    b = gate_batch
    with pytest.raises(GateError) as err:
        check_interpreter(stub, "resnet-mini", b.images, b.labels, b.masks, GatesConfig())
    msg = str(err.value)
    assert "\n" not in msg and "stub on resnet-mini is degenerate" in msg and words in msg
    rep = check_interpreter(stub, "resnet-mini", b.images, b.labels, b.masks, GatesConfig(on_degenerate="mark"))
    assert rep["status"] == "degenerate" and words in rep["reason"]


def test_real_interpreter_passes_and_preflight_reports(model, gate_batch):
    rep = preflight(model, "resnet-mini", {"cam": CAM(model)}, gate_batch, GatesConfig(map_images=16))
    cam = rep["interpreters"]["cam"]
    assert cam["status"] == "ok" and cam["n_maps"] == 16 and cam["constant_fraction"] == 0
    assert cam["loc_true"] > cam["loc_control"] and cam["control"] == "wrong-class"


def test_grad_uses_the_shuffled_mask_control(model, gate_batch):
    """Grad's maps barely depend on the class (a known property), so its control is another image's mask."""
    from adv2core.interpreters.grad import Grad

    rep = preflight(model, "resnet-mini", {"grad": Grad(model)}, gate_batch, GatesConfig(map_images=32))
    g = rep["interpreters"]["grad"]
    assert g["control"] == "shuffled-mask" and g["status"] == "ok" and g["loc_true"] > g["loc_control"]


@pytest.mark.heavy  # ~22 s: generates the default embedded set in an empty data root
def test_cli_attack_refuses_a_model_at_chance(tmp_path):
    """`adv2 attack` on a checkpoint at chance: one `error:` line naming the model and the accuracy, exit 2."""
    env_root = tmp_path / "data"
    code = (
        "import torch\n"
        "from adv2core.models.registry import checkpoint_path\n"
        "from adv2core.models.checkpoint import save_checkpoint\n"
        "from adv2core.models.mini import resnet_mini\n"
        "torch.manual_seed(0)\n"
        "save_checkpoint(checkpoint_path('resnet-mini'), resnet_mini(8, 64).state_dict(), {})\n"
    )
    import os

    env = {**os.environ, "ADV2_DATA": str(env_root)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=REPO)
    out = subprocess.run([sys.executable, "-m", "adv2cli.main", "attack", "--model", "resnet-mini",
                          "--interpreter", "cam", "--attack", "pgd", "--images", "4"],
                         env=env, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model resnet-mini: accuracy 0.1")
    assert "below the floor 0.90" in lines[0]
