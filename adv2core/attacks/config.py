"""Every attack hyper-parameter, as frozen pydantic models whose defaults are the paper's code values.

The defaults reproduce spec section 2.5 (ADV^2 per interpreter), section 3.2 (StAdv and StAdv-ADV^2)
and section 4 (the PGD baseline, reported at step 1200) *verbatim*; :data:`PAPER` is therefore simply
``AttacksConfig()``. The ``quick`` attack preset (``adv2core/configs/attacks/quick.yaml``) scales the step
counts down for the 64x64 embedded set on a laptop, ``paper`` spells the paper values out explicitly.

Invalid values (eps <= 0 or > 1, a step count <= 0, mismatched schedule lengths, unknown keys) raise a
one-line :class:`~adv2core.errors.ConfigError` through :func:`validate_config` / :func:`load_preset`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adv2core.errors import ConfigError, validate_config
from adv2core.loops import LoopCount, LoopCountOrZero

Eps = Annotated[float, Field(gt=0, le=1, description="L-inf radius in [0,1] pixel units")]
Alpha = Annotated[float, Field(gt=0, le=1, description="sign step size")]
Steps = LoopCount  # a loop count: marked in the schema, so ``step_cap`` caps it (adv2core.loops)
Pixels = Annotated[int, Field(gt=0)]
Weight = Annotated[float, Field(ge=0)]
Reduction = Literal["sse", "mse"]
QuantMode = Literal["round", "trunc"]
Neighbourhood = Literal["diagonal", "4-connected"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _same_length(a: tuple, b: tuple, what: str) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"{what}: need one step count per lambda (got {len(a)} lambdas, {len(b)} step counts)")


# ----------------------------------------------------------------------------------------------------
# L-inf sign attacks
# ----------------------------------------------------------------------------------------------------
class PGDConfig(_Frozen):
    """Targeted L-inf PGD baseline (spec 4): CE to c_t, sign steps, no random start.

    The official baseline runs 3000 steps and reports the step-1200 snapshot, so ``steps=1200``.
    """

    eps: Eps = 0.031
    alpha: Alpha = 1 / 255
    steps: Steps = 1200
    clip: bool = True
    early_stop: bool = Field(False, description="freeze a sample once argmax == c_t (off in the paper)")


class ADV2GradConfig(_Frozen):
    """ADV^2 against Grad (spec 2.1, ``rev2/gs/gs_acid_attack.py``)."""

    eps: Eps = 0.031
    alpha: Alpha = 1 / 255
    stage1_steps: Steps = 300
    stage1_clip: bool = Field(False, description="the official stage 1 projects on the eps-ball but skips the [0,1] clip")
    lambdas: tuple[Weight, ...] = (0.001, 0.004, 0.01, 0.05)
    stage2_steps: tuple[Steps, ...] = (301, 201, 101, 101)
    reduction: Reduction = "sse"
    select_every: Steps = 10
    select_p_threshold: float = Field(0.8, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="0.05 = the v3 / ISIC variant (0.95 on c_t)")
    early_stop: bool = False
    stage2_alpha: Alpha | None = Field(None, description="stage-2 sign step (None = alpha, the paper)")

    @model_validator(mode="after")
    def _lengths(self) -> "ADV2GradConfig":
        _same_length(self.lambdas, self.stage2_steps, "adv2.grad")
        return self


class ADV2CAMConfig(_Frozen):
    """ADV^2 against CAM (spec 2.2): stage 2 weight c_now rises linearly c -> growth*c."""

    eps: Eps = 0.031
    alpha: Alpha = 1 / 255
    stage1_steps: Steps = 400
    stage1_clip: bool = True
    stage2_steps: Steps = 1200
    c: Weight = 5.0
    c_growth: float = Field(2.0, gt=0)
    reduction: Reduction = "mse"
    early_stop: bool = False


class ADV2RTSConfig(_Frozen):
    """ADV^2 against RTS (spec 2.3): as CAM plus ``extra_weight`` x CE of the RTS encoder head."""

    eps: Eps = 0.031
    alpha: Alpha = 1 / 255
    stage1_steps: Steps = 300
    stage1_clip: bool = True
    stage2_steps: Steps = 1000
    c: Weight = 5.0
    c_growth: float = Field(2.0, gt=0)
    extra_weight: Weight = 0.1
    reduction: Reduction = "mse"
    early_stop: bool = False


class ADV2MaskConfig(_Frozen):
    """ADV^2 against MASK v2 (spec 2.4): bilevel attack with line search and best-snapshot selection."""

    eps: Eps = 0.031
    alpha: Alpha = 1 / 255
    stage1_steps: Steps = 400
    stage1_clip: bool = True
    stage2_steps: Steps = 1000
    pred_step: float = Field(0.05, gt=0, description="L2-normalised prediction step on the CW margin")
    inner_plain: LoopCountOrZero = 4
    inner_unrolled: Steps = 4
    ls_max: float = Field(0.08, gt=0)
    ls_max_late: float = Field(0.04, gt=0)
    ls_late_fraction: float = Field(0.9, ge=0, le=1, description="iterations >= this fraction use ls_max_late")
    ls_bisections: Steps = 10
    margin_threshold: float = -10.0
    resolve_every: Steps = 50
    resolve_quantize: QuantMode | None = "trunc"
    code_compatible: bool = Field(False, description="batch-summed line-search condition of the official code")
    early_stop: bool = False

# ----------------------------------------------------------------------------------------------------
# Adaptive ADV^2 (issue 13): against an interpreter ensemble, and against feature squeezing
# ----------------------------------------------------------------------------------------------------
#: Interpreters a sign-step joint attack can differentiate through in one pass (MASK is bilevel).
ENSEMBLE_MEMBERS = ("grad", "cam", "rts", "rts-aid")


class ADV2EnsembleConfig(_Frozen):
    """ADV^2 against several interpreters at once (:class:`~adv2core.attacks.adaptive.ADV2Ensemble`):
    stage 2 minimises CE + c_now * sum_k w_k * MSE(g_k(x; c_t), m_k) [+ extra_weight * CE(RTS encoder)],
    c_now linear c -> growth * c as CAM/RTS. ``members``/``weights`` pair up; the cell's interpreter
    must be a member (its map is the one the cell evaluates)."""

    eps: Eps = 0.031
    alpha: Alpha = 1 / 255
    members: tuple[str, ...] = ("grad", "cam")
    weights: tuple[Weight, ...] = (1.0, 1.0)
    stage1_steps: Steps = 300
    stage1_clip: bool = True
    stage2_steps: Steps = 1000
    c: Weight = 5.0
    c_growth: float = Field(2.0, gt=0)
    extra_weight: Weight = Field(0.1, description="x CE of the RTS encoder head, when an RTS member is attacked")
    reduction: Reduction = "mse"
    early_stop: bool = False

    @model_validator(mode="after")
    def _members(self) -> "ADV2EnsembleConfig":
        if len(self.members) < 2 or len(set(self.members)) != len(self.members):
            raise ValueError(f"members must name two or more distinct interpreters, got {list(self.members)}")
        bad = [m for m in self.members if m not in ENSEMBLE_MEMBERS]
        if bad:
            raise ValueError(f"member {bad[0]!r} cannot be attacked jointly; choose among {', '.join(ENSEMBLE_MEMBERS)}")
        if len(self.weights) != len(self.members):
            raise ValueError(f"need one weight per member (got {len(self.weights)} weights, {len(self.members)} members)")
        if not any(w > 0 for w in self.weights):
            raise ValueError("at least one member weight must be > 0")
        return self


class FSTermConfig(_Frozen):
    """The feature-squeezing term of the adaptive ADV^2 (spec 3.4, ``*_attack_acid_fs_untargeted.py``):

        fs_weight * [ bit_weight * relu(D(bit_d) - margin * bit_threshold)
                      + median_weight * sum_k median_mix_k * relu(D(median_k) - margin * median_threshold_k) ]

    with D(s) = ||softmax f(x) - softmax f(s(x))||_1 through straight-through squeezers (see
    :mod:`adv2core.defences.squeeze_diff`). Defaults: the paper's CAM/Grad weights (40, 12; RTS 50, 10),
    mixes (0.75, 0.25), margin 0.75 and its ResNet-50 thresholds."""

    fs_weight: Weight = 1.0
    bit_depth: int = Field(3, ge=1, le=8, description="bit depth of the squeezer the prediction must survive")
    bit_weight: Weight = 40.0
    bit_threshold: float = Field(1.5924778, ge=0, le=2)
    median_sizes: tuple[Annotated[int, Field(ge=2, le=15)], ...] = (2, 3)
    median_mix: tuple[Weight, ...] = (0.75, 0.25)
    median_thresholds: tuple[Annotated[float, Field(ge=0, le=2)], ...] = (0.96955955, 1.3244714)
    median_weight: Weight = 12.0
    margin: float = Field(0.75, ge=0, description="a term is active above margin x its FS threshold")
    median_backward: Literal["exact", "identity"] = Field(
        "exact", description="exact: gradient to the selected (median) pixel; identity: BPDA")
    fs_stage1: bool = Field(True, description="also add the term in the warm start (the paper's stage 1 works on the squeezed image)")

    @model_validator(mode="after")
    def _median_lengths(self) -> "FSTermConfig":
        if not (len(self.median_sizes) == len(self.median_mix) == len(self.median_thresholds)):
            raise ValueError("median_sizes, median_mix and median_thresholds need one entry each per median filter")
        return self


class ADV2FSGradConfig(ADV2GradConfig, FSTermConfig):
    """ADV^2-Grad plus the feature-squeezing term."""


class ADV2FSCAMConfig(ADV2CAMConfig, FSTermConfig):
    """ADV^2-CAM plus the feature-squeezing term."""


class ADV2FSRTSConfig(ADV2RTSConfig, FSTermConfig):
    """ADV^2-RTS plus the feature-squeezing term (paper RTS weights 50 / 10, c 1 -> 2)."""

    bit_weight: Weight = 50.0
    median_weight: Weight = 10.0
    c: Weight = 1.0


def interpreter_section(interpreter_name: str) -> str:
    """The per-interpreter config section an interpreter's attacks read: a hardened RTS (``rts-aid``) is
    attacked with RTS's settings, so before/after-AID numbers differ only in the interpreter."""
    return "rts" if interpreter_name == "rts-aid" else interpreter_name


