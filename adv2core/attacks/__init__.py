"""Attacks: PGD, ADV^2 (Grad, CAM, RTS, MASK), StAdv and StAdv-ADV^2, on one base.

Build one by name with :func:`build_attack` (``pgd``, ``adv2``, ``stadv``, ``stadv-adv2``, ``adv2-fs``, ``adv2-ens``) or use the
classes directly (torchattacks-like: hyper-parameters in the constructor, paper defaults). Every attack
returns an :class:`AttackResult`. Hyper-parameters and presets: :mod:`adv2core.attacks.config`.
"""

from adv2core.attacks.adaptive import ADV2Ensemble, ADV2FSCAM, ADV2FSGrad, ADV2FSRTS, fs_term
from adv2core.attacks.adv2 import ADV2, ADV2CAM, ADV2Grad, ADV2RTS, BestIterate, JointAttack
from adv2core.attacks.base import Attack
from adv2core.attacks.config import PAPER, AttacksConfig, load_preset, validate_config
from adv2core.attacks.losses import InterpretationLoss, InterpretationTerm, cross_entropy, cw_margin
from adv2core.attacks.mask import ADV2Mask, StAdvADV2Mask
from adv2core.attacks.params import FlowParam, SignParam, flow_loss, warp
from adv2core.attacks.pgd import PGD
from adv2core.attacks.registry import ATTACK_NAMES, attack_class, attack_config, build_attack
from adv2core.attacks.result import AttackResult
from adv2core.attacks.stadv import StAdv, StAdvADV2, StAdvADV2CAM, StAdvADV2Grad, StAdvADV2RTS
from adv2core.attacks.targets import (
    benign_maps,
    check_target_map,
    shape_maps,
    target_classes,
    target_image_maps,
)

__all__ = [
    "ADV2", "ADV2CAM", "ADV2Ensemble", "ADV2FSCAM", "ADV2FSGrad", "ADV2FSRTS", "fs_term", "ADV2Grad", "ADV2Mask", "ADV2RTS", "ATTACK_NAMES", "Attack", "AttackResult",
    "AttacksConfig", "BestIterate", "FlowParam", "InterpretationLoss", "InterpretationTerm", "JointAttack",
    "PAPER", "PGD", "SignParam", "StAdv", "StAdvADV2", "StAdvADV2CAM", "StAdvADV2Grad", "StAdvADV2Mask",
    "StAdvADV2RTS", "attack_class", "attack_config", "benign_maps", "build_attack", "check_target_map",
    "cross_entropy", "cw_margin", "flow_loss", "load_preset", "shape_maps", "target_classes",
    "target_image_maps", "validate_config", "warp",
]
