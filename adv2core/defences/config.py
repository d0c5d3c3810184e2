"""Frozen pydantic configs of the detectors (spec 3.3, 3.4); defaults are the spec's values.

Invalid values raise a one-line :class:`~adv2core.errors.ConfigError` through
:func:`adv2core.attacks.config.validate_config` (use it to build these from YAML/dicts).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adv2core.loops import LoopCount

Percent = Annotated[float, Field(gt=0, le=100)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FSConfig(_Frozen):
    """Feature squeezing (Xu et al. NDSS'18) as in spec 3.4.

    ``combinations`` selects detectors by name (``bit3+median2+nlm11-3-4``); None = every combination of
    the squeezers below (:func:`adv2core.defences.squeeze.combinations`).
    """

    bit_depths: tuple[Annotated[int, Field(ge=1, le=8)], ...] = (1, 2, 3, 4, 5)
    medians: tuple[Annotated[int, Field(ge=2, le=15)], ...] = (2, 3)
    #: (search window, patch, strength) of cv2.fastNlMeansDenoisingColored
    nlm: tuple[tuple[int, int, float], ...] = ((11, 3, 2), (11, 3, 4), (13, 3, 2), (13, 3, 4))
    combinations: tuple[str, ...] | None = None
    batch_size: LoopCount = Field(256, description="images per classifier forward when scoring")

    @field_validator("nlm")
    @classmethod
    def _nlm_odd(cls, v: tuple[tuple[int, int, float], ...]) -> tuple[tuple[int, int, float], ...]:
        for search, patch, strength in v:
            if search < 1 or patch < 1 or search % 2 == 0 or patch % 2 == 0:
                raise ValueError(f"nlm search window and patch must be positive odd integers, got ({search}, {patch})")
            if strength <= 0:
                raise ValueError(f"nlm strength must be > 0, got {strength}")
        return v

    @model_validator(mode="after")
    def _names(self) -> "FSConfig":
        if self.combinations is not None:
            from adv2core.defences.squeeze import combination_names

            known = set(combination_names(self))
            bad = [c for c in self.combinations if c not in known]
            if bad:
                raise ValueError(f"unknown feature-squeezing combination {bad[0]!r} (names look like 'bit3+median2+nlm11-3-4')")
        return self


class LIDConfig(_Frozen):
    """LID detector (Ma et al. ICLR'18) as in spec 3.4."""

    ks: tuple[Annotated[int, Field(ge=1)], ...] = (10, 20, 30, 40, 50)
    minibatch: LoopCount = Field(100, description="images per minibatch; neighbours come from the benign minibatch")
    noise_eps: float = Field(0.031, gt=0, le=1, description="negatives also include benign + U(-eps, eps)")
    cv_folds: int = Field(5, ge=2, description="folds of the cross-validation that picks k")
    layers: tuple[str, ...] | None = Field(None, description="module names (model.get_submodule); None = default list")
    include_logits: bool = True
    seed: int = 0

    @field_validator("ks")
    @classmethod
    def _nonempty(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("ks must list at least one neighbour count")
        return v


class EnsembleConfig(_Frozen):
    """Ensemble-interpreter disagreement score (see :mod:`adv2core.defences.ensemble`)."""

    ks: tuple[Percent, ...] = (10, 20, 30, 40, 50)
    size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = Field(
        None, description="common (h, w) the saliencies are resized to; None = the smallest native size"
    )


class CalibrationConfig(_Frozen):
    fpr: float = Field(0.05, gt=0, lt=1, description="target false-positive rate on benign calibration images")
    alpha: float = Field(0.05, gt=0, lt=1, description="1 - confidence of the Wilson intervals")


#: Detectors the pipeline's defence stage can run (``defences: [...]`` in a run config).
DETECTOR_NAMES = ("ensemble", "fs", "lid")
#: Xu et al.'s joint ImageNet detector: the stage's default feature-squeezing combination.
JOINT_FS = "bit5+median2+nlm11-3-4"


class DefenceSettings(_Frozen):
    """Settings of the pipeline's defence stage (``defence_settings`` in a run config).

    Not part of the run's config hash (adding a detector must not recompute the attacks): each detector's
    rows carry their own settings hash instead (:func:`adv2core.defences.stage.detector_hash`).
    """

    calibration_images: int = Field(
        100, ge=4, description="benign images drawn right after the run's selected ones (same split; fewer when "
                               "the split ends first); LID fits on the first lid_fit_fraction of them, thresholds "
                               "use the rest")
    cross_fit_folds: int | None = Field(
        None, ge=2, description="None: calibrate on the calibration_images that follow the run's selection. K: "
                                "K-fold cross-fitting over the evaluated benign images themselves, for splits too "
                                "small to hold a disjoint calibration set (imagenet-samples): each image's flags "
                                "come from a threshold (and, for LID, a fit) computed on the other K - 1 folds only")
    lid_fit_fraction: float = Field(0.5, gt=0, lt=1, description="share of the calibration images LID is fitted on")
    lid_pgd_steps: int | None = Field(
        None, gt=0, description="PGD steps of LID's adversarial fit examples (None: the attack preset's PGD steps)")
    fs: FSConfig = FSConfig(combinations=(JOINT_FS,))
    lid: LIDConfig = LIDConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    calibration: CalibrationConfig = CalibrationConfig()


class DefencesConfig(_Frozen):
    fs: FSConfig = FSConfig()
    lid: LIDConfig = LIDConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    calibration: CalibrationConfig = CalibrationConfig()
