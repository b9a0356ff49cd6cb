"""The L-BFGS optimiser's own cost per evaluation, without the network: per-trial port vs vectorised.

Drives the engine's L-BFGS (nst.optimizers.BatchLBFGS) and the reference port (tests/lbfgs_oracle.py) over B
trials of image-sized problems (a separable quartic whose curvatures span six decades, so L-BFGS needs its
history and its line search for hundreds of iterations, as in a transfer) and prints the optimiser time per
evaluation of each, and their ratio, measured in this process:
    python benchmarks/optimizer.py [--device cuda] [--size 512] [--batch 8] [--history 100] [--evals 40]
The objective is a few elementwise kernels, so what is timed is the optimiser's work and its host
synchronisations: on a GPU the per-trial port syncs several times per history pair (torch's
`q.add_(y, alpha=-al[i])` reads a tensor), the vectorised driver once per tick.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the reference port lives with its tests
from lbfgs_oracle import PerTrialLBFGS
from nst.optimizers import BatchLBFGS


def objective(x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: sum(h * (x - 0.5)^2 + (x - 0.5)^4 / 100); x [k, n], h [k, n]."""
    u = x - 0.5
    return (h * u * u + 0.01 * u**4).sum(1), 2 * h * u + 0.04 * u**3


def run(cls, x0: torch.Tensor, h: torch.Tensor, evals: int, history: int) -> tuple[float, int]:
    opt = cls(x0, lr=1.0, max_iter=evals, max_eval=evals, history_size=history, line_search=True)
    sync = torch.cuda.synchronize if x0.is_cuda else (lambda: None)
    sync()
    t0, n = time.perf_counter(), 0
    while opt.running:
        asked = opt.ask()
        idx = [i for i, _ in asked]
        x = torch.stack([p.reshape(-1) for _, p in asked])
        f, g = objective(x, h[idx])
        losses = f.tolist()  # the runner's one transfer per tick carries the losses
        void = opt.tell(losses, g)
        n += len(asked) - len(void)
        opt.finished()
    sync()
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=512, help="long side; the image is size x 3/4 size")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--history", type=int, default=100)
    ap.add_argument("--evals", type=int, default=200, help="evaluations per trial")
    args = ap.parse_args()
    device = torch.device(args.device)
    n = 3 * args.size * (args.size * 3 // 4)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(args.batch, n, generator=gen).to(device)
    h = (10 ** (torch.rand(args.batch, n, generator=gen) * 6 - 4)).to(device)  # [B, n] curvatures 1e-4 to 1e2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"{args.batch} trials of {n} variables, history {args.history}, strong-Wolfe line search, fp32")
    run(BatchLBFGS, x0, h, 5, args.history)  # warm-up (allocator, kernels)
    times = {}
    for label, cls in (("per-trial port", PerTrialLBFGS), ("vectorised", BatchLBFGS)):
        seconds, evaluations = run(cls, x0, h, args.evals, args.history)
        times[label] = seconds / evaluations
        print(f"{label:<15} {evaluations:5d} evaluations in {seconds:7.3f} s: {1e3 * times[label]:8.3f} ms per evaluation")
    print(f"vectorised / per-trial time per evaluation: {times['vectorised'] / times['per-trial port']:.3f}")


if __name__ == "__main__":
    main()
