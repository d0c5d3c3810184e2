"""Per-cell queries of the report tables: one DuckDB query pulls each cell's samples as ordered lists.

A cell is a (model, interpreter, attack) group (or a transfer pair); its numbers are computed from the
lists with :func:`~adv2core.metrics.stats.summarize` under a fixed bootstrap size and seed, so the same
data gives the same bytes.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from adv2core.metrics.stats import summarize
from adv2core.report.rendering import attack_key, interpreter_key

N_BOOT = 1000
SEED = 0


def _arr(values: Sequence[Any] | None) -> np.ndarray:
    """A DuckDB list (None entries allowed, or a NULL list) as float64 with NaN for NULL."""
    if values is None:
        return np.zeros(0, dtype=np.float64)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _fetch(con: Any, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    cur = con.execute(query, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _cell(success: np.ndarray, metrics: dict[str, np.ndarray]) -> dict[str, float | int]:
    return summarize(success, metrics, n_boot=N_BOOT, seed=SEED)


def _lists(cols: Iterable[str | tuple[str, str]]) -> str:
    """SQL selecting each column as a DOUBLE list ordered by image over the attacked rows (success known).

    ``cols``: column names, or ``(column, alias)`` pairs. The values are the same as one
    ``list(c::DOUBLE ORDER BY image_id) FILTER (WHERE success IS NOT NULL)`` per column, but computed by
    **one** ordered aggregate over a struct of all columns (DuckDB merges the identical aggregate
    expressions), so the rows are sorted once per cell instead of once per column, and each column is
    taken back out with ``list_transform``: about 2x faster for the IoU table's 12 lists at 10^6 rows
    (benchmarks/perf_pipeline.py); it also keeps the columns' elements paired row by row. Must sit in a
    query grouped by cell over a relation with ``image_id`` and ``success``.
    """
    pairs = [(c, c) if isinstance(c, str) else c for c in cols]
    fields = ", ".join(f"'{alias}': {col}::DOUBLE" for col, alias in pairs)
    agg = f"list({{{fields}}} ORDER BY image_id) FILTER (WHERE success IS NOT NULL)"
    return ",\n  ".join(f"list_transform({agg}, lambda x: x.{alias}) AS {alias}" for _col, alias in pairs)


def _metric_fields(name: str) -> list[str]:
    return [f"{name}_{s}" for s in ("mean", "lo", "hi", "std", "n")]


_CELL_KEYS = ["model", "interpreter", "attack"]
_COUNT_FIELDS = ["n_rows", "n_attacked", "n_success"]


def _cells_query(metric_cols: Sequence[str]) -> str:
    return f"""
SELECT model, interpreter, attack, count(*) AS n_rows,
  {_lists(['success', *metric_cols])}
FROM samples
WHERE config_hash = ?
GROUP BY model, interpreter, attack
"""


def _sorted_cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["model"], interpreter_key(r["interpreter"]), attack_key(r["attack"])))


def _sample_cells(con: Any, config_hash: str, metric_cols: Sequence[str]) -> list[dict[str, Any]]:
    """One record per (model, interpreter, attack): counts plus ``summarize`` of the given columns."""
    out = []
    for r in _sorted_cells(_fetch(con, _cells_query(metric_cols), [config_hash])):
        success = _arr(r["success"])
        cell = _cell(success, {c: _arr(r[c]) for c in metric_cols})
        rec: dict[str, Any] = {k: r[k] for k in _CELL_KEYS}
        rec["n_rows"] = int(r["n_rows"])
        rec.update(cell)
        out.append(rec)
    return out
