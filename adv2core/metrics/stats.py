"""Aggregation of per-sample metrics into table cells (spec section 4, pitfall 8.12).

Rule: the success rate is over **all** attacked images; every other metric (confidence, L1, L2, IoU,
transfer entries) is averaged over the **successful** images only. Each number comes with a 95 %
interval: Wilson for the success rate, percentile bootstrap for means. ``std`` (ddof = 1) is also
reported for parity with the official ``mean +- std`` tables.

Inputs may be numpy arrays, sequences or torch tensors (any device; moved to host once here, which is
report-time code). NaN values are ignored (they count neither in the mean nor in ``n``); an empty
population gives NaN statistics rather than an error.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Mapping

import numpy as np

from adv2core.metrics._checks import MetricInputError

#: Cap on bootstrap index-matrix entries per chunk (keeps memory ~32 MiB whatever the sample size).
_CHUNK_ENTRIES = 1 << 22


def to_numpy(x: Any) -> np.ndarray:
    """1-D float64 numpy view of an array-like or torch tensor (any device)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    return arr.reshape(-1)


def bootstrap_ci(
    values: Any, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, lo, hi): sample mean and percentile-bootstrap ``1 - alpha`` interval, NaNs ignored.

    Vectorised: resample indices as an ``[n_boot, n]`` matrix (chunked for large n). Deterministic for
    a seed. One value gives lo = hi = mean; no value gives three NaNs.
    """
    if n_boot < 1 or not 0 < alpha < 1:
        raise MetricInputError(f"bootstrap_ci: need n_boot >= 1 and 0 < alpha < 1 (got {n_boot}, {alpha})")
    v = to_numpy(values)
    v = v[~np.isnan(v)]
    n = v.size
    if n == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(v.mean())
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ENTRIES // n)
    boot = np.concatenate(
        [v[rng.integers(0, n, size=(min(rows, n_boot - s), n))].mean(axis=1) for s in range(0, n_boot, rows)]
    )
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return (mean, float(lo), float(hi))


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved at 0 % and 100 %)."""
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact bounds at the edges (the formula leaves ~1e-17 of rounding there)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def success_rate(success: Any, alpha: float = 0.05) -> tuple[float, float, float]:
    """(rate, lo, hi) over all attacked images, Wilson interval. NaN entries (unknown) are dropped."""
    s = to_numpy(success)
    s = s[~np.isnan(s)]
    n = s.size
    if n == 0:
        return (math.nan, math.nan, math.nan)
    k = int(np.count_nonzero(s))
    lo, hi = wilson_interval(k, n, alpha)
    return (k / n, lo, hi)


def summarize(
    success: Any,
    values: Mapping[str, Any],
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float | int]:
    """One table cell as a flat dict (ready for a Parquet/DuckDB row).

    Keys: ``n_attacked``, ``n_success``, ``success_rate``/``_lo``/``_hi`` (all images), and for each
    metric name ``{name}_mean``/``_lo``/``_hi``/``_std``/``_n`` over the successful images (``_n`` =
    successful images with a non-NaN value).
    """
    succ = to_numpy(success)
    if np.isnan(succ).any():
        raise MetricInputError("summarize: success flags contain NaN")
    mask = succ != 0
    rate, lo, hi = success_rate(succ, alpha)
    out: dict[str, float | int] = {
        "n_attacked": int(succ.size),
        "n_success": int(mask.sum()),
        "success_rate": rate,
        "success_rate_lo": lo,
        "success_rate_hi": hi,
    }
    for name, vals in values.items():
        v = to_numpy(vals)
        if v.shape != succ.shape:
            raise MetricInputError(f"summarize: metric {name!r} has {v.size} values for {succ.size} images")
        sel = v[mask]
        sel = sel[~np.isnan(sel)]
        mean, mlo, mhi = bootstrap_ci(sel, n_boot=n_boot, alpha=alpha, seed=seed)
        out[f"{name}_mean"] = mean
        out[f"{name}_lo"] = mlo
        out[f"{name}_hi"] = mhi
        out[f"{name}_std"] = float(sel.std(ddof=1)) if sel.size > 1 else math.nan
        out[f"{name}_n"] = int(sel.size)
    return out
