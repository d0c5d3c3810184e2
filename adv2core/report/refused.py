"""Cells of interpreters refused at preparation (``gates.on_refused: skip``): listed, never given a number.

With ``skip`` the preflight stage records a refused interpreter in the run's ``runs.preflight`` JSON as
``status: refused`` with its one-line reason (:func:`adv2core.gates.refusal`), and the flow runs none of
its cells for that model, so the store has no rows for them. The report says so instead of leaving a gap:

* every table's note names the refused cells ("RTS on efficientnet-lite0"); their one-line reasons
  ("RTS on efficientnet-lite0: refused — <reason>") are in a section of ``report.md`` of their own
  (a reason is a whole sentence with measured numbers: repeating it under every table buried them);
* a table with a row per (model, interpreter) gets a row for the refused cell whose values read
  ``refused``;
* rows an earlier run of the same config stored for a now refused cell are not shown as numbers either:
  their records are dropped (CSV, plots) and their Markdown/LaTeX cells read ``refused``.
"""

from __future__ import annotations

from typing import Any

from adv2core.report.marks import cells_with_status, interp_from_label
from adv2core.report.rendering import DASH, ReportTable, interpreter_name

Refusals = dict[tuple[str, str], str]  # (model, interpreter) -> reason
REFUSED = "refused"


def refusals_from_run(run: dict[str, Any]) -> Refusals:
    """The refused cells of a ``runs`` row (empty when the run has no preflight record)."""
    return cells_with_status(run, REFUSED)


def refusal_lines(refusals: Refusals) -> list[str]:
    """One line per refused cell: ``RTS on efficientnet-lite0: refused — <reason>``."""
    return [f"{interpreter_name(i)} on {m}: refused — {why}" for (m, i), why in sorted(refusals.items())]


def _interp_key(label: str) -> str:
    return interp_from_label(label) or label


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
    cells = ", ".join(f"{interpreter_name(i)} on {m}" for m, i in sorted(refusals))
    table.note = (table.note + f" Not run (refused at preparation, gates.on_refused=skip; no numbers exist for "
                  f"these cells): {cells}; the reasons are under 'Refused interpreters' in report.md.").strip()
    return table
