"""Interpreters: Grad, CAM, RTS, MASK on one base (see :mod:`adv2core.interpreters.base`)."""

from adv2core.interpreters.base import Interpreter, minmax_normalize
from adv2core.interpreters.cam import CAM
from adv2core.interpreters.grad import Grad
from adv2core.interpreters.registry import INTERPRETER_NAMES, build_interpreter, interpreter_class

__all__ = ["Interpreter", "minmax_normalize", "CAM", "Grad", "INTERPRETER_NAMES", "build_interpreter", "interpreter_class"]
