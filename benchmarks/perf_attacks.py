"""Attack efficiency against the pass-count floor, the authors' loop shape, memory, and cost per cell.

Measurements run in child processes (``--child JSON``); the efficiency cells of one model share a process,
with the peak-memory high-water mark reset before each cell and a fixed glibc mmap threshold (see
:func:`bench_efficiency`):

* **efficiency** = measured wall time / (pass-equivalents the attack really performed x the measured
  time of one pass of the same model at the same batch size, in the same process). Pass-equivalents
  are counted by :class:`adv2core.passes.PassCounter` (convolution and matrix FLOPs of everything
  dispatched, over the FLOPs of one forward) in a second, identical run; the reference is one batched
  forward + input-gradient backward (2 pass-equivalents per image). 1.0 means the attack costs exactly
  its passes; the excess is elementwise work, Python and framework overhead.
* **loop shape**: the same attack (same steps, so the same pass count per image) run one image at a
  time, at the official batch size of its interpreter (spec section 7.3), and at our batch, all three
  in one process, one after the other.
* **memory**: the process's peak resident set growth during the attack (CPU), or the peak CUDA memory
  above the level before it (GPU).
* **cost per cell**: pass-equivalents per image at the preset's full step counts (counted on one image)
  x the measured seconds per pass-equivalent per image.

The code is split by concern; this module is the entry point (the child processes run it) and re-exports
every name: ``perf_attacks_common`` (cells, batch sizes, presets, spawning child processes, table helpers),
``perf_attacks_child`` (the measurements), ``perf_attacks_efficiency`` (efficiency, memory, profiles),
``perf_attacks_loop`` (loop shape, cost per cell), ``perf_attacks_projection`` (the paper projection).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.perf_attacks_child import (_attack, _inputs, _interpreter, _model, _peak_rss_mib,  # noqa: E402,F401
                                           _reset_peak_rss, _rss_mib, _sync, _timed, child)
from benchmarks.perf_attacks_common import (CELLS, CHILD_SCRIPT, INTERPRETERS, MEMORY_CELLS,  # noqa: E402,F401
                                            OFFICIAL_BATCH, PRESETS, _eff_limit, _label, _target, spawn,
                                            spawn_counts, try_spawn)
from benchmarks.perf_attacks_efficiency import (EFFICIENCY_METHOD, _eff_table, bench_efficiency,  # noqa: E402,F401
                                                bench_memory_official, bench_profiles)
from benchmarks.perf_attacks_loop import COST_METHOD, LOOP_METHOD, bench_cell_cost, bench_loop_shape  # noqa: E402,F401
from benchmarks.perf_attacks_projection import (MASK_DESIGN, SCALES, STAGE_FIELDS,  # noqa: E402,F401
                                                _mask_extrapolate, _scaled, bench_paper_projection)

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        raise SystemExit(0)
    raise SystemExit("run through benchmarks/run.py (make bench)")
