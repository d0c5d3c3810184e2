"""Config schema: the pydantic sections of a benchmark run and the name checks they validate against.

Which settings exist, their defaults, and which are hashed (documented per section) live here; how a
config is loaded is :mod:`adv2core.config.loading`, how it is expanded and hashed is
:mod:`adv2core.config.resolve` / :mod:`adv2core.config.hashing`.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adv2core.defences.config import DefenceSettings
from adv2core.gates import GatesConfig

if TYPE_CHECKING:
    from adv2core.config.resolve import ResolvedConfig

PRESETS = ("smoke", "quick", "paper", "isic", "real")

KNOWN_DATASETS = ("embedded", "imagenet", "isic", "cifar10", "imagenet-samples")
#: Attack names the pipeline knows how to schedule (the attacks package may accept a subset).
KNOWN_ATTACKS = ("pgd", "adv2", "stadv", "stadv-adv2", "adv2-fs", "adv2-ens")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(_Section):
    """Which images are attacked and how they are split into shards (hashed)."""

    dataset: str = Field("embedded", description="embedded | imagenet | isic | cifar10 | imagenet-samples")
    split: str = Field("test", description="dataset split (embedded: train|test; folders: val|test)")
    path: str | None = Field(None, description="dataset folder (imagenet, isic, cifar10); ~ and $VARS expand")
    options: dict[str, Any] = Field(default_factory=dict, description="dataset options; embedded: EmbeddedDataConfig fields")
    num_images: int = Field(32, gt=0, description="attack the first N images of the dataset's stable order")
    shard_size: int = Field(16, gt=0, description="images per shard (the unit of work, resume and retry)")
    population: Literal["correct", "all"] = Field(
        "correct", description="correct: attack only the images each model classifies correctly (the paper's "
                               "population; the others are stored as 'excluded' rows); all: every drawn image")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        if v not in KNOWN_DATASETS:
            raise ValueError(f"unknown dataset {v!r}; choose one of: {', '.join(KNOWN_DATASETS)}")
        return v


class ModelsSection(_Section):
    """Classifiers by registry name (hashed)."""

    names: list[str] = Field(default_factory=lambda: ["resnet-mini", "densenet-mini"], min_length=1)
    weights: str | None = Field("imagenet", description="real models: imagenet | random | /path/to/state_dict")
    per_model_weights: dict[str, str | None] = Field(default_factory=dict, description="weights by model name")
    train: dict[str, Any] = Field(default_factory=dict, description="embedded models: TrainConfig overrides")
    embedded_data: dict[str, Any] | None = Field(
        None, description="embedded models: EmbeddedDataConfig they train on (default: data.options when the "
                          "attacked dataset is the embedded one, else the default embedded set)")
    train_if_missing: bool = Field(True, description="embedded models: train (cached) when no checkpoint exists")
    custom: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="user models by name: {torchvision: resnet18, weights: /path/sd.pth} or {factory: pkg.mod:fn, "
                    "cam_layer, fc}, plus num_classes, input_size, mean, std (adv2core.models.user_models)")

    @field_validator("custom")
    @classmethod
    def _valid_custom(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from adv2core.models.registry import model_names
        from adv2core.models.user_models import parse_user_spec

        builtin = model_names()
        for name, raw in v.items():
            if name in builtin:
                raise ValueError(f"custom model {name!r} clashes with a built-in model name")
            parse_user_spec(name, raw)
        return v

    def weights_for(self, name: str) -> str | None:
        w = self.per_model_weights.get(name, self.weights)
        return None if w in (None, "random", "none") else w


class InterpretersSection(_Section):
    """Interpreters and their hyper-parameters (hashed after expansion)."""

    names: list[str] = Field(default_factory=lambda: ["grad", "cam", "rts", "mask"], min_length=1)
    preset: str = Field("quick", description="adv2core/configs/interpreters/<preset>.yaml (RTS/MASK settings)")
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per interpreter, deep-merged")
    step_cap: int | None = Field(None, gt=0, description="cap every loop count the schema marks (adv2core.loops: steps, iterations, periods, inner steps, bisections): tests, smoke runs")
    checkpoints: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="trained interpreter weights by interpreter then model, e.g. rts: {resnet50: checkpoints/rts-resnet50.pth}"
        " (relative paths resolve against the data root; embedded models train their own)",
    )


class AttacksSection(_Section):
    """Attacks and their hyper-parameters (hashed after expansion)."""

    names: list[str] = Field(default_factory=lambda: ["pgd", "adv2"], min_length=1)
    preset: str = Field("quick", description="adv2core/configs/attacks/<preset>.yaml")
    overrides: dict[str, Any] = Field(default_factory=dict, description="deep-merged into the attack preset")
    step_cap: int | None = Field(None, gt=0, description="cap every loop count the schema marks (adv2core.loops: steps, iterations, periods, inner steps, bisections): tests, smoke runs")
    batch_size: int = Field(32, gt=0, description="images per attack call inside a shard")
    oom: Literal["retry", "split"] = Field(
        "retry", description="on out-of-memory in an attack: retry the shard task (Prefect retries), or split the "
        "batch in halves down to one image; execution only, not hashed")


class CrossEvalSection(_Section):
    """The transferability stage (hashed)."""

    enabled: bool = True
    attacks: list[str] | None = Field(None, description="source attacks to cross-evaluate (default: all run)")


class PipelineSection(_Section):
    """How a run executes. Not hashed: changing these never invalidates stored shards."""

    results: str | None = Field(None, description="results root (default <data root>/results)")
    reports: str | None = Field(None, description="reports folder (default <data root>/reports)")
    data_root: str | None = Field(None, description="caches/checkpoints root (default $ADV2_DATA or ./data)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N (per worker)")
    max_workers: int = Field(1, ge=1, description="local thread pool size (concurrent shards)")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per worker (default cores/workers, at most OMP_NUM_THREADS if set)")
    dask_address: str | None = Field(None, description="tcp://host:8786 of an existing Dask scheduler")
    gpu_resource: str | None = Field("GPU", description="Dask worker resource each attack task takes (null: none)")
    shard_budget_s: float | None = Field(None, gt=0, description="max seconds per shard, checked between batches")
    retries: int = Field(2, ge=0, description="retries of a shard after OSError / CUDA OOM")
    retry_delay_s: float = Field(5.0, ge=0)
    report: bool = Field(True, description="run the report stage at the end")
    report_plots: bool = Field(True, description="draw the report's PNG plots and sample grids (false: tables and "
                                                 "report.md only, ~1.5 s less per report on 2 cores)")
    heartbeats: bool | None = Field(None, description="Prefect flow heartbeats (default: off on an ephemeral server)")

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not re.fullmatch(r"(tcp|tls|inproc|ucx|ws|wss)://\S+", v):
            raise ValueError(f"dask address {v!r} must look like tcp://host:8786")
        return v


class BenchConfig(_Section):
    """A whole benchmark run. ``resolve()`` expands it; ``config_hash`` identifies its results."""

    preset: str = Field("custom", description="name of the preset it came from (not hashed)")
    description: str = ""
    seed: int = Field(0, ge=0, description="global seed; per-shard seeds derive from it")
    data: DataSection = Field(default_factory=DataSection)
    models: ModelsSection = Field(default_factory=ModelsSection)
    interpreters: InterpretersSection = Field(default_factory=InterpretersSection)
    attacks: AttacksSection = Field(default_factory=AttacksSection)
    cross_eval: CrossEvalSection = Field(default_factory=CrossEvalSection)
    pipeline: PipelineSection = Field(default_factory=PipelineSection)
    gates: GatesConfig = Field(default_factory=GatesConfig, description="preflight gates (not hashed; recorded per run)")
    defences: list[str] = Field(
        default_factory=list, description="detectors of the defence stage (ensemble, fs, lid; empty: no stage) and aid "
                                          "(adds the AID-hardened rts-aid to the interpreters); not hashed: detection "
                                          "rows carry their own settings hash")
    defence_settings: DefenceSettings = Field(default_factory=DefenceSettings,
                                              description="calibration images, detector settings (not hashed)")

    @model_validator(mode="after")
    def _check_names(self) -> "BenchConfig":
        _check_names("model", self.models.names, _model_names() + tuple(self.models.custom))
        _check_names("interpreter", self.interpreters.names, _interpreter_names())
        _check_names("attack", self.attacks.names, _attack_names())
        from adv2core.defences.config import DETECTOR_NAMES

        _check_names("defence", self.defences, DETECTOR_NAMES + ("aid",))
        if "aid" in self.defences:  # AID = the run's RTS attacked again after adversarial distillation
            if "rts" not in self.interpreters.names:
                raise ValueError("the aid defence hardens RTS: list rts in interpreters.names")
            if "rts-aid" not in self.interpreters.names:
                self.interpreters.names = [*self.interpreters.names, "rts-aid"]
        if "ensemble" in self.defences and len(self.interpreters.names) < 2:
            raise ValueError("the ensemble defence compares the run's interpreters: list at least 2 in interpreters.names")
        if self.cross_eval.attacks is not None:
            unknown = [a for a in self.cross_eval.attacks if a not in self.attacks.names]
            if unknown:
                raise ValueError(f"cross_eval.attacks {unknown} are not in attacks.names {self.attacks.names}")
        return self

    # ------------------------------------------------------------------ derived values
    @property
    def detectors(self) -> list[str]:
        """The detectors of the defence stage (``defences`` without ``aid``, which is an interpreter)."""
        return [d for d in self.defences if d != "aid"]

    @property
    def num_shards(self) -> int:
        return max(1, math.ceil(self.data.num_images / self.data.shard_size))

    def resolve(self) -> "ResolvedConfig":
        """Expand presets into explicit values and compute the hash (ConfigError on bad values)."""
        from adv2core.config.resolve import ResolvedConfig

        return ResolvedConfig.from_bench(self)

# ---------------------------------------------------------------------------------------- names
def _check_names(kind: str, names: list[str], known: tuple[str, ...]) -> None:
    seen = set()
    for n in names:
        if n not in known:
            raise ValueError(f"unknown {kind} {n!r}; choose from: {', '.join(known)}")
        if n in seen:
            raise ValueError(f"{kind} {n!r} listed twice")
        seen.add(n)


def _model_names() -> tuple[str, ...]:
    from adv2core.models.registry import model_names

    return model_names()


def _interpreter_names() -> tuple[str, ...]:
    from adv2core.interpreters.registry import INTERPRETER_NAMES

    return INTERPRETER_NAMES


def _attack_names() -> tuple[str, ...]:
    try:
        from adv2core.attacks import ATTACK_NAMES  # type: ignore[attr-defined]

        return tuple(ATTACK_NAMES)
    except ImportError:
        return KNOWN_ATTACKS

