"""The paper's tables from the results store: DuckDB groups the rows, :mod:`adv2core.metrics.stats` sums up.

Every builder runs **one** query over the views of :func:`adv2core.store.query.connect` that pulls the
per-sample values of each cell as ordered lists (so grouping and filtering stay in SQL), then computes the
cell with :func:`~adv2core.metrics.stats.summarize` / :func:`~adv2core.metrics.stats.bootstrap_ci`, the
same definition the tests and the metrics docs use: success rate over **all attacked** images (rows with
a success value; ``error`` rows have none and are counted in the status table), every other metric over
the **successful** ones. Bootstrap seed and ordering are fixed, so the same data gives the same bytes.

A :class:`ReportTable` keeps two views of the same numbers: ``records`` (tidy rows with raw floats, what
the CSV holds and what tests parse back) and ``blocks`` (formatted wide tables for Markdown, LaTeX and
Prefect table artifacts).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from adv2core.metrics.stats import bootstrap_ci, summarize
from adv2core.store.schemas import IOU_COLUMNS, IOU_KS

# ----------------------------------------------------------------------------- names and ordering
ATTACK_ORDER = ("pgd", "adv2", "stadv", "stadv-adv2")
INTERPRETER_ORDER = ("grad", "cam", "rts", "mask")
ATTACK_NAMES = {"pgd": "PGD", "adv2": "ADV²", "stadv": "StAdv", "stadv-adv2": "StAdv-ADV²"}
INTERPRETER_NAMES = {"grad": "Grad", "cam": "CAM", "rts": "RTS", "mask": "MASK"}
# Interpreter-independent attacks whose maps give the reference row of a transfer matrix.
REFERENCE_ATTACKS: dict[str, tuple[str, ...]] = {"stadv-adv2": ("pgd", "stadv")}
DEFAULT_REFERENCES: tuple[str, ...] = ("pgd",)

N_BOOT = 1000
SEED = 0
DASH = "–"  # an empty cell (no row, or no successful sample)


def _order(order: Sequence[str]) -> Callable[[str], tuple[int, str]]:
    return lambda v: (order.index(v) if v in order else len(order), v)


attack_key = _order(ATTACK_ORDER)
interpreter_key = _order(INTERPRETER_ORDER)


def attack_name(a: str) -> str:
    return ATTACK_NAMES.get(a, a)


def interpreter_name(i: str) -> str:
    return INTERPRETER_NAMES.get(i, i)


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


# ----------------------------------------------------------------------------- query helpers
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


def _wide(
    records: list[dict[str, Any]],
    attacks: list[str],
    metrics: list[tuple[str, Callable[[dict[str, Any], str], str]]],
) -> Block:
    """Rows model x interpreter, one column per (metric, attack) in that order."""
    by_cell = {(r["model"], r["interpreter"], r["attack"]): r for r in records}
    pairs = sorted({(r["model"], r["interpreter"]) for r in records}, key=lambda p: (p[0], interpreter_key(p[1])))
    header = ["Model", "Interp."] + [label.format(attack=attack_name(a)) for label, _ in metrics for a in attacks]
    rows = []
    for m, i in pairs:
        row = [m, interpreter_name(i)]
        for _label, cell_fmt in metrics:
            for a in attacks:
                rec = by_cell.get((m, i, a))
                row.append(DASH if rec is None else cell_fmt(rec, a))
        rows.append(row)
    return Block(header, rows)


def _attacks(records: list[dict[str, Any]]) -> list[str]:
    return sorted({r["attack"] for r in records}, key=attack_key)


# ----------------------------------------------------------------------------- table 1
def success_table(con: Any, config_hash: str) -> ReportTable:
    """Success rate (all attacked images, Wilson 95 %) and misclassification confidence (successful)."""
    records = _sample_cells(con, config_hash, ["confidence"])
    attacks = _attacks(records)
    block = _wide(
        records,
        attacks,
        [
            ("{attack} succ. %", lambda r, a: fmt_ci(r["success_rate"], r["success_rate_lo"], r["success_rate_hi"], fmt_pct)),
            ("{attack} conf.", lambda r, a: fmt_ci(r["confidence_mean"], r["confidence_lo"], r["confidence_hi"])),
        ],
    )
    # n attacked per row, in attack order ("32" when every attack saw the same images)
    by_cell = {(r["model"], r["interpreter"], r["attack"]): r for r in records}
    block.header.append("n")
    for row, (m, i) in zip(block.rows, sorted({(r["model"], r["interpreter"]) for r in records},
                                                key=lambda p: (p[0], interpreter_key(p[1])))):
        ns = [str(by_cell[(m, i, a)]["n_attacked"]) for a in attacks if (m, i, a) in by_cell]
        row.append(ns[0] if len(set(ns)) == 1 else "/".join(ns))
    return ReportTable(
        key="success",
        title="Attack success rate and misclassification confidence",
        note="Success rate in % over all attacked images (Wilson 95 % CI); confidence = mean max softmax "
             "probability over successful images (bootstrap 95 % CI); n = attacked images.",
        columns=_CELL_KEYS + _COUNT_FIELDS + ["success_rate", "success_rate_lo", "success_rate_hi"]
        + _metric_fields("confidence"),
        records=records,
        blocks=[block] if records else [],
    )


# ----------------------------------------------------------------------------- table 2
def distance_table(con: Any, config_hash: str) -> ReportTable:
    """L1 / L2 distance of the adversarial map to the benign map, mean over successful images."""
    records = _sample_cells(con, config_hash, ["l1", "l2"])
    attacks = _attacks(records)
    block = _wide(
        records,
        attacks,
        [
            ("L1 {attack}", lambda r, a: fmt_ci(r["l1_mean"], r["l1_lo"], r["l1_hi"])),
            ("L2 {attack}", lambda r, a: fmt_ci(r["l2_mean"], r["l2_lo"], r["l2_hi"])),
        ],
    )
    return ReportTable(
        key="distances",
        title="Map distance to the benign map (L1 / L2)",
        note="L1 = mean absolute difference, L2 = RMS difference of the adversarial and the benign map at "
             "native resolution; mean over successful images with bootstrap 95 % CI.",
        columns=_CELL_KEYS + _COUNT_FIELDS + _metric_fields("l1") + _metric_fields("l2"),
        records=[{k: r[k] for k in _CELL_KEYS + _COUNT_FIELDS + _metric_fields("l1") + _metric_fields("l2")}
                 for r in records],
        blocks=[block] if records else [],
    )


# ----------------------------------------------------------------------------- table 3
def iou_table(con: Any, config_hash: str) -> ReportTable:
    """IoU of the top-k % pixels of adversarial vs benign map for every k, and its mean over k."""
    cols = [*IOU_COLUMNS, "iou_mean"]
    records = _sample_cells(con, config_hash, cols)
    header = ["Model", "Interp.", "Attack"] + [f"k={k}%" for k in IOU_KS] + ["mean over k"]
    rows = []
    for r in records:
        row = [r["model"], interpreter_name(r["interpreter"]), attack_name(r["attack"])]
        row += [fmt_num(r[f"{c}_mean"]) for c in IOU_COLUMNS]
        row.append(fmt_ci(r["iou_mean_mean"], r["iou_mean_lo"], r["iou_mean_hi"]))
        rows.append(row)
    columns = _CELL_KEYS + _COUNT_FIELDS + [f for c in cols for f in _metric_fields(c)]
    return ReportTable(
        key="iou",
        title="IoU of the top-k % map pixels vs k",
        note="IoU between the top-k % pixels of the adversarial and the benign map, mean over successful "
             "images; the last column is the per-image mean over k with bootstrap 95 % CI.",
        columns=columns,
        records=[{k: r[k] for k in columns} for r in records],
        blocks=[Block(header, rows)] if records else [],
    )


# ----------------------------------------------------------------------------- table 4
_TRANSFER_QUERY = f"""
SELECT model, attack, source_interpreter, eval_interpreter, count(*) AS n_rows,
  {_lists(['success', 'l1', 'iou_mean'])}
