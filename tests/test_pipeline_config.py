"""BenchConfig: presets, overrides, validation messages, the config hash and derived seeds (no Prefect)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from adv2core.config import (
    PRESETS,
    BenchConfig,
    apply_override,
    cap_steps,
    derive_seed,
    load_config,
    parse_override,
)
from adv2core.errors import ConfigError


def _independent_hash(rc) -> str:
    """The documented definition, recomputed here: sha256 of sorted-key compact JSON, 16 hex digits."""
    blob = json.dumps(rc.hashed(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_resolves(preset):
    cfg = load_config(preset)
    rc = cfg.resolve()
    assert cfg.preset == preset
    assert re.fullmatch(r"[0-9a-f]{16}", rc.config_hash)
    assert rc.config_hash == _independent_hash(rc)
    # every selected attack/interpreter with settings has them expanded (values, not preset names)
    for a in cfg.attacks.names:
        assert a.replace("-", "_") in rc.attack_params
    for i in set(cfg.interpreters.names) & {"rts", "mask"}:
        assert i in rc.interpreter_params
    assert rc.num_shards == -(-cfg.data.num_images // cfg.data.shard_size)


def test_spec_values_in_paper_and_quick_presets():
    paper = load_config("paper")
    assert paper.data.dataset == "imagenet" and paper.data.num_images == 1000
    assert paper.models.names == ["resnet50", "densenet169"]
    assert paper.interpreters.names == ["grad", "cam", "rts", "mask"]
    p = paper.resolve().attack_params
    assert p["pgd"]["eps"] == 0.031 and p["pgd"]["steps"] == 1200  # spec 4: step-1200 snapshot
    assert list(p["adv2"]["grad"]["stage2_steps"]) == [301, 201, 101, 101]
    quick = load_config("quick")
    assert set(quick.models.names) == {"resnet-mini", "densenet-mini"}
    assert set(quick.interpreters.names) == {"grad", "cam", "rts", "mask"}
    assert {"pgd", "adv2"} <= set(quick.attacks.names) and quick.cross_eval.enabled
    assert quick.data.num_images >= 32


def test_hash_ignores_execution_settings_but_not_results_settings():
    base = load_config("smoke").resolve().config_hash
    same = load_config("smoke", overrides=[
        "pipeline.max_workers=4", "pipeline.device=cpu", "pipeline.results=/tmp/elsewhere",
        "pipeline.shard_budget_s=10", "preset=renamed", "description=x",
    ]).resolve()
    assert same.config_hash == base
    assert same.results_root == "/tmp/elsewhere"
    changed = [
        "attacks.overrides.pgd.eps=0.02",
        "attacks.overrides.adv2.cam.c=7",
        "data.shard_size=2",
        "seed=1",
        "data.options.seed=1",
        "attacks.step_cap=3",
    ]
    hashes = {load_config("smoke", overrides=[o]).resolve().config_hash for o in changed}
    assert base not in hashes and len(hashes) == len(changed)


def test_hash_only_covers_selected_attacks_and_interpreters():
    base = load_config("smoke").resolve().config_hash  # pgd + adv2 on grad, cam
    unrelated = load_config("smoke", overrides=[
        "attacks.overrides.stadv.steps=7", "attacks.overrides.adv2.mask.pred_step=0.07",
        "interpreters.overrides.mask.iterations=5",
    ]).resolve()
    assert unrelated.config_hash == base


def test_config_file_merges_over_preset(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("data:\n  num_images: 4\nattacks:\n  names: [pgd]\n")
    cfg = load_config("smoke", f, ["data.shard_size=2"])
    assert (cfg.data.num_images, cfg.data.shard_size, cfg.attacks.names) == (4, 2, ["pgd"])
    assert cfg.models.names == load_config("smoke").models.names  # untouched keys come from the preset
    g = tmp_path / "ext.yaml"
    g.write_text("extends: smoke\nseed: 5\n")
    assert load_config(None, g).seed == 5 and load_config(None, g).preset == "smoke"


def test_override_parsing():
    assert parse_override("a.b=2") == (["a", "b"], 2)
    assert parse_override("a=[grad, cam]") == (["a"], ["grad", "cam"])
    assert parse_override("a=null")[1] is None
    assert parse_override("a=true")[1] is True
    assert parse_override("a.b=x=y") == (["a", "b"], "x=y")
    d: dict = {"x": 1}
    apply_override(d, "p.q.r=0.5")
    assert d == {"x": 1, "p": {"q": {"r": 0.5}}}
    for bad in ("novalue", "a..b=1", "=1"):
        with pytest.raises(ConfigError):
            parse_override(bad)
    with pytest.raises(ConfigError, match="not a section"):
        apply_override({"x": 1}, "x.y=2")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("models.names=[resnet-mini, vgg]", "unknown model 'vgg'"),
        ("interpreters.names=[grad, lime]", "unknown interpreter 'lime'"),
        ("attacks.names=[fgsm]", "unknown attack 'fgsm'"),
        ("data.dataset=mnist", "unknown dataset 'mnist'"),
        ("data.num_images=0", "data.num_images"),
        ("pipeline.dask_address=localhost", "tcp://"),
        ("bogus=1", "unknown key"),
        ("attacks.overrides.pgd.eps=2", "eps"),
        ("attacks.overrides.pgd.eps=0", "eps"),
        ("attacks.overrides.pgd.steps=0", "steps"),
        ("interpreters.overrides.mask.iterations=-1", "iterations"),
    ],
)
def test_bad_values_give_one_line_config_errors(override, needle):
    with pytest.raises(ConfigError) as ei:
        load_config("smoke", overrides=[override]).resolve()
    msg = str(ei.value)
    assert needle in msg and "\n" not in msg


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="choose one of: .*smoke"):
        load_config("nope")


def test_step_cap_caps_marked_loop_counts_only_not_names():
    """The cap walks the schema's loop-count marker (adv2core.loops), never field names."""
    from pydantic import BaseModel, Field

    from adv2core.loops import LOOP, LoopCount, loop_fields

    class Inner(BaseModel):
        iterations: int = Field(300, **LOOP)
        phase1_lr_step: int = 4000

    class Schema(BaseModel):
        steps: LoopCount = 1200
        stage2_steps: tuple[LoopCount, ...] = (301, 201)
        warmup_steps: int = 500  # named like a loop count, not marked: untouched
        budget: LoopCount = 70  # not named like one, marked: capped
        lr: float = 0.5
        flag: bool = True
        inner: Inner = Inner()

    raw = Schema().model_dump()
    capped = cap_steps(raw, 2, Schema)
    assert capped == {"steps": 2, "stage2_steps": (2, 2), "warmup_steps": 500, "budget": 2, "lr": 0.5, "flag": True,
                      "inner": {"iterations": 2, "phase1_lr_step": 4000}}
    assert raw["steps"] == 1200  # a copy, the input is left alone
    assert sorted(loop_fields(Schema)) == ["budget", "inner.iterations", "stage2_steps", "steps"]
    assert Schema.model_json_schema()["properties"]["budget"]["loop_count"] is True
    assert "loop_count" not in Schema.model_json_schema()["properties"]["warmup_steps"]


