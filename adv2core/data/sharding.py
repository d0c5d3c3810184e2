"""Deterministic sharding: shard k of n is a fixed, contiguous slice of indices.

Contiguity (``np.array_split`` semantics: the first ``n % num_shards`` shards get one extra item) means
a shard is fully described by ``(n, shard, num_shards)``, so a pipeline can name, skip or resume a shard
without storing its id list.
"""

from __future__ import annotations

from typing import Iterator, Sequence

from adv2core.data.types import Batch, ImageDataset
from adv2core.errors import ConfigError


def shard_bounds(n: int, shard: int, num_shards: int) -> tuple[int, int]:
    """``[start, stop)`` of shard ``shard`` of ``num_shards`` over ``n`` items."""
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    if num_shards < 1:
        raise ConfigError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        raise ConfigError(f"shard must be in [0, {num_shards}), got {shard}")
    base, extra = divmod(n, num_shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def shard_indices(n: int, shard: int, num_shards: int) -> list[int]:
    """The indices of shard ``shard`` of ``num_shards`` over ``range(n)`` (contiguous, deterministic)."""
    start, stop = shard_bounds(n, shard, num_shards)
    return list(range(start, stop))


def iter_batches(dataset: ImageDataset, indices: Sequence[int], batch_size: int) -> Iterator[Batch]:
    """Load ``indices`` in order, ``batch_size`` at a time (the last batch may be short)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    idx = list(indices)
    for start in range(0, len(idx), batch_size):
        yield dataset.load(idx[start:start + batch_size])


__all__ = ["iter_batches", "shard_bounds", "shard_indices"]
