"""Config hashing: the canonical JSON of a resolved config, the hashed view, the hash and derived seeds.

The hash keys every stored shard, so everything here must stay byte-for-byte stable: a change in
output means old results are no longer recognised.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from adv2core.config.schema import BenchConfig

#: Bump when the meaning of a resolved config changes (new defaults, new hashed keys).
CONFIG_VERSION = 1


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
