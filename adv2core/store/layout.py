"""Deterministic file paths of the results store.

One file per shard-unit with a name derived only from the unit, so a rerun overwrites (or skips) the
same file and concurrent writers of different units never touch the same path. Parquet tables live in
Hive folders (``key=value``) that DuckDB turns into filterable columns; heavy arrays live under
``arrays/`` as ``.npz`` so they never enter the SQL globs.

::

    <root>/runs/run_id=<id>.parquet
    <root>/evaluations/config_hash=<h>/model=<m>/attack=<a>/source_interpreter=<i>/stage=attack/shard-00003-of-00008.parquet
    <root>/evaluations/config_hash=<h>/model=<m>/attack=<a>/source_interpreter=<i>/stage=transfer/shard-00003-of-00008.parquet
    <root>/benign/config_hash=<h>/model=<m>/interpreter=<i>/shard-00003-of-00008.parquet
    <root>/examples/config_hash=<h>/model=<m>/attack=<a>/shard-00003-of-00008.parquet
    <root>/detections/config_hash=<h>/model=<m>/detector=<d>/defence_hash=<dh>/shard-00000-of-00001.parquet
    <root>/arrays/config_hash=<h>/stage=<s>/model=<m>/interpreter=<i>/attack=<a>/shard-00003-of-00008.npz
    <root>/shards/config_hash=<h>/<stage>+<m>+<i>+<a>+shard-00003-of-00008.parquet

``samples`` and ``transfer`` are not folders: they are SQL views over ``evaluations`` (adv2core.store.query).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from adv2core.store.schemas import STAGES, VIEW_STAGE

_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")
MAX_SHARDS = 99_999  # five digits in the file name

# Which stored Parquet table a stage writes, the shape (table or view) its rows are handed in, and the Hive
# partition columns of each stored table (in folder order).
STAGE_TABLE = {"benign": "benign", "examples": "examples", "attack": "evaluations", "transfer": "evaluations",
               "defence": "detections"}
STAGE_ROWS = {**STAGE_TABLE, **{stage: view for view, stage in VIEW_STAGE.items()}}  # attack: samples, ...
PARTITIONS: dict[str, tuple[str, ...]] = {
    "evaluations": ("config_hash", "model", "attack", "source_interpreter", "stage"),
    "examples": ("config_hash", "model", "attack"),
    "benign": ("config_hash", "model", "interpreter"),
    "detections": ("config_hash", "model", "detector", "defence_hash"),
    "shards": ("config_hash",),
    "runs": (),
}
TABLE_DIRS = ("runs", "evaluations", "examples", "benign", "detections", "shards")  # stored tables
#: The interpreter field of an ``examples`` unit (its attack does not use one).
NO_INTERPRETER = "none"
#: The attack field of a ``benign`` unit (benign maps belong to no attack).
NO_ATTACK = "none"
ARRAYS_DIR = "arrays"
TEMP_MARKER = ".tmp-"  # temp names are '<final name>.tmp-<pid>-<random>': never end in .parquet/.npz


def check_component(what: str, value: str) -> str:
    """Return ``value`` if it is a safe single path component, else ValueError.

    Only ``[A-Za-z0-9._-]`` and not ``.``/``..``: names come from configs and must not be able to
    escape the root or inject ``=``/``/`` into the Hive layout.
    """
    if not isinstance(value, str) or not _COMPONENT.fullmatch(value) or value in {".", ".."}:
        raise ValueError(f"invalid {what} {value!r}: use only letters, digits, '.', '_' and '-'")
    return value


@dataclass(frozen=True, order=True)
class ShardUnit:
    """One unit of work whose results are written (and resumed) as a whole.

    For stage ``transfer`` ``interpreter`` is the *source* interpreter whose adversarial images are
    re-evaluated under the other interpreters. For stage ``defence`` (one unit per model and detector,
    ``shard=0, num_shards=1``) ``interpreter`` holds the detector and ``attack`` its settings hash
    (:func:`adv2core.defences.stage.detector_hash`). For stage ``examples`` (an interpreter-free attack,
    computed once per model and shard) ``interpreter`` is ``none``; for stage ``benign`` (the benign maps
    of one interpreter, computed once per model and shard) ``attack`` is ``none``.
    """

    config_hash: str
    stage: str
    model: str
    interpreter: str
    attack: str
    shard: int
    num_shards: int

    def __post_init__(self) -> None:
        check_component("config hash", self.config_hash)
        if self.stage not in STAGES:
            raise ValueError(f"invalid stage {self.stage!r}; expected one of {list(STAGES)}")
        check_component("model", self.model)
        check_component("interpreter", self.interpreter)
        check_component("attack", self.attack)
        for name in ("shard", "num_shards"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an int, got {v!r}")
        if not 1 <= self.num_shards <= MAX_SHARDS:
            raise ValueError(f"num_shards must be in [1, {MAX_SHARDS}], got {self.num_shards}")
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard must be in [0, {self.num_shards}), got {self.shard}")

    @property
    def table(self) -> str:
        """The stored Parquet table this unit's rows go to (benign, examples, evaluations or detections)."""
        return STAGE_TABLE[self.stage]

    @property
    def rows_table(self) -> str:
        """The table or view whose shape the unit's rows are handed in (``samples``/``transfer`` for the
        attack/transfer stages, which store them in ``evaluations``; else :attr:`table`)."""
        return STAGE_ROWS[self.stage]

    @property
    def shard_name(self) -> str:
        return shard_name(self.shard, self.num_shards)

    def partition_values(self) -> dict[str, str]:
        """Values of the Hive partition columns of :attr:`table` (they must equal the row values)."""
        if self.stage == "defence":
            return {"config_hash": self.config_hash, "model": self.model, "detector": self.interpreter,
                    "defence_hash": self.attack}
        vals = {"config_hash": self.config_hash, "model": self.model, "attack": self.attack}
        if self.stage == "examples":
            return vals
        if self.stage == "benign":
            return {"config_hash": self.config_hash, "model": self.model, "interpreter": self.interpreter}
        return {**vals, "source_interpreter": self.interpreter, "stage": self.stage}  # evaluations


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def table_dir(root: Path, table: str) -> Path:
    if table not in TABLE_DIRS:
        raise ValueError(f"unknown table {table!r}")
    return Path(root) / table