FROM transfer
WHERE config_hash = ?
GROUP BY model, attack, source_interpreter, eval_interpreter
"""

TRANSFER_METRICS = (("l1", "L1"), ("iou_mean", "IoU (mean over k)"))


def _transfer_record(model: str, attack: str, kind: str, source: str, ev: str, origin: str,
                     n_rows: int, success: np.ndarray, l1: np.ndarray, iou: np.ndarray) -> dict[str, Any]:
    rec: dict[str, Any] = {"model": model, "attack": attack, "kind": kind, "source": source,
                           "eval_interpreter": ev, "origin": origin, "n_rows": n_rows}
    rec.update(_cell(success, {"l1": l1, "iou_mean": iou}))
    return rec


def transfer_table(con: Any, config_hash: str) -> ReportTable:
    """Transferability matrices per (model, attack): entry (i, j) = metric of interpreter j's map of the
    example attacked under interpreter i vs j's benign map, over images successful under i.

    Reference rows (``kind='reference'``: PGD, and StAdv for StAdv-ADV²) come from the samples table
    (attack ``pgd`` evaluated under interpreter j). A missing diagonal entry falls back to the white-box
    samples row of interpreter i (``origin='samples'``).
    """
    trows = _fetch(con, _TRANSFER_QUERY, [config_hash])
    srows = _fetch(con, _cells_query(["l1", "iou_mean"]), [config_hash])
    samples = {(r["model"], r["interpreter"], r["attack"]): r for r in srows}

    groups: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
    for r in trows:
        groups.setdefault((r["model"], r["attack"]), {})[(r["source_interpreter"], r["eval_interpreter"])] = r

    records: list[dict[str, Any]] = []
    blocks: list[Block] = []
    for (model, attack) in sorted(groups, key=lambda g: (g[0], attack_key(g[1]))):
        entries = groups[(model, attack)]
        sources = sorted({s for s, _ in entries}, key=interpreter_key)
        evals = sorted({e for _, e in entries} | set(sources), key=interpreter_key)
        matrix: list[dict[str, Any]] = []
        for ref in REFERENCE_ATTACKS.get(attack, DEFAULT_REFERENCES):
            if ref == attack or not any((model, j, ref) in samples for j in evals):
                continue
            for j in evals:
                s = samples.get((model, j, ref))
                if s is None:
                    continue
                matrix.append(_transfer_record(model, attack, "reference", ref, j, "samples", int(s["n_rows"]),
                                               _arr(s["success"]), _arr(s["l1"]), _arr(s["iou_mean"])))
        for i in sources:
            for j in evals:
                t = entries.get((i, j))
                if t is not None:
                    matrix.append(_transfer_record(model, attack, "attack", i, j, "transfer", int(t["n_rows"]),
                                                   _arr(t["success"]), _arr(t["l1"]), _arr(t["iou_mean"])))
                elif i == j and (model, i, attack) in samples:
                    s = samples[(model, i, attack)]
                    matrix.append(_transfer_record(model, attack, "attack", i, j, "samples", int(s["n_rows"]),
                                                   _arr(s["success"]), _arr(s["l1"]), _arr(s["iou_mean"])))
        records += matrix
        by = {(r["source"], r["eval_interpreter"]): r for r in matrix}
        row_keys = [(r["kind"], r["source"]) for r in matrix]
        row_keys = list(dict.fromkeys(row_keys))  # first-seen order: references, then sources
        for metric, label in TRANSFER_METRICS:
            header = ["Source \\ eval"] + [interpreter_name(j) for j in evals] + ["n succ."]
            rows = []
            for kind, src in row_keys:
                name = f"{attack_name(src)} (ref.)" if kind == "reference" else interpreter_name(src)
                cells = []
                for j in evals:
                    rec = by.get((src, j))
                    cells.append(DASH if rec is None else fmt_ci(rec[f"{metric}_mean"], rec[f"{metric}_lo"], rec[f"{metric}_hi"]))
                ns = sorted({int(by[(src, j)]["n_success"]) for j in evals if (src, j) in by})
                rows.append([name] + cells + ["/".join(map(str, ns)) or DASH])
            blocks.append(Block(header, rows, caption=f"{model} / {attack_name(attack)}: {label}"))
    columns = ["model", "attack", "kind", "source", "eval_interpreter", "origin", *_COUNT_FIELDS,
               *_metric_fields("l1"), *_metric_fields("iou_mean")]
    return ReportTable(
        key="transfer",
        title="Transferability across interpreters",
        note="Rows: the interpreter the example was attacked under (reference rows: interpreter-free attacks); "
             "columns: the interpreter whose map is compared with its benign map; mean over images successful "
             "under the row's attack, bootstrap 95 % CI; n succ. = those images (per column, '/'-joined, where "
             "they differ). The diagonal is the white-box attack.",
        columns=columns,
        records=[{k: r[k] for k in columns} for r in records],
        blocks=blocks,
    )


# ----------------------------------------------------------------------------- table 5
_LOC_QUERY = f"""
SELECT model, interpreter, attack, count(*) AS n_rows,
  {_lists(['success', ('loc_iou_benign', 'loc_benign'), ('loc_iou_adv', 'loc_adv')])}
