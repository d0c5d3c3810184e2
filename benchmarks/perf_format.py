"""Number formatting and the PASS/FAIL verdict shared by the pipeline benchmarks' Markdown."""

from __future__ import annotations


def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
