"""Objective evaluations per second of the default setup (VGG-19, Caffe weights, paper layers).

Prints each configuration's rate and its ratio to the baseline measured first in this process:
    python benchmarks/throughput.py [--device cuda] [--sizes 256 512 1024] [--evals 20]
On a GPU it also measures the CPU at the baseline size, for the GPU/CPU ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from nst import images
from nst.features import FeatureExtractor, get_weights_spec
from nst.objective import Objective, ObjectiveSpec, layer_weights

CONTENT, STYLE = ["conv4_2"], ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]


def rate(device: torch.device, size: int, evals: int) -> float:
    spec = get_weights_spec("vgg19", "caffe")
    ex = FeatureExtractor("vgg19", spec, CONTENT + STYLE, "avg", device)
    img = images.load_image("content", "tubingen")
    w, h = images.target_size(*img.size, size)
    x0 = images.to_tensor(images.resize(img, (w, h)), device)
    one = torch.ones(1, device=device)
    obj = Objective(ex, ObjectiveSpec(tuple(CONTENT), tuple(STYLE), layer_weights("", STYLE, None), "mse", "mse"),
                    content=x0, style=x0.flip(-1), content_weight=one, style_weight=one, tv_weight=0 * one)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--evals", type=int, default=10)
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
    if device.type == "cuda":
        cpu = rate(torch.device("cpu"), args.sizes[0], max(2, args.evals // 5))
        print(f" cpu long side {args.sizes[0]:>5}px: {cpu:8.2f} evals/s   GPU/CPU speed-up at {args.sizes[0]}px: {base / cpu:6.1f}x")


if __name__ == "__main__":
    main()
