#!/usr/bin/env python
"""Performance evidence for the pipeline (issue #14): orchestration overhead and DuckDB at scale.

Two functions return Markdown sections for ``BENCHMARKS.md`` (``benchmarks/run.py`` imports them):

* :func:`bench_pipeline` — tasks of the quick preset's real size (its own attack loop counts, one shard of
  16 images) on a subset of its cells (resnet-mini; Grad, CAM, RTS; PGD + ADV²; cross-evaluation), run on a
  fresh data root: one warm-up that trains the model and its RTS masker (reported, not counted), then timed
  runs on fresh results roots with the inline engine (no Prefect), the Prefect engine (thread pool, 1 worker
  as in quick) and Prefect on a 2-worker local Dask cluster, plus runs where every unit is already stored
  (pure orchestration cost). About 5 minutes on 2 cores.
* :func:`bench_duckdb` — a generated 10^6-row ``samples`` set and a 10^6-row ``transfer`` set in the
  real store layout (``ResultStore.write_shard``), and the SQL the report really runs (captured from the
  report's own table builders, not copied), median of 3 after a warm-up.

Every number in the Markdown is computed at run time. ``smoke=True``: tiny sizes, for tests.
Run as a script to print both sections: ``python benchmarks/perf_pipeline.py [--smoke]``.

The code is split by concern; this module is the entry point and re-exports every name:
``perf_pipeline_overhead`` (the overhead section, its settings and checks), ``perf_pipeline_runs`` (the timed
runs and the profile), ``perf_duckdb`` (DuckDB at scale), ``perf_format`` (number formatting).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.perf_duckdb import (ATTACKS, CONFIG_HASH, DUCKDB_TARGET_S, INTERPRETERS, MODELS,  # noqa: E402,F401
                                    RUN_ID, _generate, _Recorder, _report_queries, _top_operator, bench_duckdb)
from benchmarks.perf_format import _fmt, _pct, _verdict  # noqa: E402,F401
from benchmarks.perf_pipeline_overhead import (_COMMON, DASK_EXTRA, OVERHEAD_TARGET,  # noqa: E402,F401
                                               PIPELINE_OVERRIDES, RTS_TRAINING_CAP, SMOKE_OVERRIDES,
                                               WARMUP_EXTRA, _cap_touches, _left_out, _loop_note, _structure,
                                               bench_pipeline)
from benchmarks.perf_pipeline_runs import (_Collector, _env, _profile_noop, _rts_quality_bar_off,  # noqa: E402,F401
                                           _timed_run)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (tests)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    lines = bench_pipeline(smoke=args.smoke) + bench_duckdb(rows=args.rows, smoke=args.smoke)
    print("\n".join(lines))
    print(f"[perf_pipeline] total {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
