"""Explicit Arrow schemas of the results tables, and row validation.

Narrow explicit types keep files small and make every shard agree, so DuckDB's ``union_by_name`` only
has to reconcile *versions* (columns added later), never accidental int64/float64 drift between shards.
"""

from __future__ import annotations

from typing import Any, Iterable

import pyarrow as pa

SCHEMA_VERSION = "3"  # 3: samples and transfer became views over one stored evaluations table
_META = {b"schema_version": SCHEMA_VERSION.encode()}

# Metric column names for the IoU of the top-k% pixels, k in percent.
IOU_KS: tuple[int, ...] = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)
IOU_COLUMNS: tuple[str, ...] = tuple(f"iou_k{k:02d}" for k in IOU_KS)

SAMPLE_STATUSES = ("ok", "failed", "error", "excluded")
STAGES = ("benign", "examples", "attack", "transfer", "defence")
#: Roles of a detection row: LID's fit images, the benign threshold-calibration images (both disjoint from
#: the evaluated images), the evaluated benign images, the (successful) adversarial examples.
DETECTION_ROLES = ("fit", "calibration", "benign", "adversarial")

UTC_US = pa.timestamp("us", tz="UTC")


def _req(name: str, typ: pa.DataType) -> pa.Field:
    return pa.field(name, typ, nullable=False)


def _opt(name: str, typ: pa.DataType) -> pa.Field:
    return pa.field(name, typ, nullable=True)


def _schema(fields: Iterable[pa.Field]) -> pa.Schema:
    return pa.schema(list(fields), metadata=_META)


RUNS = _schema(
    [
        _req("run_id", pa.string()),
        _req("config_hash", pa.string()),
        _req("preset", pa.string()),
        _req("config_json", pa.string()),
        _req("git_sha", pa.string()),
        _opt("git_dirty", pa.bool_()),
        _req("package_versions", pa.string()),  # JSON object {package: version}
        _req("device", pa.string()),
        _req("seed", pa.int64()),
        _req("started_at", UTC_US),
        _opt("ended_at", UTC_US),  # null while the run is in progress
        _req("status", pa.string()),
        _req("results_root", pa.string()),
        _req("schema_version", pa.string()),
        _req("hostname", pa.string()),
        # JSON: gate thresholds, and per model its accuracy, weights sha256 and each interpreter's gate
        # report (status ok|degenerate, reason, localisation, masking-model sha256); see adv2core.gates
        _opt("preflight", pa.string()),
    ]
)

# Identity of a row: which run, config, image and (model, interpreter, attack) it belongs to.
_SAMPLE_KEYS = [
    _req("run_id", pa.string()),
    _req("config_hash", pa.string()),
    _req("code_version", pa.string()),
    _req("seed", pa.int64()),
    _req("dataset", pa.string()),
    _req("image_id", pa.string()),
    _req("shard", pa.int32()),
    _req("num_shards", pa.int32()),
    _req("model", pa.string()),
    _req("interpreter", pa.string()),
    _req("attack", pa.string()),
    _req("status", pa.string()),
]

# Metrics are nullable: an 'error' row (image could not be attacked) has none of them.
SAMPLES = _schema(
    _SAMPLE_KEYS
    + [
        _opt("error", pa.string()),
        _opt("true_class", pa.int16()),
        _opt("target_class", pa.int16()),
        _opt("pred_class", pa.int16()),
        _opt("success", pa.bool_()),
        _opt("confidence", pa.float32()),
        _opt("target_prob", pa.float32()),
        _opt("benign_pred", pa.int16()),
        _opt("l1", pa.float32()),
        _opt("l2", pa.float32()),
        *[_opt(c, pa.float32()) for c in IOU_COLUMNS],
        _opt("iou_mean", pa.float32()),
        _opt("loc_iou_benign", pa.float32()),
        _opt("loc_iou_adv", pa.float32()),
        _opt("linf", pa.float32()),
        _opt("steps", pa.int32()),
        _opt("seconds", pa.float32()),
    ]
)

# Interpreter-free attacks (PGD, StAdv) are computed once per (model, shard): one row per image with what
# does not depend on an interpreter. The attack stage then evaluates these examples under every
# interpreter and writes their ``samples`` rows (the map metrics added, the rest copied from here).
#: The map metrics: what an interpreter adds to an example's row.
MAP_METRICS = ("l1", "l2", *IOU_COLUMNS, "iou_mean", "loc_iou_benign", "loc_iou_adv")
EXAMPLES = _schema([f for f in SAMPLES if f.name != "interpreter" and f.name not in MAP_METRICS])

# Benign maps are computed once per (model, interpreter, shard) for the attacked images: every attack
# unit and the cross-evaluation read them (arrays ``benign_maps``, float32) instead of explaining again.
BENIGN = _schema(
    [f for f in _SAMPLE_KEYS if f.name not in ("attack", "status")]
    + [
        _opt("true_class", pa.int16()),
        _opt("loc_iou_benign", pa.float32()),
        _opt("seconds", pa.float32()),
    ]
)

