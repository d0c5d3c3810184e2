"""Cells of interpreters refused at preparation (``gates.on_refused: skip``): listed, never given a number.

With ``skip`` the preflight stage records a refused interpreter in the run's ``runs.preflight`` JSON as
``status: refused`` with its one-line reason (:func:`adv2core.gates.refusal`), and the flow runs none of
its cells for that model, so the store has no rows for them. The report says so instead of leaving a gap:

* every table's note lists "RTS on efficientnet-lite0: refused — <reason>" (``report.md`` repeats the
  list in a section of its own);
* a table with a row per (model, interpreter) gets a row for the refused cell whose values read
  ``refused``;
* rows an earlier run of the same config stored for a now refused cell are not shown as numbers either:
  their records are dropped (CSV, plots) and their Markdown/LaTeX cells read ``refused``.
"""

from __future__ import annotations

import json
from typing import Any

from adv2core.report.rendering import DASH, INTERPRETER_NAMES, ReportTable, interpreter_name

Refusals = dict[tuple[str, str], str]  # (model, interpreter) -> reason
REFUSED = "refused"


def refusals_from_run(run: dict[str, Any]) -> Refusals:
    """The refused cells of a ``runs`` row (empty when the run has no preflight record)."""
    try:
        pre = json.loads(run.get("preflight") or "{}") or {}
    except ValueError:
        return {}
    out: Refusals = {}
    for model, rep in (pre.get("models") or {}).items():
        for interp, r in ((rep or {}).get("interpreters") or {}).items():
            if (r or {}).get("status") == REFUSED:
                out[(model, interp)] = str(r.get("reason") or REFUSED)
    return out


def refusal_lines(refusals: Refusals) -> list[str]:
    """One line per refused cell: ``RTS on efficientnet-lite0: refused — <reason>``."""
    return [f"{interpreter_name(i)} on {m}: refused — {why}" for (m, i), why in sorted(refusals.items())]


def _interp_key(label: str) -> str:
    for key, name in INTERPRETER_NAMES.items():
        if label == name:
            return key
    return label


def _refused_record(rec: dict[str, Any], refusals: Refusals) -> bool:
    model = rec.get("model")
    return any((model, rec.get(k)) in refusals for k in ("interpreter", "source", "eval_interpreter") if rec.get(k))


def apply_refusals(table: ReportTable, refusals: Refusals) -> ReportTable:
    """Mark refused cells in ``table`` in place (see the module docstring); returns it."""
    if not refusals or not table.blocks:
        return table
    table.records = [r for r in table.records if not _refused_record(r, refusals)]
    for block in table.blocks:
        header = block.header
        if len(header) >= 2 and header[:2] == ["Model", "Interp."]:
            labels = 3 if len(header) > 2 and header[2] == "Attack" else 2
            block.rows = [r for r in block.rows if (r[0], _interp_key(r[1])) not in refusals]
            for model, interp in sorted(refusals):
                row = [model, interpreter_name(interp)] + [DASH] * (labels - 2) + [REFUSED] * (len(header) - labels)
                last = max((n for n, r in enumerate(block.rows) if r[0] == model), default=len(block.rows) - 1)
                block.rows.insert(last + 1, row)
        elif header and header[0] == "Source \\ eval" and block.caption:
            model = block.caption.split(" / ")[0]
            bad_cols = {n for n, h in enumerate(header) if (model, _interp_key(h)) in refusals}
            for row in block.rows:
                src_bad = (model, _interp_key(row[0])) in refusals
                for n in range(1, len(row)):
                    if src_bad or n in bad_cols:
                        row[n] = REFUSED
    table.note = (table.note + " Not run (gates.on_refused=skip; no numbers exist for these cells): "
                  + "; ".join(refusal_lines(refusals)) + ".").strip()
    return table
