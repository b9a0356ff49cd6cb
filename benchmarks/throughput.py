"""Objective evaluations per second of the default setup (VGG-19, Caffe weights, paper layers).

Prints each configuration's rate and its ratio to the baseline measured first in this process:
    python benchmarks/throughput.py [--device cuda] [--sizes 256 512 1024] [--evals 20] [--loop]
On a GPU it also measures the CPU at the baseline size, for the GPU/CPU ratio. --loop times the
whole optimisation loop (each optimiser, with and without the run's file sink) against bare
forward+backward evaluations at the first size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from nst import cli, images
from nst.batch import Trial, run_batch
from nst.features import FeatureExtractor, get_weights_spec
from nst.objective import Objective, ObjectiveSpec, layer_weights
from nst.settings import load_inputs
from nst.sinks import FileSink

CONTENT, STYLE = ["conv4_2"], ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]


def build(device: torch.device, size: int):
    spec = get_weights_spec("vgg19", "caffe")
    ex = FeatureExtractor("vgg19", spec, CONTENT + STYLE, "avg", device)
    img = images.load_image("content", "tubingen")
    w, h = images.target_size(*img.size, size)
    x0 = images.to_tensor(images.resize(img, (w, h)), device)
    one = torch.ones(1, device=device)
    obj = Objective(ex, ObjectiveSpec(tuple(CONTENT), tuple(STYLE), layer_weights("", STYLE, None), "mse", "mse"),
                    content=x0, style=x0.flip(-1), content_weight=one, style_weight=one, tv_weight=0 * one)
    return obj, x0


def rate(device: torch.device, size: int, evals: int) -> float:
    obj, x0 = build(device, size)
    x = x0.clone().requires_grad_(True)

    def step():
        x.grad = None
        obj(x)["total"].sum().backward()

    for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(evals):
        step()
    sync()
    return evals / (time.perf_counter() - t)


LOOPS = {  # config overrides per optimiser
    "lbfgs (history 100, line search)": ["optimizer=lbfgs", "optimizer.history_size=100", "optimizer.line_search=true"],
    "lbfgs (history 20, line search)": ["optimizer=lbfgs", "optimizer.history_size=20", "optimizer.line_search=true"],
    "lbfgs (history 100, fixed steps)": ["optimizer=lbfgs", "optimizer.history_size=100", "optimizer.line_search=false"],
    "adam": ["optimizer=adam", "optimizer.lr=0.02"],
}


def loop_rate(device: torch.device, size: int, evals: int, overrides: list[str], with_files: bool) -> float:
    """Evaluations per second of the runner's optimisation loop (one trial), optionally with the file sink."""
    with tempfile.TemporaryDirectory() as tmp:
        def trial(steps: int) -> Trial:
            s = cli.settings_for([f"device={device}", f"size={size}", f"steps={steps}", "logger=none", *overrides])
            sinks = (lambda pos: [FileSink(Path(tmp), log_every=1, frame_every=50, steps=steps)]) if with_files else (lambda pos: [])
            return Trial(s, load_inputs(s), Path(tmp), sinks)

        run_batch([trial(3)])  # warm-up
        summary = run_batch([trial(evals)])[0]
        assert summary["status"] == "completed", summary.get("error")
        return summary["evaluations"] / summary["optimisation_time"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--evals", type=int, default=10)
    ap.add_argument("--loop", action="store_true", help="also time the whole optimisation loop per optimiser, "
                    "as a ratio to bare forward+backward evaluations at the first size")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    base = None
    for size in args.sizes:
        r = rate(device, size, args.evals)
        base = base or r
        print(f"{device.type:>4} long side {size:>5}px: {r:8.2f} evals/s   ratio to {args.sizes[0]}px baseline: {r / base:6.3f}")
    if args.loop:
        size = args.sizes[0]
        for name, overrides in LOOPS.items():
            for with_files in (False, True):
                r = loop_rate(device, size, max(args.evals, 30), overrides, with_files)
                what = f"{name}{' + metrics.jsonl/frames' if with_files else ''}"
                print(f"loop {size}px {what:<52}: {r:8.2f} evals/s   ratio to bare evaluations: {r / base:6.3f}")
    if device.type == "cuda":
        cpu = rate(torch.device("cpu"), args.sizes[0], max(2, args.evals // 5))
        print(f" cpu long side {args.sizes[0]:>5}px: {cpu:8.2f} evals/s   GPU/CPU speed-up at {args.sizes[0]}px: {base / cpu:6.1f}x")


if __name__ == "__main__":
    main()