TRANSFER = _schema(
    [
        _req("run_id", pa.string()),
        _req("config_hash", pa.string()),
        _req("code_version", pa.string()),
        _req("seed", pa.int64()),
        _req("dataset", pa.string()),
        _req("image_id", pa.string()),
        _req("shard", pa.int32()),
        _req("num_shards", pa.int32()),
        _req("model", pa.string()),
        _req("attack", pa.string()),
        _req("source_interpreter", pa.string()),
        _req("eval_interpreter", pa.string()),
        _opt("success", pa.bool_()),  # success of the *source* attack on this image
        _opt("l1", pa.float32()),
        _opt("l2", pa.float32()),
        _opt("iou_mean", pa.float32()),
        *[_opt(c, pa.float32()) for c in IOU_COLUMNS],
    ]
)

# The one stored evaluation table: every adversarial example under an interpreter, from both stages that
# measure maps. ``stage='attack'`` rows are the white-box evaluation of an attack unit (model, interpreter
# i, attack): the example attacked through i (or, for an interpreter-free attack, computed once per model
# and shard) measured under i against the attack's reference map, so ``source_interpreter =
# eval_interpreter = i``. ``stage='transfer'`` rows are the cross-evaluation of the examples of source i
# under every interpreter j against j's benign map. The views ``samples`` (stage attack, ``interpreter`` =
# source_interpreter) and ``transfer`` (stage transfer) are projections of it (adv2core.store.query);
# writers hand rows in the view's shape and :func:`to_evaluations` widens them.
EVALUATIONS = _schema(
    [f for f in _SAMPLE_KEYS if f.name not in ("interpreter", "status")]
    + [
        _req("source_interpreter", pa.string()),
        _req("eval_interpreter", pa.string()),
        _req("stage", pa.string()),
        _opt("status", pa.string()),  # samples rows: ok|failed|error|excluded; transfer rows: null
    ]
    + [f for f in SAMPLES if f.name not in {k.name for k in _SAMPLE_KEYS}]
)
#: The stored rows behind each view: view name -> the ``stage`` value of its rows.
VIEW_STAGE = {"samples": "attack", "transfer": "transfer"}

# One row per (detector variant, model, role, source attack x attacked interpreter, image): the stage's
# score and its flag at the threshold calibrated on the 'calibration' rows (adv2core.defences.stage).
DETECTIONS = _schema(
    [
        _req("run_id", pa.string()),
        _req("config_hash", pa.string()),
        _req("code_version", pa.string()),
        _req("seed", pa.int64()),
        _req("dataset", pa.string()),
        _req("model", pa.string()),
        _req("detector", pa.string()),  # ensemble | fs | lid
        _req("defence_hash", pa.string()),  # the detector's settings (not in config_hash)
        _req("variant", pa.string()),  # fs: the squeezer combination; lid: k<chosen k>; ensemble: iou
        _req("role", pa.string()),
        _req("attack", pa.string()),  # source attack of an adversarial row, 'none' otherwise
        _req("interpreter", pa.string()),  # attacked interpreter of an adversarial row, 'none' otherwise
        _req("image_id", pa.string()),  # adversarial rows: the benign image the example was made from
        _opt("true_class", pa.int16()),
        _opt("target_class", pa.int16()),  # adversarial rows: c_t
        _opt("score", pa.float32()),  # higher = more likely adversarial
        _opt("threshold", pa.float32()),  # flag = score > threshold (target FPR on the calibration rows)
        _opt("flag", pa.bool_()),  # null on 'fit' rows (in-sample LID scores)
        _opt("target_fpr", pa.float32()),
        _opt("fold", pa.int16()),  # cross-fitted calibration: the row's fold (null: one disjoint calibration set)
    ]
)

