"""Objective evaluations per second of the default setup (VGG-19, Caffe weights, paper layers), the
FLOP rate they achieve and how it compares with the device's peak.

    python benchmarks/throughput.py [--device cuda] [--sizes 256 512 1024] [--precisions fp32 tf32 bf16]
                                    [--batch 1] [--evals 10] [--loop] [--loop-evals 30] [--loops lbfgs adam]
                                    [--compile default reduce-overhead] [--json PATH]

One row per size and precision: the bare evaluation (forward to the deepest layer, the objective,
backward to the image, of a [B,3,H,W] batch), in evaluations per second per image; the FLOPs of one
evaluation (nst.features.evaluation_flops: the convolutions, forward and input-gradient backward);
the TFLOP/s achieved; and its fraction of the device's dense peak at that precision (known GPUs only:
'unknown' for others, n/a on the CPU). --loop adds a row per optimiser (L-BFGS as configured by
default, history 100 with line search; Adam), without and with the run's file sink
(metrics.jsonl, frames): the runner's whole loop (run_together, B trials in one batch), as a ratio to
the bare evaluation at the same size and precision. On the CPU every row also has its ratio to a
plain fp32 batch-1 bare evaluation at the same size, measured first in the same process.
--compile MODE adds, per mode, a bare row with the whole objective under torch.compile, and with
--loop a row per optimiser of the runner's loop with `compile=MODE` (the product's compiled
evaluation, nst.compiled: the network compiled, the loss terms eager), its compiling done in the
loop's warm-up and not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from nst import compose
from nst.device import (
    cpu_bf16_units,
    cpu_model,
    cpu_threads,
    cudnn_autotune,
    keep_freed_memory,
    resolve_device,
    resolve_precision,
    set_determinism,
    set_precision,
)
from nst.engine import Trial, run_together
from nst.features import FeatureExtractor, evaluation_flops, get_weights_spec, layer_names
from nst.inputs import prepare
from nst.loss import Loss
from nst.settings import Settings
from nst.sinks import FileSink
from nst.stage import load_inputs

# Dense (no sparsity) peak TFLOP/s per precision, from the vendors' data sheets. The first entry
# whose key is in torch.cuda.get_device_name() wins; None: a variant whose peak we do not list.
_H100_SXM = {"bf16": 989.0, "tf32": 494.7, "fp32": 66.9}
GPU_PEAKS: list[tuple[str, dict[str, float] | None]] = [
    ("NVL", None),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 SXM", _H100_SXM),
    ("H100 80GB HBM3", _H100_SXM),  # how the SXM5 part names itself
    ("H200", _H100_SXM),  # the H100 SXM's compute with more memory
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
]

LOOPS = {  # config overrides per optimiser
    "lbfgs": ["optimizer=lbfgs", "optimizer.history_size=100", "optimizer.line_search=true"],
    "adam": ["optimizer=adam"],
}


def device_peaks(device: torch.device) -> dict[str, float] | None:
    """Dense peak TFLOP/s by precision, or None where not known (every CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks for key, peaks in GPU_PEAKS if key in name), None)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def settings(device: str, size: int, precision: str, *overrides: str) -> Settings:
    return compose.settings_for([f"device={device}", f"size={size}", f"precision={precision}", "logger=none", *overrides])


def deepest_layer(s: Settings) -> str:
    names = layer_names(s.arch)
    return max(s.objective.content_layers + s.objective.style_layers, key=names.index)


