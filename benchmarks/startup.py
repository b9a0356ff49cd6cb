"""Start-up: `nst --help`, a Tab of shell completion and a 1-step 32 px run, each against
`python -c "import torch"` on the same machine, as ratios of median wall times.

    python benchmarks/startup.py [--reps 5] [--python PYTHON]

Every command is a fresh process (as a user's is), run `--reps` times in rotation with the others so
that a change in the machine's load spreads over all of them; the medians' ratios to `import torch`
are printed, with the medians themselves. Targets: --help and completion at most 0.5x, the 1-step run
at most 1.4x. The code measured is whichever `nst` the interpreter imports (set PYTHONPATH to compare
two checkouts).
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


def commands(python: str, out: Path) -> dict[str, tuple[list[str], dict]]:
    return {
        "import torch": ([python, "-c", "import torch"], {}),
        "nst --help": ([python, "-m", "nst.run", "--help"], {}),
        "completion (Tab)": ([python, "-m", "nst.run", "-sc", "query=bash"], {"COMP_LINE": "nst sty"}),
        "1-step 32 px run": ([python, "-m", "nst.run", "size=32", "steps=1", "logger=none", "device=cpu",
                              f"hydra.run.dir={out}/run"], {"NST_PROGRESS": "0"}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nst-startup-") as tmp:
        cmds = commands(args.python, Path(tmp))
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for rep in range(args.reps + 1):  # the first round warms the file cache and is not counted
            for name, (argv, extra) in cmds.items():
                start = time.perf_counter()
                r = subprocess.run(argv, cwd=tmp, env={**os.environ, **extra}, capture_output=True, text=True)
                took = time.perf_counter() - start
                if r.returncode != 0:
                    sys.exit(f"{name} failed ({r.returncode}): {r.stderr[-2000:]}")
                if rep:
                    times[name].append(took)
    base = statistics.median(times["import torch"])
    import platform

    print(f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"{args.reps} runs each (medians)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:18s} {med:6.2f} s  ({min(ts):.2f}-{max(ts):.2f})  {med / base:5.2f}x import torch")


if __name__ == "__main__":
    main()
