"""What counts as a transient failure, in one place, and the out-of-memory policy of an attack call.

**Transient** (worth a retry of the whole shard task, never stored as rows):

* out of memory: ``torch.OutOfMemoryError`` (torch >= 2.5), ``torch.cuda.OutOfMemoryError``, and any
  ``RuntimeError`` whose message contains "out of memory" (older torch, MPS, cuDNN/cuBLAS allocation
  failures surface that way);
* ``OSError`` (I/O trouble: a network file system, a full disk that gets freed, a lost connection),
  except the ones a retry cannot fix: a missing file or folder, a permission refusal
  (``FileNotFoundError``, ``NotADirectoryError``, ``IsADirectoryError``, ``PermissionError``).

Never transient: :class:`~adv2core.errors.Adv2Error` (user and configuration problems) and every other
exception (a deterministic bug in an attack: the bench cell stores it as ``error`` rows).

The Prefect tasks' ``retry_condition_fn`` (tasks/common.py) and the inline engine both ask
:func:`is_transient`; :func:`call_with_oom_policy` implements ``attacks.oom: retry | split``.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch

from adv2core.errors import Adv2Error

OomPolicy = Literal["retry", "split"]
OOM_POLICIES: tuple[str, ...] = ("retry", "split")


def _oom_types() -> tuple[type[BaseException], ...]:
    types_: list[type[BaseException]] = []
    for owner, name in ((torch, "OutOfMemoryError"), (torch.cuda, "OutOfMemoryError")):
        t = getattr(owner, name, None)
        if isinstance(t, type) and issubclass(t, BaseException):
            types_.append(t)
    return tuple(types_)


def is_oom(exc: BaseException | None) -> bool:
    """An out-of-memory error of torch / CUDA (see the module docstring)."""
    if exc is None:
        return False
    if isinstance(exc, _oom_types()):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def is_transient(exc: BaseException | None) -> bool:
    """Worth a retry: out of memory and I/O trouble. Never user errors (Adv2Error) or bugs."""
    if exc is None or isinstance(exc, Adv2Error):
        return False
    return is_oom(exc) or (isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS))


_PERMANENT_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def call_with_oom_policy(fn: Callable[[slice], Any], n: int, merge: Callable[[list[Any]], Any],
                         policy: str = "retry") -> Any:
    """``fn(slice(0, n))``; on out-of-memory with ``policy='split'``, the halves, recursively down to one image.

    ``fn`` must treat images independently (per-image seeds by id), so the merged result of the halves
    equals the unsplit one. With ``retry`` (default) or at one image, the error propagates to the task's
    retry policy.
    """
    if policy not in OOM_POLICIES:
        raise ValueError(f"unknown attacks.oom policy {policy!r}; use one of: {', '.join(OOM_POLICIES)}")

    def run(lo: int, hi: int) -> list[Any]:
        try:
            return [fn(slice(lo, hi))]
        except Exception as exc:
            if policy != "split" or hi - lo <= 1 or not is_oom(exc):
                raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mid = (lo + hi) // 2
        return run(lo, mid) + run(mid, hi)

    parts = run(0, n)
    return parts[0] if len(parts) == 1 else merge(parts)


def merge_attack_results(parts: list[Any]) -> Any:
    """One :class:`~adv2core.attacks.result.AttackResult` from those of consecutive slices of a batch."""
    from dataclasses import fields, replace

    first = parts[0]
    out: dict[str, Any] = {}
    for f in fields(first):
        vals = [getattr(p, f.name) for p in parts]
        if f.name == "seconds":
            out[f.name] = float(sum(vals))
        elif f.name == "reasons":
            out[f.name] = [r for v in vals for r in v]
        elif f.name == "extras":
            out[f.name] = {k: torch.cat([v[k] for v in vals]) if all(isinstance(v.get(k), torch.Tensor) and
                           v[k].dim() and v[k].shape[0] == len(p) for v, p in zip(vals, parts)) else first.extras[k]
                           for k in first.extras}
        elif all(isinstance(v, torch.Tensor) for v in vals):
            out[f.name] = torch.cat(vals)
        else:
            out[f.name] = None if any(v is None for v in vals) else vals[0]
    return replace(first, **out)


__all__ = ["merge_attack_results", "OOM_POLICIES", "OomPolicy", "call_with_oom_policy", "is_oom", "is_transient"]
