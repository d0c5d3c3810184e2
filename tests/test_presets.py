"""Presets come from one loader (adv2core.presets): ADV2_CONFIG_DIR first, else the package data.

The install test builds a wheel, installs it (not editable) into a fresh venv and, from another folder,
loads every preset and runs ``adv2 --help`` and a capped smoke run with the installed package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from adv2core import presets
from adv2core.attacks.config import load_preset
from adv2core.config import load_config
from adv2core.errors import ConfigError
from adv2core.interpreters.config import load_interpreter_config

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_preset_loads_through_the_one_loader(monkeypatch):
    monkeypatch.delenv(presets.ENV_VAR, raising=False)
    assert presets.names("presets") == ["isic", "paper", "quick", "real", "smoke"]
    assert presets.names("attacks") == presets.names("interpreters") == ["paper", "quick", "real"]
    for name in presets.names("presets"):
        assert load_config(name).resolve().config_hash
    for name in presets.names("attacks"):
        assert load_preset(name).name == name
        sections = set(load_interpreter_config(name))  # rts-aid: optional, its AID settings over rts's
        assert {"rts", "mask"} <= sections <= {"rts", "mask", "rts-aid"}, sections
    assert not (REPO / "configs").exists()  # one copy only: the package data


@pytest.mark.parametrize("kind,call", [
    ("presets", lambda: load_config("nope")),
    ("attacks", lambda: load_preset("nope")),
    ("interpreters", lambda: load_interpreter_config("nope")),
])
def test_unknown_preset_is_one_line_listing_the_choices(kind, call):
    with pytest.raises(ConfigError, match=r"unknown .*'nope'; choose one of: .*quick") as exc:
        call()
    assert "\n" not in str(exc.value)


def test_config_dir_overrides_every_loader_and_falls_back_to_the_package(tmp_path, monkeypatch):
    for kind in presets.KINDS:
        (tmp_path / kind).mkdir()
    (tmp_path / "attacks" / "quick.yaml").write_text("pgd: {steps: 7}\n")
    (tmp_path / "interpreters" / "mine.yaml").write_text("mask: {iterations: 9}\n")
    (tmp_path / "presets" / "tiny.yaml").write_text(
        "models: {names: [resnet-mini]}\ninterpreters: {names: [cam], preset: mine}\n"
        "attacks: {names: [pgd], preset: quick}\n")
    monkeypatch.setenv(presets.ENV_VAR, str(tmp_path))
    assert load_preset("quick").pgd.steps == 7  # the override wins over the shipped quick
    assert load_preset("paper").pgd.steps == 1200  # not overridden: shipped
    assert load_interpreter_config("mine")["mask"].iterations == 9
    assert "tiny" in presets.names("presets") and "smoke" in presets.names("presets")
    rc = load_config("tiny", overrides=["interpreters.names=[mask]"]).resolve()
    assert rc.attack_params["pgd"]["steps"] == 7 and rc.interpreter_params["mask"]["iterations"] == 9
    assert load_config("smoke").resolve().attack_params["pgd"]["steps"] == 5  # shipped smoke, overridden quick
    monkeypatch.delenv(presets.ENV_VAR)
    assert load_preset("quick").pgd.steps != 7
    with pytest.raises(ConfigError, match="unknown preset 'tiny'"):
        load_config("tiny")


# ---------------------------------------------------------------------------------- non-editable install
_CHECK = """
import sys, adv2core
from pathlib import Path
here = Path(adv2core.__file__).resolve()
assert Path(sys.prefix).resolve() in here.parents, f"adv2core imported from {here}, not the venv"
from adv2core import presets
from adv2core.config import load_config
from adv2core.attacks.config import load_preset
from adv2core.interpreters.config import load_interpreter_config
names = {k: presets.names(k) for k in presets.KINDS}
assert names["presets"] == ["isic", "paper", "quick", "real", "smoke"], names
for n in names["presets"]:
    load_config(n).resolve()
for n in names["attacks"]:
    load_preset(n)
for n in names["interpreters"]:
    load_interpreter_config(n)
print("OK", here)
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", presets.ENV_VAR, "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the project installed from a wheel (dependencies from this interpreter's env)."""
    tmp = tmp_path_factory.mktemp("install")
    src, wheels = tmp / "src", tmp / "wheels"  # built from a copy: no build/ or *.egg-info left in the checkout
    skip = shutil.ignore_patterns(".git", "build", "*.egg-info", ".venv", "__pycache__", ".pytest_cache")
    shutil.copytree(REPO, src, ignore=lambda d, names: set(skip(d, names)) | ({"data"} if Path(d) == REPO else set()))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, cwd=tmp, env=_clean_env())
    (wheel,) = wheels.glob("adv2_bench-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # torch, prefect, ... from the test interpreter's site-packages, *after* the venv's own (a plain path:
    # the .pth files there, e.g. an editable install of this repository, are not processed)
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "zz_shared_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   cwd=tmp, env=_clean_env())
    return env_dir


@pytest.mark.heavy  # ~20 s on 2 cores: wheel build + venv + install
def test_non_editable_install_finds_every_preset_from_another_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    py = installed / "bin" / "python"
    out = subprocess.run([str(py), "-c", _CHECK], cwd=elsewhere, env=_clean_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("OK ") and str(installed) in out.stdout
    helped = subprocess.run([str(installed / "bin" / "adv2"), "run", "--help"], cwd=elsewhere, env=_clean_env(),
                            capture_output=True, text=True)
    assert helped.returncode == 0 and "--preset" in helped.stdout, helped.stderr[-2000:]


@pytest.mark.heavy  # ~10 s with the test model cache warm, minutes when it trains the smoke model first
def test_non_editable_install_runs_the_smoke_preset_from_another_folder(installed, tmp_path):
    """The smoke preset through the installed `adv2` (inline engine, capped, the shared test model cache)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cmd = [str(installed / "bin" / "adv2"), "run", "--preset", "smoke", "--engine", "inline", "--no-progress",
           "--results", str(tmp_path / "results"), "--set", "interpreters.names=[cam]", "--set", "attacks.names=[pgd]",
           "--set", "attacks.step_cap=2", "--set", "pipeline.report=false", "--set", "cross_eval.enabled=false"]
    out = subprocess.run(cmd, cwd=elsewhere, env=_clean_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    # smoke's 2 shards x (benign maps, PGD examples, CAM's evaluation of those examples)
    assert "6 shard task(s) computed" in out.stdout, out.stdout[-2000:]
    assert list((tmp_path / "results").rglob("*.parquet"))
