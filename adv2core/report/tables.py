"""The paper's tables from the results store: DuckDB groups the rows, :mod:`adv2core.metrics.stats` sums up.

Every builder runs **one** query over the views of :func:`adv2core.store.query.connect` that pulls the
per-sample values of each cell as ordered lists (so grouping and filtering stay in SQL), then computes the
cell with :func:`~adv2core.metrics.stats.summarize` / :func:`~adv2core.metrics.stats.bootstrap_ci`, the
same definition the tests and the metrics docs use: success rate over **all attacked** images (rows with
a success value; ``error`` rows have none and are counted in the status table), every other metric over
the **successful** ones. Bootstrap seed and ordering are fixed, so the same data gives the same bytes.

The builders fill :class:`~adv2core.report.rendering.ReportTable` objects (records for the CSV, blocks for
Markdown/LaTeX/artifacts); the per-cell queries they share live in :mod:`adv2core.report.cells`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from adv2core.attacks.registry import interpreter_free
from adv2core.metrics.stats import bootstrap_ci
from adv2core.report.cells import (
    _CELL_KEYS,
    _COUNT_FIELDS,
    N_BOOT,
    SEED,
    _arr,
    _cell,
    _cells_query,
    _fetch,
    _lists,
    _metric_fields,
    _sample_cells,
    _sorted_cells,
)
from adv2core.report.rendering import (
    DASH,
    NO_SOURCE,
    Block,
    ReportTable,
    attack_key,
    attack_name,
    fmt_ci,
    fmt_num,
    fmt_pct,
    interpreter_key,
    interpreter_name,
)
from adv2core.store.schemas import IOU_COLUMNS, IOU_KS


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
# Interpreter-independent attacks whose maps give the reference row of a transfer matrix.
REFERENCE_ATTACKS: dict[str, tuple[str, ...]] = {"stadv-adv2": ("pgd", "stadv")}
DEFAULT_REFERENCES: tuple[str, ...] = ("pgd",)
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

    in_samples = {(m, a) for m, _, a in samples}
    referenced: dict[str, set[str]] = {}  # model -> interpreter-free attacks shown as another block's reference
    for (model, attack) in groups:
        if not interpreter_free(attack):
            referenced.setdefault(model, set()).update(
                r for r in REFERENCE_ATTACKS.get(attack, DEFAULT_REFERENCES) if (model, r) in in_samples)
    records: list[dict[str, Any]] = []
    blocks: list[Block] = []
    for (model, attack) in sorted(groups, key=lambda g: (g[0], attack_key(g[1]))):
        entries = groups[(model, attack)]
        sources = sorted({s for s, _ in entries}, key=interpreter_key)
        if interpreter_free(attack):  # one set of examples whatever the source: one row, not one per interpreter
            if attack in referenced.get(model, ()):
                continue  # already the reference row of another attack's block
            entries = {(NO_SOURCE, j): r for (i, j), r in entries.items() if i == sources[0]}
            sources = []
        evals = sorted({e for _, e in entries} | set(sources), key=interpreter_key)
        sources = sources or [NO_SOURCE]
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
                name = (f"{attack_name(src)} (ref.)" if kind == "reference" else
                        f"{attack_name(attack)} (no interpreter)" if src == NO_SOURCE else interpreter_name(src))
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
        note="Rows: the interpreter the example was attacked under (reference rows, and the one row of an "
             "interpreter-free attack's own block: PGD / StAdv, whose examples no interpreter shaped); "
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
