"""Benchmark building blocks the pipeline tasks call (plain PyTorch; no Prefect here)."""

from adv2core.bench.cell import (
    ROW_KEYS,
    TRANSFER_KEYS,
    CellResult,
    attack_embedded,
    cross_evaluate,
    default_interpreter,
    make_target_maps,
    run_cell,
)

__all__ = [
    "ROW_KEYS", "TRANSFER_KEYS", "CellResult", "attack_embedded", "cross_evaluate", "default_interpreter",
    "make_target_maps", "run_cell",
]
