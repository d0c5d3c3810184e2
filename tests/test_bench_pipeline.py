"""benchmarks/perf_pipeline.py at smoke size: both sections render, with their tables, finite numbers and
a PASS/FAIL target line (the full run is `python benchmarks/perf_pipeline.py`)."""

from __future__ import annotations

import math
import re

import pytest

from benchmarks.perf_pipeline import bench_duckdb, bench_pipeline

pytestmark = [pytest.mark.slow]

NUM = re.compile(r"^-?[\d,]+(?:\.\d+)?(?: %)?$")


def _table(lines: list[str], header_start: str) -> list[list[str]]:
    """Rows (cells) of the Markdown table whose header line starts with ``header_start``."""
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    assert set(lines[i + 1].replace("|", "")) <= {"-"}, "header must be followed by a separator row"
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    assert rows, f"table {header_start!r} has no rows"
    return rows


def _finite(cell: str) -> float:
    assert NUM.match(cell), f"not a number: {cell!r}"
    x = float(cell.replace(",", "").replace(" %", ""))
    assert math.isfinite(x), cell
    return x


def _target(lines: list[str]) -> str:
    targets = [line for line in lines if line.startswith("Target:")]
    assert len(targets) == 1, targets
    assert re.search(r"\*\*(PASS|FAIL)\*\*$", targets[0]), targets[0]
    return targets[0]


@pytest.mark.heavy  # trains a model and runs three engines (~1-5 min): `make test-heavy`
def test_pipeline_section_smoke():
    lines = bench_pipeline(smoke=True)
    assert lines[0] == "## Pipeline overhead"
    rows = _table(lines, "| engine | tasks | wall s |")
    assert [r[0] for r in rows] == ["inline (no Prefect)", "Prefect, thread pool (1 worker)",
                                    "Prefect, local Dask (2 workers)"]
    for r in rows:
        tasks, wall, compute = int(r[1]), _finite(r[2]), _finite(r[3])
        assert tasks > 0 and wall > 0 and compute > 0
        for c in r[4:]:
            _finite(c)
    for r in _table(lines, "| fixed cost | seconds |"):
        _finite(r[1])
    target = _target(lines)
    _finite(re.search(r": (-?[\d.]+ %) — \*\*(PASS|FAIL)\*\*$", target).group(1))
    assert "attacks.step_cap=1" in "\n".join(lines)  # the overrides are stated, generated from the list


def test_duckdb_section_smoke():
    lines = bench_duckdb(smoke=True)
    assert lines[0] == "## DuckDB at scale"
    rows = _table(lines, "| rows (samples / transfer) | query |")
    labels = [r[1] for r in rows]
    assert any(label.startswith("transfer matrix") for label in labels)
    for r in rows:
        _finite(r[2])
        assert _finite(r[3]) >= 0
    _finite(re.search(r" ([\d.]+) s — \*\*(PASS|FAIL)\*\*$", _target(lines)).group(1))
