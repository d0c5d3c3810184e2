"""Cells of degenerate interpreters (``gates.on_degenerate: mark``), struck out in every table and plot.

The preflight stage records each interpreter's gate report in the run's ``runs.preflight`` JSON
(:mod:`adv2core.gates`). A marked (model, interpreter) cell still has its rows in the store, but no
table or plot shows its numbers as plain values: Markdown cells are ``~~struck~~``, LaTeX cells get
``\\sout``-free strike text ``[degenerate]``, CSV records carry a ``degenerate`` column with the reason,
plots hatch or grey the bars and lines and add "(degenerate)" to the labels.
"""

from __future__ import annotations

import json
from typing import Any

from adv2core.report.rendering import DASH, INTERPRETER_NAMES, ReportTable, interpreter_name

Marks = dict[tuple[str, str], str]  # (model, interpreter) -> reason


def cells_with_status(run: dict[str, Any], status: str) -> dict[tuple[str, str], str]:
    """``(model, interpreter) -> reason`` of the interpreters whose preflight report in a ``runs`` row has
    ``status`` (empty when the run has no preflight record)."""
    try:
        pre = json.loads(run.get("preflight") or "{}") or {}
    except ValueError:
        return {}
    out: dict[tuple[str, str], str] = {}
    for model, rep in (pre.get("models") or {}).items():
        for interp, r in ((rep or {}).get("interpreters") or {}).items():
            if (r or {}).get("status") == status:
                out[(model, interp)] = str(r.get("reason") or status)
    return out


def marks_from_run(run: dict[str, Any]) -> Marks:
    """The degenerate cells of a ``runs`` row (empty when the run has no preflight record)."""
    return cells_with_status(run, "degenerate")


def strike(text: str) -> str:
    return text if text in ("", DASH) else f"~~{text}~~"


def interp_from_label(label: str) -> str | None:
    """The interpreter key of a table label (``RTS-AID`` -> ``rts-aid``), None for other text."""
    for key, name in INTERPRETER_NAMES.items():
        if label == name:
            return key
    return label if label in INTERPRETER_NAMES else None


def apply_marks(table: ReportTable, marks: Marks) -> ReportTable:
    """Strike out marked cells in ``table`` in place (records get ``degenerate``); returns it."""
    if not marks:
        return table
    for rec in table.records:
        model = rec.get("model")
        interps = [rec.get(k) for k in ("interpreter", "source", "eval_interpreter") if rec.get(k)]
        reasons = [marks[(model, i)] for i in interps if (model, i) in marks]
        rec["degenerate"] = "; ".join(dict.fromkeys(reasons)) or None
    if "degenerate" not in table.columns:
        table.columns.append("degenerate")
    notes = []
    for block in table.blocks:
        header = block.header
        if len(header) >= 2 and header[:2] == ["Model", "Interp."]:
            for row in block.rows:
                key = (row[0], interp_from_label(row[1]) or row[1])
                if key in marks:
                    row[2:] = [strike(c) for c in row[2:]]
                    row[1] = f"{row[1]} (degenerate)"
        elif header and header[0] == "Source \\ eval" and block.caption:
            model = block.caption.split(" / ")[0]
            bad_cols = {n for n, h in enumerate(header) if (model, interp_from_label(h) or "") in marks}
            for row in block.rows:
                src_bad = (model, interp_from_label(row[0]) or "") in marks
                for n in range(1, len(row)):
                    if src_bad or n in bad_cols:
                        row[n] = strike(row[n])
    for (model, interp), reason in sorted(marks.items()):
        notes.append(f"{model} / {interpreter_name(interp)}: {reason}")
    if notes:
        table.note = (table.note + " Struck out (~~x~~): cells of interpreters that failed the preflight gate "
                      "(degenerate benign maps; gates.on_degenerate=mark) — " + "; ".join(notes) + ".")
    return table
