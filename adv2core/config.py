"""The benchmark configuration: one validated object from a preset, an optional file and overrides.

Why one object: a run must be reproducible from what it stored, and a rerun must recognise its own
results. So the whole configuration resolves to plain JSON — with the attack and interpreter
hyper-parameters *expanded* from their presets, not just their preset names — and the **config hash**
(sha256 of that canonical JSON plus the results schema version) keys every stored shard. Changing any
value that can change a result (an attack parameter, the dataset, a seed, the shard size) changes the
hash, so old shards are never reused for a new config; execution settings (workers, Dask address,
device, results folder, budgets, retries) live in ``pipeline`` and are *not* hashed, so a rerun on
another machine or with more workers resumes the same shards.

Sources, lowest precedence first: the ``<preset>`` run preset (:mod:`adv2core.presets`: shipped
``adv2core/configs/presets/<preset>.yaml`` or ``$ADV2_CONFIG_DIR/presets``) -> ``--config FILE`` (same shape,
deep-merged) -> ``--set key.sub=value`` overrides (values parsed as YAML: ``2``, ``true``, ``null``,
``[grad, cam]``).

This module is plain Python + pydantic (no prefect); the attack/interpreter sections are validated
through their own packages when those are importable.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adv2core import presets
from adv2core.defences.config import DefenceSettings
from adv2core.errors import ConfigError, validate_config
from adv2core.gates import GatesConfig

PRESETS = ("smoke", "quick", "paper", "isic", "real")

#: Bump when the meaning of a resolved config changes (new defaults, new hashed keys).
CONFIG_VERSION = 1

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
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads per worker (default cores/workers)")
    dask_address: str | None = Field(None, description="tcp://host:8786 of an existing Dask scheduler")
    gpu_resource: str | None = Field("GPU", description="Dask worker resource each attack task takes (null: none)")
    shard_budget_s: float | None = Field(None, gt=0, description="max seconds per shard, checked between batches")
    retries: int = Field(2, ge=0, description="retries of a shard after OSError / CUDA OOM")
    retry_delay_s: float = Field(5.0, ge=0)
    report: bool = Field(True, description="run the report stage at the end")
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
        return ResolvedConfig.from_bench(self)


class ResolvedConfig(BaseModel):
    """A :class:`BenchConfig` with attack/interpreter settings expanded, its hash, and absolute paths.

    It is what travels to tasks (as a plain dict via :meth:`to_payload`): small, JSON, picklable.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bench: BenchConfig
    attack_params: dict[str, Any]
    interpreter_params: dict[str, Any]
    config_hash: str
    results_root: str
    reports_root: str
    data_root: str

    @classmethod
    def from_bench(cls, bench: BenchConfig) -> "ResolvedConfig":
        attack_params = _resolve_attacks(bench.attacks, bench.interpreters.names)
        interpreter_params = _resolve_interpreters(bench.interpreters)
        hashed = hashed_view(bench, attack_params, interpreter_params)
        data_root = _data_root(bench.pipeline.data_root)
        results = _expand(bench.pipeline.results) if bench.pipeline.results else data_root / "results"
        reports = _expand(bench.pipeline.reports) if bench.pipeline.reports else data_root / "reports"
        return cls(
            bench=bench,
            attack_params=attack_params,
            interpreter_params=interpreter_params,
            config_hash=config_hash(hashed),
            results_root=str(Path(results).absolute()),
            reports_root=str(Path(reports).absolute()),
            data_root=str(data_root),
        )

    def hashed(self) -> dict[str, Any]:
        """The exact JSON object the hash is computed over."""
        return hashed_view(self.bench, self.attack_params, self.interpreter_params)

    def to_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "ResolvedConfig":
        return cls.model_validate(dict(payload))

    def canonical_json(self) -> str:
        return canonical_json(self.hashed())

    @property
    def num_shards(self) -> int:
        return self.bench.num_shards

    @property
    def cross_eval_attacks(self) -> list[str]:
        if not self.bench.cross_eval.enabled:
            return []
        return list(self.bench.cross_eval.attacks or self.bench.attacks.names)


