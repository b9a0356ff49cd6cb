"""Intra-op threads on a shared CPU: a batch of four trials with all the process's threads, with one,
and with the runner's rule (nst.device.cpu_threads: the cores idle just before the batch), while the
machine is idle, while a Python busy loop holds a core, and while another PyTorch job computes.

    python benchmarks/threads.py [--reps 3] [--cases idle pyloop torchjob] [--size 64] [--steps 30]

Each case starts its competitor (a separate process; none for idle), waits for it to settle, runs
the three modes in turn (their order rotating between repetitions, so drift spreads over all), and
stops it. One warm-up batch first (weights loaded). Per case and mode: the median wall time of a
batch, its min and max, the threads the runner chose, and the ratio of the median to the
all-threads mode in the same case.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from sweep import make_trials  # benchmarks/, this script's folder

from nst.engine import run_together

COMPETITORS = {
    "idle": None,
    "pyloop": [sys.executable, "-c", "while True: pass"],
    "torchjob": [sys.executable, "-c", "import torch\na = torch.randn(1024, 1024)\nwhile True: a @ a"],
}


def batch(folder: Path, size: int, steps: int) -> tuple[float, int]:
    trials = make_trials([[f"size={size}", f"steps={steps}", f"style_weight=1e{e}"] for e in (3, 4, 5, 6)], "cpu", folder)
    t = time.perf_counter()
    summaries = run_together(trials)
    wall = time.perf_counter() - t
    assert all(s["status"] == "completed" for s in summaries), [s.get("error") for s in summaries]
    return wall, summaries[0]["cpu_threads"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cases", nargs="+", default=list(COMPETITORS), choices=list(COMPETITORS))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    limit = torch.get_num_threads()
    modes = {f"all {limit}": str(limit), "1 thread": "1", "rule": "auto"}
    print(f"CPU: {os.cpu_count()} cores, process limit {limit} threads, torch {torch.__version__}; batch: 4 trials, "
          f"{args.size} px, {args.steps} evaluations; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"{'case':<9} {'mode':<9} {'median s':>9} {'min':>7} {'max':>7} {'threads':>8} {'vs all':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NST_CPU_THREADS"] = str(limit)
        batch(Path(tmp) / "warm", args.size, args.steps)
        for case in args.cases:
            proc = subprocess.Popen(COMPETITORS[case]) if COMPETITORS[case] else None
            try:
                time.sleep(2 if proc else 0)
                times: dict[str, list[float]] = {m: [] for m in modes}
                chosen: dict[str, set] = {m: set() for m in modes}
                names = list(modes)
                for rep in range(args.reps):
                    for name in names[rep % 3:] + names[:rep % 3]:
                        os.environ["NST_CPU_THREADS"] = modes[name]
                        wall, threads = batch(Path(tmp) / f"{case}_{rep}_{modes[name]}", args.size, args.steps)
                        times[name].append(wall)
                        chosen[name].add(threads)
            finally:
                if proc:
                    proc.kill()
                    proc.wait()
            base = statistics.median(times[names[0]])
            for name in names:
                t = times[name]
                print(f"{case:<9} {name:<9} {statistics.median(t):9.2f} {min(t):7.2f} {max(t):7.2f} "
                      f"{'/'.join(map(str, sorted(chosen[name]))):>8} {statistics.median(t) / base:7.2f}", flush=True)
        os.environ.pop("NST_CPU_THREADS")


if __name__ == "__main__":
    main()