def test_step_cap_caps_every_step_count_of_the_real_schemas():
    rc = load_config("paper", overrides=["attacks.step_cap=2", "interpreters.step_cap=2"]).resolve()

    def walk(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, k)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v, key)
        else:
            yield key, node

    counted = [(k, v) for k, v in walk([rc.attack_params, rc.interpreter_params])
               if re.search(r"(^|_)(steps|iters|iterations|every|plain|unrolled|bisections)$", k)
               and not isinstance(v, bool)]
    assert counted and all(v <= 2 for _, v in counted)
    assert rc.attack_params["adv2"]["mask"]["ls_bisections"] == 2 and rc.attack_params["adv2"]["mask"]["inner_plain"] == 2
    assert rc.attack_params["pgd"]["eps"] == 0.031  # non-step values untouched
    assert rc.attack_params["target"]["shape"]["canvas"] == 224  # a positive int, not a loop count
    assert rc.interpreter_params["rts"]["phase1_lr_step"] == 4000


def test_derive_seed_is_stable_distinct_and_63_bit():
    a = derive_seed(0, "resnet-mini", "grad", "adv2", 3)
    assert a == derive_seed(0, "resnet-mini", "grad", "adv2", 3)
    others = {derive_seed(0, "resnet-mini", "grad", "adv2", 4), derive_seed(1, "resnet-mini", "grad", "adv2", 3),
              derive_seed(0, "resnet-mini", "cam", "adv2", 3)}
    assert a not in others and len(others) == 3
    assert 0 <= a < 2**63


def test_payload_round_trip_keeps_hash():
    rc = load_config("quick").resolve()
    back = type(rc).from_payload(json.loads(json.dumps(rc.to_payload())))
    assert back == rc and back.config_hash == _independent_hash(back)
    assert isinstance(back.bench, BenchConfig)
