"""Interpreters: Grad, CAM, RTS, MASK on one base (see :mod:`adv2core.interpreters.base`); built from an
:class:`InterpreterSpec` by :func:`build_interpreter` (see :mod:`adv2core.interpreters.registry`)."""

from adv2core.interpreters.base import Interpreter, minmax_normalize
from adv2core.interpreters.cam import CAM
from adv2core.interpreters.grad import Grad
from adv2core.interpreters.registry import (
    INTERPRETER_NAMES,
    InterpreterSpec,
    build_interpreter,
    interpreter_class,
    interpreter_spec,
)

__all__ = [
    "Interpreter", "minmax_normalize", "CAM", "Grad", "INTERPRETER_NAMES", "InterpreterSpec", "build_interpreter",
    "interpreter_class", "interpreter_spec",
]