FROM samples
WHERE config_hash = ?
GROUP BY model, interpreter, attack
HAVING count(loc_iou_benign) > 0 OR count(loc_iou_adv) > 0
"""


def localisation_table(con: Any, config_hash: str) -> ReportTable:
    """Localisation IoU with the ground-truth mask: benign map over all attacked images, adversarial map
    over successful ones (embedded data only; cells without any value are left out)."""
    records = []
    for r in _sorted_cells(_fetch(con, _LOC_QUERY, [config_hash])):
        success, benign = _arr(r["success"]), _arr(r["loc_benign"])
        rec: dict[str, Any] = {k: r[k] for k in _CELL_KEYS}
        cell = _cell(success, {"loc_adv": _arr(r["loc_adv"])})
        rec.update({"n_rows": int(r["n_rows"]), "n_attacked": cell["n_attacked"], "n_success": cell["n_success"]})
        mean, lo, hi = bootstrap_ci(benign, n_boot=N_BOOT, seed=SEED)
        finite = benign[~np.isnan(benign)]
        rec.update({"loc_benign_mean": mean, "loc_benign_lo": lo, "loc_benign_hi": hi,
                    "loc_benign_std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
                    "loc_benign_n": int(finite.size)})
        rec.update({k: cell[k] for k in _metric_fields("loc_adv")})
        records.append(rec)
    header = ["Model", "Interp.", "Attack", "Benign", "Adversarial", "n"]
    rows = [[r["model"], interpreter_name(r["interpreter"]), attack_name(r["attack"]),
             fmt_ci(r["loc_benign_mean"], r["loc_benign_lo"], r["loc_benign_hi"]),
             fmt_ci(r["loc_adv_mean"], r["loc_adv_lo"], r["loc_adv_hi"]),
             f"{r['loc_adv_n']}/{r['loc_benign_n']}"] for r in records]
    return ReportTable(
        key="localisation",
        title="Localisation before / after the attack",
        note="IoU of the map's top pixels with the ground-truth object cells: benign over all attacked images, "
             "adversarial over successful ones (bootstrap 95 % CI); n = successful/attacked images with a value.",
        columns=_CELL_KEYS + _COUNT_FIELDS + _metric_fields("loc_benign") + _metric_fields("loc_adv"),
        records=records,
        blocks=[Block(header, rows)] if records else [],
    )


# ----------------------------------------------------------------------------- table 6
_STATUS_QUERY = """
SELECT model, interpreter, attack, count(*) AS n_rows,
  count(*) FILTER (WHERE status = 'ok') AS ok,
  count(*) FILTER (WHERE status = 'failed') AS failed,
  count(*) FILTER (WHERE status = 'error') AS error,
  count(*) FILTER (WHERE status = 'excluded') AS excluded,
  count(*) FILTER (WHERE success IS NULL AND status != 'excluded') AS no_success_value,
  list(error ORDER BY image_id) FILTER (WHERE error IS NOT NULL AND status != 'excluded') AS errors
