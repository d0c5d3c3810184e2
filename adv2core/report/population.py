"""Who was attacked: per model, the images drawn, how many it classifies correctly, how many were attacked.

With ``data.population: correct`` (the paper's population, spec section 5) misclassified images are stored
as ``excluded`` rows and never attacked; this table makes the selection visible next to the results.
"""

from __future__ import annotations

from typing import Any

from adv2core.report.cells import _fetch
from adv2core.report.rendering import Block, ReportTable, fmt_pct

_QUERY = """
SELECT model,
  count(DISTINCT image_id) AS drawn,
  count(DISTINCT image_id) FILTER (WHERE status = 'excluded') AS excluded,
  count(DISTINCT image_id) FILTER (WHERE status IN ('ok', 'failed')) AS attacked,
  count(DISTINCT image_id) FILTER (WHERE status = 'error') AS unreadable
FROM samples
WHERE config_hash = ?
GROUP BY model
ORDER BY model
"""


def population_table(con: Any, config_hash: str) -> ReportTable:
    """One row per model: drawn / misclassified (excluded) / attacked images."""
    records = []
    for r in _fetch(con, _QUERY, [config_hash]):
        rec = {k: r[k] for k in ("model",)}
        rec.update({k: int(r[k]) for k in ("drawn", "excluded", "attacked", "unreadable")})
        readable = rec["drawn"] - rec["unreadable"]
        rec["benign_accuracy"] = (readable - rec["excluded"]) / readable if readable else float("nan")
        records.append(rec)
    header = ["Model", "drawn", "misclassified (excluded)", "attacked", "benign acc. %"]
    rows = [[r["model"], str(r["drawn"]), str(r["excluded"]), str(r["attacked"]), fmt_pct(r["benign_accuracy"])]
            for r in records]
    return ReportTable(
        key="population",
        title="Attacked population",
        note="Images drawn from the dataset per model; with data.population=correct only those the model "
             "classifies correctly are attacked (the paper's setting), the others are stored as 'excluded'.",
        columns=["model", "drawn", "excluded", "attacked", "unreadable", "benign_accuracy"],
        records=records,
        blocks=[Block(header, rows)] if records else [],
    )