def bare_rate(s: Settings, batch: int, evals: int, nhwc: bool = False, profile: int = 0, autocast: bool = False,
              compile_mode: str | None = None) -> float:
    """Images per second of bare evaluations: forward, objective and backward of a [batch,3,H,W] tensor
    (nhwc: the network in the channels-last layout; profile: print that many of the costliest operators;
    compile_mode: the objective under torch.compile with that mode, "default", "reduce-overhead" (CUDA
    graphs) or "max-autotune", its compile time printed and not counted)."""
    device = resolve_device(s.device)
    precision = resolve_precision(s.precision, device)
    set_precision(precision, device)
    set_determinism(s.deterministic, device, batch)
    if device.type == "cpu":
        # the runner's rule (the cores idle now): with another thread count the loop rows' ratio to this
        # row compares thread counts, not loops (on a loaded 2-core machine the loop came out 4.6x "bare")
        torch.set_num_threads(cpu_threads())
        keep_freed_memory()  # the runner's malloc setting too (NST_KEEP_FREED_MEMORY=0 compares without it)
    layers = list(dict.fromkeys(s.objective.content_layers + s.objective.style_layers))
    ex = FeatureExtractor(s.arch, get_weights_spec(s.arch, s.weights), layers, s.pooling, device, precision,
                          channels_last=nhwc, bf16_autocast=autocast)
    t = prepare(s, load_inputs(s), device)
    weights = {k: torch.tensor([getattr(s, k)], device=device) for k in ("content_weight", "style_weight", "tv_weight")}
    obj = Loss(ex, s.objective, content=t["content"], style=t["styles"], style_blend=s.style_blend, **weights)
    x = t["init"].expand(batch, -1, -1, -1).clone().requires_grad_(True)
    fn = obj if compile_mode is None else torch.compile(obj, mode=None if compile_mode == "default" else compile_mode,
                                                        dynamic=False)

    def step():
        x.grad = None
        fn(x)["total"].sum().backward()

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    warm = time.perf_counter()
    for _ in range(3 if compile_mode is None else 6):  # warm-up (cuDNN autotuning, allocator; compiling, graph capture)
        step()
    sync()
    if compile_mode is not None:
        print(f"   torch.compile(mode={compile_mode}): warm-up with compiling {time.perf_counter() - warm:.1f} s", flush=True)
    start = time.perf_counter()
    for _ in range(evals):
        step()
    sync()
    rate = batch * evals / (time.perf_counter() - start)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            for _ in range(2):
                step()
            sync()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"-- profile: {precision}{' nhwc' if nhwc else ''}, 2 evaluations --")
        print(prof.key_averages().table(sort_by=key, row_limit=profile, max_name_column_width=40))
    return rate


def loop_rate(base: list[str], overrides: list[str], batch: int, evals: int, with_files: bool, nhwc: bool = False) -> float:
    """Evaluations per second (per image) of the runner's optimisation loop: `batch` trials in one batch,
    with the file sink or none (nhwc: the network in the channels-last layout). A warm-up batch of the
    same trials runs first (3 evaluations: with compile=..., the compiling)."""
    os.environ["NST_CHANNELS_LAST"] = "1" if nhwc else "0"  # read by the runner (nst.device.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        def trials(steps: int) -> list[Trial]:
            s = compose.settings_for([*base, f"steps={steps}", *overrides])
            inputs = load_inputs(s)
            out = []
            for i in range(batch):
                run_dir = Path(tmp) / f"{steps}_{i}"
                sinks = (lambda pos, d=run_dir: [FileSink(d, log_every=1, frame_every=50, steps=steps)]) if with_files \
                    else (lambda pos: [])
                out.append(Trial(s, inputs, run_dir, sinks))
            return out

        run_together(trials(3))  # warm-up
        summaries = run_together(trials(evals))
        for summary in summaries:
            assert summary["status"] == "completed", summary.get("error")
        return sum(x["evaluations"] for x in summaries) / max(x["optimisation_time"] for x in summaries)


def row(size: int, wh: tuple[int, int], precision: str, batch: int, what: str, rate: float, flops: int,
        peaks: dict[str, float] | None, bare: float, baseline: float | None) -> dict:
    tflops = rate * flops / 1e12
    peak = peaks.get(precision) if peaks else None
    return {"size": size, "width": wh[0], "height": wh[1], "precision": precision, "batch": batch, "what": what,
            "evals_per_s": rate, "gflop_per_eval": flops / 1e9, "tflops": tflops, "peak_tflops": peak,
            "fraction_of_peak": tflops / peak if peak else None, "ratio_to_bare": rate / bare,
            "ratio_to_fp32_batch1": rate / baseline if baseline else None}