FROM samples
WHERE config_hash = ?
GROUP BY model, interpreter, attack
"""


def _top_error(errors: Sequence[str] | None, width: int = 100) -> str:
    """The most frequent message (ties: alphabetical), shortened to one line."""
    if not errors:
        return ""
    counts = Counter(e.splitlines()[0] if e else "" for e in errors)
    msg, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    msg = msg if len(msg) <= width else msg[: width - 1] + "…"
    return f"{msg} (x{n})"


def status_table(con: Any, config_hash: str) -> ReportTable:
    """Rows per cell by status (``ok`` / ``failed`` / ``error``) and the most frequent error message."""
    records = []
    for r in _sorted_cells(_fetch(con, _STATUS_QUERY, [config_hash])):
        rec = {k: r[k] for k in _CELL_KEYS}
        rec.update({k: int(r[k]) for k in ("n_rows", "ok", "failed", "error", "excluded", "no_success_value")})
        rec["top_error"] = _top_error(r["errors"])
        records.append(rec)
    header = ["Model", "Interp.", "Attack", "rows", "ok", "failed", "error", "excluded", "most frequent error"]
    rows = [[r["model"], interpreter_name(r["interpreter"]), attack_name(r["attack"]), str(r["n_rows"]),
             str(r["ok"]), str(r["failed"]), str(r["error"]), str(r["excluded"]), r["top_error"] or DASH]
            for r in records]
    return ReportTable(
        key="status",
        title="Row status per cell",
        note="Rows with status != 'ok' are listed here; 'error' rows carry no metrics and are not attacked "
             "images in the other tables; 'excluded' rows are drawn images the model misclassifies "
             "(data.population=correct: not attacked, see the population table).",
        columns=_CELL_KEYS + ["n_rows", "ok", "failed", "error", "excluded", "no_success_value", "top_error"],
        records=records,
        blocks=[Block(header, rows)] if records else [],
    )
