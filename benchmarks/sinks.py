"""The file sink's cost to the optimisation loop: the time on_step keeps the loop's thread, per evaluation.

    python benchmarks/sinks.py [--size 512] [--steps 200] [--log-every 1] [--frame-every 50] [--device cpu] [--json PATH]

A trial's FileSink gets `steps` step records of a [1,3,H,W] image (the size of the long side given, 4:3)
and every loss term of the default objective. Two ways, in one process, the same records each time:
- in the loop: each write waited for in the loop's thread (on_step, then flush), as before the writer thread;
- in the background: on_step only, the writes left to the writer thread (flushed once, at the end).
Prints the loop thread's milliseconds per evaluation for both, their ratio, and the time until every
file was written. The background row's loop time is what the optimisation waits for now.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nst.sinks import FileSink, StepRecord

TERMS = ["content/conv4_2", "style/conv1_1", "style/conv2_1", "style/conv3_1", "style/conv4_1", "style/conv5_1",
         "content", "style", "tv", "total"]


def run(folder: Path, image: torch.Tensor, steps: int, log_every: int, frame_every: int, wait: bool) -> tuple[float, float]:
    """(seconds in the loop's thread, seconds until every file is written)."""
    sink = FileSink(folder, log_every=log_every, frame_every=frame_every, steps=steps)
    values = {name: 0.5 for name in TERMS}
    loop = 0.0
    start = time.perf_counter()
    for n in range(1, steps + 1):
        image.add_(1e-4).clamp_(0, 1)  # the optimiser's step (not timed)
        t = time.perf_counter()
        sink.on_step(StepRecord(n, n * 0.01, dict(values), image))
        if wait:
            sink.flush()
        loop += time.perf_counter() - t
    sink.close({})
    return loop, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="the image's long side (4:3)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--log-every", type=int, default=1)
    ap.add_argument("--frame-every", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is printed")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    w, h = args.size, args.size * 3 // 4
    image = torch.rand(1, 3, h, w, device=args.device)
    print(f"FileSink, {w}x{h} on {args.device}, {args.steps} evaluations, metrics every {args.log_every}, "
          f"a frame every {args.frame_every}; torch {torch.__version__}; median of {args.rounds} interleaved rounds")
    got: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp) / "warm", image, 10, 1, 5, False)
        for r in range(args.rounds):
            for wait in (True, False):
                got[wait].append(run(Path(tmp) / f"{r}_{wait}", image, args.steps, args.log_every, args.frame_every, wait))

    per = {wait: median([loop for loop, _ in got[wait]]) / args.steps * 1000 for wait in got}
    whole = {wait: median([total for _, total in got[wait]]) for wait in got}
    print(f"{'':22} {'loop ms/eval':>12} {'all written':>12}")
    print(f"{'in the loop':22} {per[True]:12.3f} {whole[True]:11.2f}s")
    print(f"{'in the background':22} {per[False]:12.3f} {whole[False]:11.2f}s")
    print(f"the loop's thread waits {per[False] / per[True]:.3f}x as long with the writer thread")
    if args.json:
        args.json.write_text(json.dumps({
            "size": f"{w}x{h}", "device": args.device, "torch": torch.__version__, "steps": args.steps,
            "log_every": args.log_every, "frame_every": args.frame_every,
            "loop_ms_per_eval_in_loop": round(per[True], 4), "loop_ms_per_eval_background": round(per[False], 4),
            "ratio": round(per[False] / per[True], 4), "all_written_s_in_loop": round(whole[True], 3),
            "all_written_s_background": round(whole[False], 3)}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