HEADER = (f"{'size':>5} {'W x H':^9} {'prec':>4} {'B':>3}  {'what':<23} {'evals/s':>9} {'GFLOP/eval':>10} "
          f"{'TFLOP/s':>8} {'of peak':>8} {'vs bare':>7}")


def format_row(r: dict, cpu: bool, peak_note: str) -> str:
    peak = f"{100 * r['fraction_of_peak']:7.2f}%" if r["fraction_of_peak"] is not None else f"{peak_note:>8}"
    line = (f"{r['size']:>5} {r['width']:>4}x{r['height']:<4} {r['precision']:>4} {r['batch']:>3}  {r['what']:<23} "
            f"{r['evals_per_s']:9.2f} {r['gflop_per_eval']:10.2f} {r['tflops']:8.4f} {peak} {r['ratio_to_bare']:7.3f}")
    if cpu:
        line += f" {r['ratio_to_fp32_batch1']:10.3f}"
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="long sides in px")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "tf32", "bf16"],
                    help="default: fp32 tf32 bf16 on a GPU, fp32 bf16 on the CPU")
    ap.add_argument("--batch", type=int, default=1, help="images per evaluation (and trials per loop batch)")
    ap.add_argument("--evals", type=int, default=10, help="timed bare evaluations per row")
    ap.add_argument("--loop", action="store_true", help="also time the runner's optimisation loop per optimiser, "
                    "without and with the file sink, as a ratio to the bare evaluation")
    ap.add_argument("--loop-evals", type=int, default=30, help="evaluations per timed loop")
    ap.add_argument("--loops", nargs="+", choices=list(LOOPS), default=list(LOOPS), help="the optimisers --loop times")
    ap.add_argument("--loop-files", choices=["both", "no", "yes"], default="both",
                    help="--loop without the file sink, with it, or both (default)")
    ap.add_argument("--layouts", nargs="+", choices=["nchw", "nhwc"], default=["nchw"],
                    help="the network's memory layout: nchw (contiguous) and/or nhwc (channels-last); default nchw")
    ap.add_argument("--bf16-autocast", action="store_true",
                    help="also time bf16's bare evaluation under autocast (weights cast at every call), the former path")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="print the N costliest operators of each bare evaluation row (torch.profiler)")
    ap.add_argument("--compile", nargs="+", default=[], metavar="MODE",
                    choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                    help="also time the bare evaluation with the objective under torch.compile in these modes "
                         "(reduce-overhead: CUDA graphs); a mode that fails is reported and skipped")
    ap.add_argument("--json", type=Path, help="also write the rows here as JSON")
    args = ap.parse_args()
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    precisions = args.precisions or (["fp32", "bf16"] if cpu else ["fp32", "tf32", "bf16"])
    peaks = device_peaks(device)
    peak_note = "n/a" if cpu else "unknown"
    name = device_name(device)
    s0 = settings(args.device, args.sizes[0], "fp32")
    deepest = deepest_layer(s0)
    bf16_units = cpu_bf16_units() if cpu else None
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"{s0.arch} {s0.weights} weights, {s0.pooling} pooling, layers to {deepest}; batch {args.batch}")
    if cpu:
        print(f"CPU bf16 units: {bf16_units or 'none (bf16 is emulated)'}; precision=auto here: "
              f"{resolve_precision('auto', device)}")
    if not cpu:
        print(f"cuDNN autotuning (cudnn.benchmark): batch of one {'on' if cudnn_autotune(1) else 'off'}, "
              f"larger batches {'on' if cudnn_autotune(2) else 'off'}")
    if peaks:
        print("dense peak TFLOP/s: " + ", ".join(f"{p} {v:g}" for p, v in peaks.items()))
    else:
        print("peak: n/a on the CPU" if cpu else f"peak unknown for {name}: no fraction of peak")
    print("evals/s and GFLOP/eval are per image; FLOPs: convolutions, forward + input-gradient backward; "
          "lbfgs: history 100, line search"
          + ("; last column: ratio to a plain fp32 batch-1 bare evaluation at the same size" if cpu else ""))
    if cpu and "tf32" in precisions:
        print("note: tf32 skipped: a GPU mode (TensorFloat-32 tensor cores), an error on the CPU")
        precisions = [p for p in precisions if p != "tf32"]
    print(HEADER + (f" {'vs fp32 b1':>10}" if cpu else ""))
    rows: list[dict] = []

    def emit(r: dict) -> None:
        rows.append(r)
        print(format_row(r, cpu, peak_note), flush=True)

    for size in args.sizes:
        wh = settings(args.device, size, "fp32").image_size
        flops = evaluation_flops(s0.arch, deepest, *wh)
        baseline = None
        if cpu:  # the plain fp32 batch-1 evaluation, first: every CPU row's yardstick
            baseline = bare_rate(settings(args.device, size, "fp32"), 1, args.evals)
            if not ("fp32" in precisions and args.batch == 1):
                emit(row(size, wh, "fp32", 1, "bare", baseline, flops, peaks, baseline, baseline))
        for precision in precisions:
            s = settings(args.device, size, precision)
            assert s.image_size == wh
            for layout in args.layouts:
                nhwc = layout == "nhwc"
                tag = " nhwc" if nhwc else ""
                plain = precision == "fp32" and args.batch == 1 and baseline is not None and not nhwc
                bare = baseline if plain and not args.profile else bare_rate(s, args.batch, args.evals, nhwc, args.profile)
                emit(row(size, wh, precision, args.batch, f"bare{tag}", bare, flops, peaks, bare, baseline))
                if precision == "bf16" and args.bf16_autocast:
                    r = bare_rate(s, args.batch, args.evals, nhwc, args.profile, autocast=True)
                    emit(row(size, wh, precision, args.batch, f"bare autocast{tag}", r, flops, peaks, r, baseline))
                for mode in args.compile:
                    try:
                        r = bare_rate(s, args.batch, args.evals, nhwc, compile_mode=mode)
                    except Exception as e:  # noqa: BLE001 - a backend that cannot compile here is a finding, not a crash
                        print(f"   torch.compile(mode={mode}) failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                              flush=True)
                        continue
                    emit(row(size, wh, precision, args.batch, f"bare compile {mode}{tag}", r, flops, peaks, bare, baseline))
                if not args.loop:
                    continue
                base = [f"device={args.device}", f"size={size}", f"precision={precision}", "logger=none"]
                files = {"both": (False, True), "no": (False,), "yes": (True,)}[args.loop_files]
                for kind in args.loops:
                    for mode in [None, *args.compile]:
                        overrides = LOOPS[kind] + ([] if mode is None else [f"compile={mode}"])
                        for with_files in files:
                            try:
                                r = loop_rate(base, overrides, args.batch, args.loop_evals, with_files, nhwc)
                            except Exception as e:  # noqa: BLE001 - an invalid mode here is a finding, not a crash
                                print(f"   {kind} loop compile={mode} failed: {type(e).__name__}: {e}", flush=True)
                                continue
                            what = f"{kind} loop{'' if mode is None else ' ' + mode}{' + files' if with_files else ''}{tag}"
                            emit(row(size, wh, precision, args.batch, what, r, flops, peaks, bare, baseline))
    if args.json:
        args.json.write_text(json.dumps({
            "device": str(device), "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_bf16": bf16_units, "auto": resolve_precision("auto", device),
            "cudnn_benchmark": {"batch_of_one": cudnn_autotune(1), "larger": cudnn_autotune(2)},
            "arch": s0.arch, "weights": s0.weights, "pooling": s0.pooling, "deepest_layer": deepest,
            "batch": args.batch, "evals": args.evals, "loop_evals": args.loop_evals if args.loop else None,
            "peak_tflops": peaks, "rows": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