# ----------------------------------------------------------------------------------------------------
# Spatial (flow-field) attacks
# ----------------------------------------------------------------------------------------------------
class _FlowCommon(_Frozen):
    lr: float = Field(0.01, gt=0)
    amsgrad: bool = True
    tau: Weight = 5e-4
    init_range: float = Field(0.1, ge=0, description="flow initialised U(-r, r) pixels, seeded per image")
    neighbourhood: Neighbourhood = "diagonal"


class StAdvConfig(_FlowCommon):
    """Plain StAdv (spec 3.2): Adam on the flow field, CE(c_t) + tau * L_flow."""

    steps: Steps = 300
    early_stop: bool = False


class StAdvADV2GradConfig(_FlowCommon):
    stage1_steps: Steps = 450
    lambdas: tuple[Weight, ...] = (0.003, 0.01, 0.05, 0.2)
    stage2_steps: tuple[Steps, ...] = (301, 201, 101, 101)
    reduction: Reduction = "sse"
    select_every: Steps = 10
    select_p_threshold: float = Field(0.75, ge=0, le=1)
    early_stop: bool = False

    @model_validator(mode="after")
    def _lengths(self) -> "StAdvADV2GradConfig":
        _same_length(self.lambdas, self.stage2_steps, "stadv_adv2.grad")
        return self


