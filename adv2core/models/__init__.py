"""Classifiers: one wrapper (:class:`Classifier`), one registry of model plug-ins, the surrogate twin."""

from adv2core.models.classifier import Classifier, HookedClassifier
from adv2core.models.registry import (
    EMBEDDED_MODELS, MODEL_NAMES, REAL_MODELS, ModelSpec, describe_models, load_model, register_model, train_embedded,
)
from adv2core.models.surrogate import SmoothReLUMode, smooth_hardtanh, smooth_relu, smooth_relu6
from adv2core.models.training import TrainConfig

__all__ = [
    "Classifier", "HookedClassifier", "EMBEDDED_MODELS", "MODEL_NAMES", "REAL_MODELS", "ModelSpec", "describe_models",
    "load_model", "register_model", "train_embedded",
    "SmoothReLUMode", "smooth_hardtanh", "smooth_relu", "smooth_relu6", "TrainConfig",
]
