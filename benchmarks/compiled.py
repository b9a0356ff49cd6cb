"""The product's compiled evaluation (compile=default: the network under torch.compile, the loss terms
eager; nst.compiled) against the eager one, in one process, interleaved.

    python benchmarks/compiled.py [--sizes 32 64 128] [--rounds 3] [--evals 5] [--device cpu]

Per size: the compile time (with three evaluations), then `rounds` rounds of `evals` eager and `evals`
compiled evaluations of the default setup (VGG-19, Caffe weights, paper layers, one image), each
round's speed-up (eager time / compiled time) and their median. Interleaving keeps a shared machine's
changing load out of the ratio as far as it can.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nst import compiled, compose
from nst.device import resolve_device
from nst.features import FeatureExtractor, get_weights_spec
from nst.inputs import prepare
from nst.loss import Loss
from nst.stage import load_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--evals", type=int, default=5, help="evaluations per mode and round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mode", default="default", choices=["default", "reduce-overhead"])
    args = ap.parse_args()
    device = resolve_device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, fp32, batch 1, "
          f"compile={args.mode}")
    for size in args.sizes:
        s = compose.settings_for([f"device={args.device}", f"size={size}", "precision=fp32", "logger=none"])
        layers = list(dict.fromkeys(s.objective.content_layers + s.objective.style_layers))
        ex = compiled.cached_extractor(("benchmark", size), lambda s=s, layers=layers: FeatureExtractor(
            s.arch, get_weights_spec(s.arch, s.weights), layers, s.pooling, device))
        t = prepare(s, load_inputs(s), device)
        w = {k: torch.tensor([getattr(s, k)], device=device) for k in ("content_weight", "style_weight", "tv_weight")}
        obj = Loss(ex, s.objective, content=t["content"], style=t["styles"], style_blend=s.style_blend, **w)
        x = t["init"].clone().requires_grad_(True)
        modes = {"eager": compiled.Evaluator(ex, "off", 1), "compiled": compiled.Evaluator(ex, args.mode, 1)}

        def step(evaluate, x=x, obj=obj) -> None:
            x.grad = None
            obj.terms(evaluate(x), x)["total"].sum().backward()

        start = time.perf_counter()
        for _ in range(3):
            step(modes["compiled"])
        sync()
        print(f"{size} px: compiling and 3 evaluations {time.perf_counter() - start:.1f} s "
              f"(evaluated: {modes['compiled'].mode})", flush=True)
        for _ in range(2):
            step(modes["eager"])
        ratios = []
        for r in range(args.rounds):
            times = {}
            for name, evaluate in modes.items():
                sync()
                a = time.perf_counter()
                for _ in range(args.evals):
                    step(evaluate)
                sync()
                times[name] = (time.perf_counter() - a) / args.evals
            ratios.append(times["eager"] / times["compiled"])
            print(f"{size} px round {r + 1}: eager {1000 * times['eager']:.0f} ms, compiled "
                  f"{1000 * times['compiled']:.0f} ms, speed-up {ratios[-1]:.2f}x", flush=True)
        print(f"{size} px: median speed-up of the compiled evaluation {statistics.median(ratios):.2f}x", flush=True)


if __name__ == "__main__":
    main()
