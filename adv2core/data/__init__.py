"""Datasets behind one contract (:class:`ImageDataset`): the embedded procedural set and real-data loaders."""

from adv2core.data.folders import CIFAR10Dataset, ImageFolderDataset, ISIC_CLASSES, ISICDataset, decode_rgb
from adv2core.data.imagenet_samples import ImageNetSamplesDataset, prepare_imagenet_samples
from adv2core.data.registry import DATASET_NAMES, get_dataset
from adv2core.data.sharding import iter_batches, shard_bounds, shard_indices
from adv2core.data.synthetic import (
    GENERATOR_VERSION,
    SHAPE_NAMES,
    EmbeddedDataConfig,
    EmbeddedDataset,
    embedded_cache_path,
    generate_split,
    prepare_embedded,
)
from adv2core.data.types import Batch, ImageDataset, ImageError

__all__ = [
    "Batch",
    "CIFAR10Dataset",
    "DATASET_NAMES",
    "EmbeddedDataConfig",
    "EmbeddedDataset",
    "GENERATOR_VERSION",
    "ISICDataset",
    "ISIC_CLASSES",
    "ImageDataset",
    "ImageError",
    "ImageFolderDataset",
    "ImageNetSamplesDataset",
    "SHAPE_NAMES",
    "decode_rgb",
    "embedded_cache_path",
    "generate_split",
    "get_dataset",
    "iter_batches",
    "prepare_embedded",
    "prepare_imagenet_samples",
    "shard_bounds",
    "shard_indices",
]