# ---------------------------------------------------------------------------------------- hashing
def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, UTF-8, floats as Python repr: equal configs give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def hashed_view(bench: BenchConfig, attack_params: Mapping[str, Any], interpreter_params: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that can change a stored result, and nothing that cannot."""
    from adv2core.store.schemas import SCHEMA_VERSION

    d = bench.model_dump(mode="json", exclude={"preset", "description", "pipeline", "gates", "defences",
                                                "defence_settings"})
    if not d["models"].get("custom"):
        d["models"].pop("custom", None)  # keeps the hashes of configs without user models unchanged
    d["attacks"].pop("overrides", None)
    d["attacks"].pop("step_cap", None)
    d["attacks"].pop("oom", None)  # how a batch is executed, not what it computes
    d["attacks"]["params"] = attack_params
    d["interpreters"].pop("overrides", None)
    d["interpreters"].pop("step_cap", None)
    d["interpreters"]["params"] = interpreter_params
    return {"config_version": CONFIG_VERSION, "schema_version": SCHEMA_VERSION, "config": d}


def config_hash(hashed: Mapping[str, Any]) -> str:
    """First 16 hex digits of sha256 over the canonical JSON (64 bits: a path component, not a secret)."""
    return hashlib.sha256(canonical_json(hashed).encode()).hexdigest()[:16]


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the global seed and names (model, interpreter, attack, shard ...).

    Hash-based, so it does not depend on the order shards run in or on which worker runs them.
    """
    blob = canonical_json([int(seed), *[str(p) for p in parts]])
    return int.from_bytes(hashlib.sha256(f"adv2-seed:{blob}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------- loading
def load_config(
    preset: str | None = "quick",
    config_file: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
) -> BenchConfig:
    """Preset YAML -> file (deep-merged) -> ``key.sub=value`` overrides -> validated BenchConfig."""
    data: dict[str, Any] = {}
    if preset:
        data = presets.load("presets", preset)
        data.setdefault("preset", preset)
    if config_file is not None:
        extra = presets.read_file(Path(config_file).expanduser(), "config file")
        base = extra.pop("extends", None)
        if base and not preset:
            data = presets.load("presets", base)
            data.setdefault("preset", base)
        data = deep_merge(data, extra)
    for item in overrides:
        apply_override(data, item)
    return validate_config(BenchConfig, data, what="config")


def preset_path(name: str) -> Any:
    """Where run preset ``name`` is read from (a Path or an importlib.resources Traversable)."""
    where = presets.locate("presets", name)
    if where is None:
        presets.load("presets", name)  # raises the one-line 'unknown preset ...; choose one of' error
    return where


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``extra`` wins; lists are replaced, not concatenated."""
    out = copy.deepcopy(dict(base))
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], yaml-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not path or any(not re.fullmatch(r"[A-Za-z0-9_-]+", p) for p in path):
        raise ConfigError(f"override key {key!r} must be dot-separated names")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set one ``key.sub=value`` in a raw config dict (intermediate mappings are created)."""
    path, value = parse_override(item)
    node = data
    for p in path[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node = nxt
    node[path[-1]] = value


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


# ---------------------------------------------------------------------------------------- expansion
def cap_steps(obj: Mapping[str, Any], cap: int | None, schema: Any = None) -> dict[str, Any]:
    """Copy of an expanded config with every loop count capped at ``cap``.

    Loop counts are the fields the schema *marks* (:mod:`adv2core.loops`), never guessed from names.
    ``schema``: a pydantic model class or ``{section: class}``; default the attacks schema
    (:class:`~adv2core.attacks.config.AttacksConfig`)."""
    from adv2core.loops import cap_loops

    if schema is None:
        from adv2core.attacks.config import AttacksConfig

        schema = AttacksConfig
    return cap_loops(obj, schema, cap)


def _preset_yaml(kind: str, preset: str) -> dict[str, Any]:
    """Raw attack or interpreter preset ``preset`` (one-line ConfigError when unknown)."""
    return presets.load(kind, preset)


def _resolve_attacks(sec: AttacksSection, interpreters: list[str]) -> dict[str, Any]:
    """Attack preset -> overrides -> full validated dump -> step cap -> revalidated -> pruned JSON."""
    raw = deep_merge(_preset_yaml("attacks", sec.preset), sec.overrides)
    return _validate_params("attacks", raw, sec.names, sec.step_cap, interpreters)


def _resolve_interpreters(sec: InterpretersSection) -> dict[str, Any]:
    """Interpreter preset -> overrides -> full validated dump -> step cap -> revalidated -> pruned JSON."""
    raw = deep_merge(_preset_yaml("interpreters", sec.preset), sec.overrides)
    return _validate_params("interpreters", raw, sec.names, sec.step_cap, sec.names)


def _validate_params(
    kind: str, raw: dict[str, Any], names: list[str], cap: int | None, interpreters: list[str]
) -> dict[str, Any]:
    """Validate through the owning package's pydantic configs (one-line ConfigError on a bad value)."""
    try:
        full = _full_dump(kind, raw)
        if cap is not None:
            full = _full_dump(kind, cap_steps(full, cap, _schema(kind)))
        return json.loads(canonical_json(_prune(kind, full, names, interpreters)))
    except ConfigError:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        raise ConfigError(f"invalid {kind} config {loc}: {msg}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {kind} config: {str(exc).splitlines()[0]}") from None


def _schema(kind: str) -> Any:
    """The pydantic schema of an expanded ``attacks`` / ``interpreters`` section (what the step cap walks)."""
    if kind == "attacks":
        from adv2core.attacks.config import AttacksConfig

        return AttacksConfig
    from adv2core.interpreters.config import _SECTIONS

    return dict(_SECTIONS)


def _full_dump(kind: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Every field with its value (defaults included), so the hash sees values, not preset names."""
    if kind == "attacks":
        from adv2core.attacks.config import AttacksConfig

        return validate_config(AttacksConfig, raw).model_dump(mode="json")
    from adv2core.interpreters.config import _SECTIONS, section_input

    sections = dict(_SECTIONS)
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"invalid interpreters config: unknown section(s) {unknown}; expected {sorted(sections)}")
    out: dict[str, Any] = {}
    for key, cls in sections.items():
        try:
            out[key] = cls(**section_input(raw, key)).model_dump(mode="json")
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
            raise ConfigError(f"invalid interpreters config {key}.{loc}: {msg}") from None
    return out


#: Attack sections with one sub-section per interpreter, and the attacks that aim at a target map.
_PER_INTERPRETER_SECTIONS = ("adv2", "stadv_adv2", "adv2_fs")
_TARGETED_SECTIONS = ("adv2", "stadv_adv2", "adv2_fs", "adv2_ens")


def attack_field(attack: str) -> str:
    """Config section of an attack name (``stadv-adv2`` -> ``stadv_adv2``)."""
    return attack.replace("-", "_")


def _prune(kind: str, full: dict[str, Any], names: list[str], interpreters: list[str]) -> dict[str, Any]:
    """Keep only what the selected names use, so unrelated settings never change the hash."""
    if kind == "interpreters":
        return {k: v for k, v in full.items() if k in names}
    from adv2core.attacks.config import interpreter_section  # rts-aid is attacked with rts's section

    keep = {attack_field(a) for a in names}
    out = {k: v for k, v in full.items() if k in keep}
    sections = {interpreter_section(i) for i in interpreters}
    for k in _PER_INTERPRETER_SECTIONS:
        if k in out and isinstance(out[k], dict):
            out[k] = {i: v for i, v in out[k].items() if i in sections}
    if any(attack_field(a) in _TARGETED_SECTIONS for a in names) and "target" in full:
        out["target"] = full["target"]
    return out


# ---------------------------------------------------------------------------------------- paths
def _expand(p: str) -> Path:
    return Path(os.path.expandvars(p)).expanduser()


def _data_root(configured: str | None) -> Path:
    if configured:
        return _expand(configured).absolute()
    return Path(os.environ.get("ADV2_DATA", "data")).expanduser().absolute()


__all__ = [
    "BenchConfig",
    "CONFIG_VERSION",
    "PRESETS",
    "ResolvedConfig",
    "apply_override",
    "canonical_json",
    "cap_steps",
    "config_hash",
    "deep_merge",
    "derive_seed",
    "load_config",
    "parse_override",
    "preset_path",
    "validate_config",
]