class StAdvADV2CAMConfig(_FlowCommon):
    stage1_steps: Steps = 200
    stage2_steps: Steps = 600
    ce_weight: Weight = 2.0
    c: Weight = 5.0
    c_growth: float = Field(2.0, gt=0)
    reduction: Reduction = "mse"
    early_stop: bool = False


class StAdvADV2RTSConfig(_FlowCommon):
    stage1_steps: Steps = 200
    stage2_steps: Steps = 600
    ce_weight: Weight = 1.0
    extra_weight: Weight = 0.1
    c: Weight = 5.0
    c_growth: float = Field(2.0, gt=0)
    reduction: Reduction = "mse"
    early_stop: bool = False


class StAdvADV2MaskConfig(_FlowCommon):
    stage1_steps: Steps = 400
    margin_clip: float = -5.0
    stage2_steps: Steps = 1000
    stage2_lr: float = Field(0.005, gt=0)
    inner_plain: LoopCountOrZero = 4
    inner_unrolled: Steps = 4
    inner_lr: float = Field(0.01, gt=0, description="custom-Adam lr of the inner mask steps")
    int_weight: Weight = 500.0
    flow_weight: Weight = 0.004
    flow_weight_densenet: Weight = 0.005
    resolve_every: Steps = 50
    resolve_quantize: QuantMode | None = None
    early_stop: bool = False

