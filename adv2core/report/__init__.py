"""Reports of a benchmark run: the paper's tables (Markdown, CSV, LaTeX), PNG plots and artifact rows.

Entry point: :func:`build_report` (files written: see its docstring).
"""

from adv2core.report.build import (
    ReportError,
    ReportResult,
    artifact_key,
    artifact_tables,
    build_report,
    headline_markdown,
    resolve_run,
)
from adv2core.report.rendering import Block, ReportTable

__all__ = [
    "Block",
    "ReportError",
    "ReportResult",
    "ReportTable",
    "artifact_key",
    "artifact_tables",
    "build_report",
    "headline_markdown",
    "resolve_run",
]
