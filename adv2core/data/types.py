"""The data contract every dataset (embedded or real) fulfils.

A dataset is an indexable collection of images with *stable string ids*. Loading is batched and never
raises for a single bad image: the bad one becomes an :class:`ImageError` record and the rest of the
batch loads. Sharding is deterministic (shard k of n is a fixed subset of ids) so that a pipeline can
resume a shard by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch


@dataclass
class ImageError:
    """One image that could not be used, and why (kept as an error row, never a crash)."""

    image_id: str
    reason: str
    path: str | None = None


@dataclass
class Batch:
    """A batch of images in [0,1], float32, NCHW, with labels, ids and optional ground-truth masks."""

    images: torch.Tensor  # [N,3,H,W] float32 in [0,1]
    labels: torch.Tensor  # [N] int64
    ids: list[str]
    masks: torch.Tensor | None = None  # [N,1,H,W] float32 in {0,1}: the object's pixels (embedded data)
    errors: list[ImageError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            self.images.to(device),
            self.labels.to(device),
            list(self.ids),
            None if self.masks is None else self.masks.to(device),
            list(self.errors),
        )

    def select(self, index: Sequence[int] | torch.Tensor) -> "Batch":
        idx = torch.as_tensor(index, dtype=torch.long)
        return Batch(
            self.images[idx],
            self.labels[idx],
            [self.ids[i] for i in idx.tolist()],
            None if self.masks is None else self.masks[idx],
            [],
        )


@runtime_checkable
class ImageDataset(Protocol):
    """What loaders return: ids are stable across runs and machines."""

    name: str
    num_classes: int
    class_names: list[str]
    image_size: int

    def __len__(self) -> int: ...

    @property
    def ids(self) -> list[str]: ...

    def load(self, indices: Sequence[int]) -> Batch:
        """Load these indices as one batch; unreadable images go to ``Batch.errors``, not an exception."""
        ...
