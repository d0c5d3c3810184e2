"""Loop counts are marked in the config schema; the step cap touches marked fields and nothing else.

A field is a loop count when its pydantic ``Field`` carries ``json_schema_extra={"loop_count": True}``
(it shows in the JSON schema as ``"loop_count": true``). Use :data:`LoopCount` (a positive int),
:data:`LoopCountOrZero`, or ``Field(..., **LOOP)`` on a plain field. A ``tuple[LoopCount, ...]`` / list of
them is capped element-wise. Field *names* play no part: a new field called ``foo_steps`` is not capped
unless it is marked, and a marked field is capped whatever its name.

:func:`cap_loops` walks a mapping alongside its schema (a pydantic model class, or a mapping from
section name to model class), descending into nested model fields.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Mapping, Union

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

#: Field metadata that marks a loop count: ``Field(4, ge=0, **LOOP)``.
LOOP: dict[str, Any] = {"json_schema_extra": {"loop_count": True}}
#: A loop count (steps, iterations, periods, inner solver steps, bisections), > 0.
LoopCount = Annotated[int, Field(gt=0, json_schema_extra={"loop_count": True})]
#: A loop count that may be 0 (e.g. plain inner steps before the unrolled ones).
LoopCountOrZero = Annotated[int, Field(ge=0, json_schema_extra={"loop_count": True})]

Schema = Union[type[BaseModel], Mapping[str, type[BaseModel]]]


def _marked(info: Any) -> bool:
    extra = getattr(info, "json_schema_extra", None)
    return isinstance(extra, dict) and extra.get("loop_count") is True


def _annotated_marked(tp: Any) -> bool:
    """``Annotated[int, Field(..., loop_count)]`` (the element type of a tuple/list field)."""
    if typing.get_origin(tp) is Annotated:
        return any(isinstance(m, FieldInfo) and _marked(m) for m in typing.get_args(tp)[1:])
    return False


def _items_marked(annotation: Any) -> bool:
    """A tuple/list whose element type is a marked loop count (``tuple[LoopCount, ...]``)."""
    for tp in _union_members(annotation):
        if typing.get_origin(tp) in (tuple, list):
            args = [a for a in typing.get_args(tp) if a is not Ellipsis]
            if args and all(_annotated_marked(a) for a in args):
                return True
    return False


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for tp in _union_members(annotation):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
    return None


def _cap_value(v: Any, cap: int) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return min(v, cap)
    if isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return type(v)(min(x, cap) for x in v)
    return v


def loop_fields(schema: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every marked loop count in ``schema`` (nested models included)."""
    out: list[str] = []
    for name, info in schema.model_fields.items():
        if _marked(info) or _items_marked(info.annotation):
            out.append(prefix + name)
        elif (sub := _model_of(info.annotation)) is not None:
            out += loop_fields(sub, f"{prefix}{name}.")
    return out


def cap_loops(data: Mapping[str, Any], schema: Schema, cap: int | None) -> dict[str, Any]:
    """Copy of ``data`` with every field that ``schema`` marks as a loop count capped at ``cap``."""
    if cap is None:
        return dict(data)
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        return {k: cap_loops(v, schema[k], cap) if k in schema and isinstance(v, Mapping) else v
                for k, v in data.items()}
    out = dict(data)
    for name, info in schema.model_fields.items():
        if name not in out:
            continue
        v = out[name]
        if _marked(info) or _items_marked(info.annotation):
            out[name] = _cap_value(v, cap)
        elif isinstance(v, Mapping) and (sub := _model_of(info.annotation)) is not None:
            out[name] = cap_loops(v, sub, cap)
    return out


__all__ = ["LOOP", "LoopCount", "LoopCountOrZero", "cap_loops", "loop_fields"]