SHARDS = _schema(
    [
        _req("config_hash", pa.string()),
        _req("run_id", pa.string()),
        _req("stage", pa.string()),
        _req("model", pa.string()),
        _req("interpreter", pa.string()),  # 'transfer': the source interpreter; 'examples': none
        # 'benign' units have attack 'none'; 'defence' units: interpreter = detector, attack = its settings hash
        _req("attack", pa.string()),
        _req("shard", pa.int32()),
        _req("num_shards", pa.int32()),
        _req("rows", pa.int64()),
        _req("files", pa.string()),  # JSON list of {path (relative to root), sha256, bytes, rows}
        _opt("seconds", pa.float64()),
        _req("completed_at", UTC_US),
        # Per-unit dependency key (adv2core.config.unitkeys); null in stores written before it existed,
        # whose units are then never copied forward. A copied unit names its source config hash and the
        # run id of the source manifest (its rows were computed there, or further up that chain).
        _opt("unit_key", pa.string()),
        _opt("copied_from", pa.string()),
        _opt("copied_from_run", pa.string()),
        # JSON list of the interpreters refused for the unit's model when it was written (gates.on_refused:
        # skip; transfer units: no rows under them as evaluators); null when none. Such a unit is never copied
        # forward, and is recomputed by a run that does not refuse them (flows.plan.drop_refused).
        _opt("refused", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {"runs": RUNS, "samples": SAMPLES, "examples": EXAMPLES, "benign": BENIGN, "transfer": TRANSFER,
                                 "evaluations": EVALUATIONS, "detections": DETECTIONS, "shards": SHARDS}

# Columns whose values must come from a fixed vocabulary.
_ENUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("samples", "status"): SAMPLE_STATUSES,
    ("examples", "status"): SAMPLE_STATUSES,
    ("evaluations", "stage"): tuple(VIEW_STAGE.values()),
    ("shards", "stage"): STAGES,
    ("detections", "role"): DETECTION_ROLES,
}


def schema_for(table_name: str) -> pa.Schema:
    """The schema of one table; ValueError for an unknown name."""
    try:
        return SCHEMAS[table_name]
    except KeyError:
        raise ValueError(f"unknown table {table_name!r}; expected one of {sorted(SCHEMAS)}") from None


def _check_enums(table_name: str, table: pa.Table) -> None:
    for (tname, col), allowed in _ENUMS.items():
        if tname != table_name or table.num_rows == 0:
            continue
        bad = set(table.column(col).to_pylist()) - set(allowed)
        if bad:
            raise ValueError(f"{table_name}.{col}: invalid value(s) {sorted(map(str, bad))}; allowed {list(allowed)}")


def _check_nulls(table_name: str, table: pa.Table, schema: pa.Schema) -> None:
    for f in schema:
        if not f.nullable and table.column(f.name).null_count:
            raise ValueError(f"{table_name}.{f.name}: null value in a required column")


def table_from_rows(table_name: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Build a table with the exact schema from row dicts.

    Every non-nullable column must be present in every row (ValueError naming the column); nullable
    columns may be left out (null). Unknown keys are an error, so a misspelt metric never vanishes.
    """
    schema = schema_for(table_name)
    names = set(schema.names)
    for i, row in enumerate(rows):
        extra = set(row) - names
        if extra:
            raise ValueError(f"{table_name} row {i}: unknown column(s) {sorted(extra)}")
        for f in schema:
            if not f.nullable and f.name not in row:
                raise ValueError(f"{table_name} row {i}: missing required column {f.name!r}")
    arrays = []
    for f in schema:
        try:
            arrays.append(pa.array([row.get(f.name) for row in rows], type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{table_name}.{f.name}: cannot convert to {f.type}: {msg}") from None
    table = pa.Table.from_arrays(arrays, schema=schema)
    _check_nulls(table_name, table, schema)
    _check_enums(table_name, table)
    return table


def conform_table(table_name: str, table: pa.Table) -> pa.Table:
    """Check an existing Arrow table against the schema (same column set) and cast it to it.

    Column order does not matter; the result has the schema's order, types and metadata.
    """
    schema = schema_for(table_name)
    have, want = set(table.column_names), set(schema.names)
    if len(have) != len(table.column_names):
        raise ValueError(f"{table_name}: duplicate column names")
    missing = [n for n in schema.names if n not in have and not schema.field(n).nullable]
    if missing:
        raise ValueError(f"{table_name}: missing required column {missing[0]!r}")
    extra = sorted(have - want)
    if extra:
        raise ValueError(f"{table_name}: unknown column(s) {extra}")
    cols = []
    for f in schema:
        if f.name not in have:
            cols.append(pa.nulls(table.num_rows, type=f.type))
            continue
        col = table.column(f.name)
        try:
            cols.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            msg = str(exc).splitlines()[0]
            raise ValueError(f"{table_name}.{f.name}: cannot cast {col.type} to {f.type}: {msg}") from None
    out = pa.Table.from_arrays(cols, schema=schema)
    _check_nulls(table_name, out, schema)
    _check_enums(table_name, out)
    return out


def to_evaluations(view: str, table: pa.Table) -> pa.Table:
    """Rows in the shape of view ``samples`` or ``transfer`` (already conformed to it) as stored
    ``evaluations`` rows: ``samples.interpreter`` becomes both source and eval interpreter; the columns a
    view lacks are null."""
    if view not in VIEW_STAGE:
        raise ValueError(f"{view!r} is not a view over evaluations; expected one of {sorted(VIEW_STAGE)}")
    n = table.num_rows
    if view == "samples":
        interp = table.column("interpreter")
        table = table.drop_columns(["interpreter"]).append_column("source_interpreter", interp)
        table = table.append_column("eval_interpreter", interp)
    table = table.append_column("stage", pa.array([VIEW_STAGE[view]] * n, pa.string()))
    return conform_table("evaluations", table)