def table_path(root: Path, unit: ShardUnit) -> Path:
    """The Parquet file holding the rows of ``unit``."""
    vals = unit.partition_values()
    d = table_dir(root, unit.table)
    for col in PARTITIONS[unit.table]:
        d = d / f"{col}={vals[col]}"
    return d / f"{unit.shard_name}.parquet"


def arrays_path(root: Path, unit: ShardUnit) -> Path:
    """The ``.npz`` with the heavy per-image arrays of ``unit`` (outside every SQL glob)."""
    return (
        Path(root)
        / ARRAYS_DIR
        / f"config_hash={unit.config_hash}"
        / f"stage={unit.stage}"
        / f"model={unit.model}"
        / f"interpreter={unit.interpreter}"
        / f"attack={unit.attack}"
        / f"{unit.shard_name}.npz"
    )


def manifest_dir(root: Path, config_hash: str) -> Path:
    return table_dir(root, "shards") / f"config_hash={check_component('config hash', config_hash)}"


def manifest_path(root: Path, unit: ShardUnit) -> Path:
    """The one-row manifest file of ``unit``; '+' separates fields because names may contain '-'."""
    name = f"{unit.stage}+{unit.model}+{unit.interpreter}+{unit.attack}+{unit.shard_name}.parquet"
    return manifest_dir(root, unit.config_hash) / name


def manifest_glob(stage: str, model: str, interpreter: str, attack: str) -> str:
    """Glob (relative to :func:`manifest_dir`) matching every shard of one (stage, model, interp, attack)."""
    return f"{stage}+{model}+{interpreter}+{attack}+shard-*-of-*.parquet"


def run_path(root: Path, run_id: str) -> Path:
    return table_dir(root, "runs") / f"run_id={check_component('run id', run_id)}.parquet"


def is_temp_name(name: str) -> bool:
    """True for the temporary names used by the atomic write protocol."""
    return TEMP_MARKER in name and not name.endswith((".parquet", ".npz"))
