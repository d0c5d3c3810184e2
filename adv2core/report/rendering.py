"""Report rendering: display names and order, number formats, and the table objects that render them.

A :class:`ReportTable` keeps two views of the same numbers: ``records`` (tidy rows with raw floats, what
the CSV holds and what tests parse back) and ``blocks`` (formatted wide tables for Markdown, LaTeX and
Prefect table artifacts). Nothing here queries the store: the builders in :mod:`adv2core.report.tables`
(and the other report modules) fill these objects.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

# ----------------------------------------------------------------------------- names and ordering
ATTACK_ORDER = ("pgd", "adv2", "stadv", "stadv-adv2", "adv2-ens", "adv2-fs")
INTERPRETER_ORDER = ("grad", "cam", "rts", "mask", "rts-aid")
ATTACK_NAMES = {"pgd": "PGD", "adv2": "ADV²", "stadv": "StAdv", "stadv-adv2": "StAdv-ADV²",
                "adv2-ens": "ADV²-Ens", "adv2-fs": "ADV²-FS"}
INTERPRETER_NAMES = {"grad": "Grad", "cam": "CAM", "rts": "RTS", "mask": "MASK", "rts-aid": "RTS-AID"}

DASH = "–"  # an empty cell (no row, or no successful sample)
#: The interpreter of an interpreter-free attack's rows (PGD, StAdv: no interpreter shaped their examples).
NO_SOURCE = "none"


def _order(order: Sequence[str]) -> Callable[[str], tuple[int, str]]:
    return lambda v: (order.index(v) if v in order else len(order), v)


attack_key = _order(ATTACK_ORDER)
interpreter_key = _order(INTERPRETER_ORDER)


def attack_name(a: str) -> str:
    return ATTACK_NAMES.get(a, a)


def interpreter_name(i: str) -> str:
    return DASH if i == NO_SOURCE else INTERPRETER_NAMES.get(i, i)


# ----------------------------------------------------------------------------- number formatting
def _nan(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A distance/IoU/probability with ``digits`` decimals; NaN or None gives the dash."""
    return DASH if _nan(x) else f"{x:.{digits}f}"


def fmt_pct(x: float | None) -> str:
    """A fraction shown as a percentage with one decimal."""
    return DASH if _nan(x) else f"{100.0 * x:.1f}"


def fmt_ci(mean: float | None, lo: float | None, hi: float | None, fmt: Callable[[float | None], str] = fmt_num) -> str:
    """``mean [lo, hi]``; only the mean when the interval is unknown; the dash for no data."""
    if _nan(mean):
        return DASH
    if _nan(lo) or _nan(hi):
        return fmt(mean)
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


def _csv_value(v: Any) -> str:
    """Raw values for CSV: floats round-trip exactly (repr), NaN/None are empty."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


# ----------------------------------------------------------------------------- rendering
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
_LATEX_UNICODE = {"²": r"$^2$", DASH: "--", "↔": r"$\leftrightarrow$", "≥": r"$\geq$", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    out = []
    for ch in text:
        out.append(_LATEX_SPECIAL.get(ch) or _LATEX_UNICODE.get(ch) or ch)
    return "".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


@dataclass
class Block:
    """One rectangular table (a report table may hold several, e.g. one transfer matrix per model)."""

    header: list[str]
    rows: list[list[str]]
    caption: str | None = None

    def markdown(self) -> str:
        lines = []
        if self.caption:
            lines += [f"**{_md_escape(self.caption)}**", ""]
        if not self.rows:
            return "\n".join(lines + ["_(no data)_"])
        lines.append("| " + " | ".join(_md_escape(h) for h in self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in self.rows]
        return "\n".join(lines)

    def latex(self) -> str:
        """A booktabs ``tabular`` (first column left, the rest centred)."""
        if not self.rows:
            return f"% {latex_escape(self.caption or 'table')}: no data"
        spec = "l" * _label_columns(self.header) + "c" * (len(self.header) - _label_columns(self.header))
        lines = []
        if self.caption:
            lines.append(f"% {latex_escape(self.caption)}")
        lines += [
            f"\\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(latex_escape(h) for h in self.header) + r" \\",
            r"\midrule",
        ]
        lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in self.rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines)


_LABEL_HEADERS = {"Model", "Interp.", "Attack", "Source \\ eval", "Metric"}


def _label_columns(header: Sequence[str]) -> int:
    n = 0
    for h in header:
        if h not in _LABEL_HEADERS:
            break
        n += 1
    return max(n, 1)


@dataclass
class ReportTable:
    """One paper table: tidy raw ``records`` (CSV) plus formatted ``blocks`` (Markdown/LaTeX/artifacts)."""

    key: str
    title: str
    note: str
    columns: list[str]  # CSV column order
    records: list[dict[str, Any]]
    blocks: list[Block]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.records

    def markdown(self, level: int = 3) -> str:
        parts = [f"{'#' * level} {self.title}", "", self.note, ""]
        for b in self.blocks or [Block([], [])]:
            parts += [b.markdown(), ""]
        return "\n".join(parts).rstrip() + "\n"

    def latex(self) -> str:
        parts = [f"% {latex_escape(self.title)}", f"% {latex_escape(self.note)}", ""]
        for b in self.blocks:
            parts += [b.latex(), ""]
        return "\n".join(parts).rstrip() + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for r in self.records:
            w.writerow([_csv_value(r.get(c)) for c in self.columns])
        return buf.getvalue()

    def artifact_rows(self) -> list[dict[str, str]]:
        """Formatted rows for a Prefect table artifact (blocks concatenated; the caption as a column)."""
        out: list[dict[str, str]] = []
        many = len(self.blocks) > 1
        for b in self.blocks:
            for r in b.rows:
                row = {"table": b.caption or ""} if many else {}
                row.update(dict(zip(b.header, r)))
                out.append(row)
        return out

    def write(self, out_dir: Path, stem: str) -> dict[str, Path]:
        """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.tex``; returns and remembers the paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        contents = {"md": self.markdown(level=2), "csv": self.csv(), "tex": self.latex()}
        for ext, text in contents.items():
            p = out_dir / f"{stem}.{ext}"
            p.write_text(text, encoding="utf-8", newline="")
            self.files[ext] = p
        return dict(self.files)
