"""The `adv2` command: help everywhere, JSON on stdout, one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adv2cli.main import app

runner = CliRunner()

COMMANDS = [[], ["data"], ["data", "prepare"], ["data", "prepare-real"], ["models"], ["train"], ["train-rts"], ["explain"], ["attack"],
            ["run"], ["runs"], ["sql"], ["report"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "adv2")
def test_help_on_every_command(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_data_prepare_json_is_one_object(tmp_path, monkeypatch):
    monkeypatch.setenv("ADV2_DATA", str(tmp_path))
    res = runner.invoke(app, ["data", "prepare", "--image-size", "32", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["counts"] == {"train": 3200, "test": 800}
    assert out["image_size"] == 32 and len(out["content_sha256"]) == 64
    assert (tmp_path / "datasets").is_dir()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--model", "vgg"], "not an embedded model"),
        (["attack", "--model", "nope", "--images", "2"], "unknown model"),
        (["attack", "--interpreter", "lime", "--images", "2"], "interpreter"),
        (["attack", "--attack", "fgsm", "--images", "2"], "attack"),
        (["explain", "--model", "resnet-mini", "--interpreter", "lime", "--images", "1"], "unknown interpreter"),
    ],
)
def test_bad_names_give_one_line_error(args, needle, small_data_cfg):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1
