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

This package is plain Python + pydantic (no prefect); the attack/interpreter sections are validated
through their own packages when those are importable.

The code is split by concern: :mod:`.schema` (the pydantic sections), :mod:`.loading` (presets, file,
overrides), :mod:`.hashing` (canonical JSON, hash, seeds) and :mod:`.resolve` (expansion into a
:class:`ResolvedConfig`). This package re-exports their public names.
"""

from __future__ import annotations

from adv2core.config.hashing import CONFIG_VERSION, canonical_json, config_hash, derive_seed, hashed_view
from adv2core.config.loading import apply_override, deep_merge, load_config, parse_override, preset_path
from adv2core.config.resolve import ResolvedConfig, attack_field, cap_steps
from adv2core.config.schema import (
    KNOWN_ATTACKS,
    KNOWN_DATASETS,
    PRESETS,
    AttacksSection,
    BenchConfig,
    CrossEvalSection,
    DataSection,
    InterpretersSection,
    ModelsSection,
    PipelineSection,
)
from adv2core.errors import validate_config

__all__ = [
    "AttacksSection",
    "BenchConfig",
    "CONFIG_VERSION",
    "CrossEvalSection",
    "DataSection",
    "InterpretersSection",
    "KNOWN_ATTACKS",
    "KNOWN_DATASETS",
    "ModelsSection",
    "PRESETS",
    "PipelineSection",
    "ResolvedConfig",
    "apply_override",
    "attack_field",
    "canonical_json",
    "cap_steps",
    "config_hash",
    "deep_merge",
    "derive_seed",
    "hashed_view",
    "load_config",
    "parse_override",
    "preset_path",
    "validate_config",
]