# ----------------------------------------------------------------------------------------------------
# Targets and the whole preset
# ----------------------------------------------------------------------------------------------------
class ShapeConfig(_Frozen):
    """Random-shape target maps (spec 3.1), in units of a 224-pixel canvas."""

    canvas: Pixels = 224
    centre: tuple[float, float] = (40.0, 184.0)
    radius: tuple[float, float] = (30.0, 60.0)
    half_side: tuple[float, float] = (30.0, 60.0)
    max_rotation_deg: float = 30.0
    inside: tuple[float, float] = (0.9, 1.0)
    outside: tuple[float, float] = (0.0, 0.1)


class TargetConfig(_Frozen):
    """Which target map m_t the ADV^2 attacks aim at (spec 1.6)."""

    kind: Literal["benign", "target-image", "shape"] = "benign"
    shape: ShapeConfig = ShapeConfig()


class ADV2Configs(_Frozen):
    grad: ADV2GradConfig = ADV2GradConfig()
    cam: ADV2CAMConfig = ADV2CAMConfig()
    rts: ADV2RTSConfig = ADV2RTSConfig()
    mask: ADV2MaskConfig = ADV2MaskConfig()


class ADV2FSConfigs(_Frozen):
    grad: ADV2FSGradConfig = ADV2FSGradConfig()
    cam: ADV2FSCAMConfig = ADV2FSCAMConfig()
    rts: ADV2FSRTSConfig = ADV2FSRTSConfig()


class StAdvADV2Configs(_Frozen):
    grad: StAdvADV2GradConfig = StAdvADV2GradConfig()
    cam: StAdvADV2CAMConfig = StAdvADV2CAMConfig()
    rts: StAdvADV2RTSConfig = StAdvADV2RTSConfig()
    mask: StAdvADV2MaskConfig = StAdvADV2MaskConfig()


class AttacksConfig(_Frozen):
    """One preset: every attack's configuration, the target-map choice, and which interpreter preset
    (``adv2core/configs/interpreters/<name>.yaml``: MASK solver length, RTS recipe) the bench cell builds
    interpreters with (None: the model's default, ``quick`` for embedded models)."""

    name: str = "paper"
    pgd: PGDConfig = PGDConfig()
    adv2: ADV2Configs = ADV2Configs()
    stadv: StAdvConfig = StAdvConfig()
    stadv_adv2: StAdvADV2Configs = StAdvADV2Configs()
    adv2_ens: ADV2EnsembleConfig = ADV2EnsembleConfig()
    adv2_fs: ADV2FSConfigs = ADV2FSConfigs()
    target: TargetConfig = TargetConfig()
    interpreter_preset: str | None = None


PAPER = AttacksConfig()

# ----------------------------------------------------------------------------------------------------
# Presets (validation: adv2core.errors.validate_config, re-exported here)
# ----------------------------------------------------------------------------------------------------
PRESETS = ("quick", "paper", "real")  # the shipped ones; adv2core.presets.names("attacks") lists all


def load_preset(preset: str | Path | AttacksConfig | dict | None = "paper") -> AttacksConfig:
    """A preset by name (shipped ``quick``/``paper``/``real`` or one in ``$ADV2_CONFIG_DIR/attacks``, through
    :mod:`adv2core.presets`), a YAML path, a dict or a config."""
    from adv2core import presets

    if preset is None:
        return PAPER
    if isinstance(preset, AttacksConfig):
        return preset
    if isinstance(preset, dict):
        return validate_config(AttacksConfig, preset)
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"attack preset file not found: {path}")
        data, stem = presets.read_file(path, "attack preset"), path.stem
    else:
        data, stem = presets.load("attacks", str(preset)), str(preset)
    data.setdefault("name", stem)
    return validate_config(AttacksConfig, data)
