"""Results store: Parquet shards written atomically per unit, read through locked-down DuckDB views.

Only numpy/pyarrow/duckdb are imported here (no torch, no prefect) so ``adv2 sql`` starts fast.
"""

from adv2core.store.arrays import apply_perturbation, encode_perturbation, quantise, read_arrays
from adv2core.store.errors import QueryError, SqlRefused, StoreError
from adv2core.store.layout import ShardUnit, arrays_path, manifest_path, run_path, table_path
from adv2core.store.query import check_sql, connect, run_sql
from adv2core.store.schemas import SCHEMA_VERSION, SCHEMAS, conform_table, schema_for, table_from_rows
from adv2core.store.writer import ResultStore

__all__ = [
    "SCHEMA_VERSION", "SCHEMAS", "QueryError", "ResultStore", "ShardUnit", "SqlRefused", "StoreError",
    "apply_perturbation", "arrays_path", "check_sql", "conform_table", "connect", "encode_perturbation",
    "manifest_path", "quantise", "read_arrays", "run_path", "run_sql", "schema_for", "table_from_rows",
    "table_path",
]
