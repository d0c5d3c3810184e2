"""Classifiers: one wrapper (:class:`Classifier`), a registry by name, the surrogate twin."""

from adv2core.models.classifier import Classifier
from adv2core.models.registry import EMBEDDED_MODELS, MODEL_NAMES, REAL_MODELS, load_model, train_embedded
from adv2core.models.surrogate import SmoothReLUMode, SurrogateTwin, smooth_relu
from adv2core.models.training import TrainConfig

__all__ = [
    "Classifier", "EMBEDDED_MODELS", "MODEL_NAMES", "REAL_MODELS", "load_model", "train_embedded",
    "SmoothReLUMode", "SurrogateTwin", "smooth_relu", "TrainConfig",
]
