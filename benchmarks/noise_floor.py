"""The float-noise floor of the standardised metrics: how far they move when nothing that matters changes.

    python benchmarks/noise_floor.py                     # tubingen x starry_night, 128 px, 60 evaluations
    python benchmarks/noise_floor.py size=256 steps=150  # any trial overrides

Runs the same trial (L-BFGS by default) twice on the CPU in this process, on 1 and on 2 intra-op
threads (NST_CPU_THREADS, which the runner applies with torch.set_num_threads): another thread count
sums in another order, the rounding differs, and L-BFGS carries the difference along. For each metric
of nst.metrics it prints both values and the relative difference |a - b| / |b|: the floor. Two
settings whose metrics differ by less than this are tied, not ranked. nst.metrics.NOISE_FLOOR records
this script's figures; nst.report marks values within them of the best with "≈".
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from precision import relative_difference  # benchmarks/, this script's folder
from sweep import make_trials

DEFAULTS = ["content=tubingen", "style=starry_night", "size=128", "steps=60"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str]) -> None:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    overrides = DEFAULTS + argv  # later overrides win
    summaries = {}
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (1, 2):
            os.environ["NST_CPU_THREADS"] = str(threads)  # read by the runner (nst.device.cpu_threads)
            from nst.engine import run_together

            start = time.perf_counter()
            summary = run_together(make_trials([overrides], "cpu", Path(tmp) / str(threads)))[0]
            if summary["status"] != "completed":
                raise SystemExit(f"the trial on {threads} thread(s) failed: {summary.get('error')}")
            summaries[threads] = summary
            print(f"{threads} thread(s): {summary['evaluations']} evaluations in {time.perf_counter() - start:.1f} s")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; trial: {' '.join(overrides)}")
    print(f"{'metric':<18} {'1 thread':>12} {'2 threads':>12} {'floor':>9}")
    one, two = summaries[1]["metrics"], summaries[2]["metrics"]
    for k in two:
        a, b = one.get(k), two[k]
        if a is None or b is None:
            print(f"{k:<18} {'skipped':>12} {'skipped':>12} {'-':>9}")
            continue
        print(f"{k:<18} {a:>12.6g} {b:>12.6g} {100 * relative_difference(a, b):>8.3f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
