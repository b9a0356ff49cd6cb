"""Wall time of the same sweep run batched and one trial at a time, in this process.

    python benchmarks/sweep.py                       # CPU: six trials at 64 px; GPU: every preset below
    python benchmarks/sweep.py --preset ablations --device cuda
    python benchmarks/sweep.py --preset six --steps 40 --max-batch 3
    python benchmarks/sweep.py --preset six ablations --steps 2 --size 32 --limit 3 --json PATH  # a quick try-out
    python benchmarks/sweep.py --compile default      # also batched with compile=default (make bench BENCH_ARGS=...)

Presets: `six` (style_weight 1e3 ... 1e8 at 64 px), `ablations` (all eleven sweeps in sweeps/ at
128 px, 200 evaluations: 78 trials), `eight512` (eight style weights at 512 px, 500 evaluations).
Both modes go through the same runner (nst.engine) with the same trials and the same file sink
(metrics.jsonl, frames, final.png, summary.json, in a temporary folder); "one at a time" runs each
trial as a batch of one, as `hydra/launcher=basic` does. Hydra's own per-job overhead (composing
configs, writing .hydra/) is the same in both and left out. A warm-up trial runs first (weights
loaded, cuDNN tuned), so neither mode pays that. --compile MODE adds a batched run per mode with
`compile=MODE` (nst.compiled), its compiling included in its time (what a sweep pays), with its
ratio to the batched run without it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from nst import compose
from nst.device import cudnn_autotune, resolve_precision
from nst.engine import Trial, run_together, run_trials
from nst.sinks import FileSink
from nst.stage import load_inputs

ROOT = Path(__file__).resolve().parent.parent


def preset(name: str, steps: int | None, size: int | None = None) -> list[list[str]]:
    """Each trial's overrides (`size`, `steps`: instead of the preset's own)."""
    if name == "six":
        common = [f"size={size or 64}", f"steps={steps or 30}"]
        return [[*common, f"style_weight=1e{e}"] for e in range(3, 9)]
    if name == "eight512":
        common = [f"size={size or 512}", f"steps={steps or 500}"]
        return [[*common, f"style_weight=1e{e}"] for e in range(2, 10)]
    if name == "ablations":
        trials = []
        for f in sorted((compose.CONF_DIR / "sweep").glob("*.yaml")):
            trials += compose.expand_trials([f"+sweep={f.stem}", f"size={size or 128}", f"steps={steps or 200}"], multirun=True)
        return trials
    raise SystemExit(f"unknown preset {name!r}; allowed: six, ablations, eight512")


def make_trials(overrides: list[list[str]], device: str, folder: Path, *extra: str) -> list[Trial]:
    trials = []
    for i, o in enumerate(overrides):
        s = compose.settings_for([*o, f"device={device}", "logger=none", *extra])
        run_dir = folder / str(i)
        def sinks(pos, d=run_dir, s=s):
            return [FileSink(d, log_every=s.log_every, frame_every=s.frame_every, steps=s.total_steps)]

        trials.append(Trial(s, load_inputs(s), run_dir, sinks))
    return trials


def timed(fn) -> tuple[float, list[dict]]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def bench(name: str, device: str, steps: int | None, max_batch: int | None, size: int | None = None,
          limit: int | None = None, batched_only: bool = False, compile_modes: list[str] = ()) -> dict:
    overrides = preset(name, steps, size)[:limit]
    with tempfile.TemporaryDirectory() as tmp:
        # the first trial at 3 evaluations: its size, so cuDNN tunes for the shapes that are timed
        warm = make_trials([[o for o in overrides[0] if not o.startswith("steps=")] + ["steps=3"]], device,
                           Path(tmp) / "warm")
        run_together(warm)
        alone_s, alone = (None, []) if batched_only else \
            timed(lambda: [run_together([t])[0] for t in make_trials(overrides, device, Path(tmp) / "alone")])
        batched_s, batched = timed(lambda: run_trials(make_trials(overrides, device, Path(tmp) / "batched"), max_batch))
        modes = {}
        for mode in compile_modes:
            modes[mode] = timed(lambda mode=mode: run_trials(make_trials(overrides, device, Path(tmp) / f"compile_{mode}",
                                                               f"compile={mode}"), max_batch))
    failed = sum(s["status"] != "completed" for s in alone + batched + [x for _, out in modes.values() for x in out])
    sizes = sorted({s["batch"]["id"]: s["batch"]["size"] for s in batched}.values(), reverse=True)
    evals = sum(s.get("evaluations") or 0 for s in batched)
    print(f"{name}: {len(overrides)} trials, {evals} evaluations, device {device}; batches of {sizes}"
          f"{f'; {failed} FAILED' if failed else ''}")
    speedup = None if alone_s is None else alone_s / batched_s
    print("  one at a time: " + ("not run (--batched-only)" if alone_s is None else f"{alone_s:8.2f} s"))
    print(f"  batched:       {batched_s:8.2f} s" + ("" if speedup is None else f"   speed-up {speedup:5.2f}x"), flush=True)
    compiled = {}
    for mode, (secs, out) in modes.items():
        used = sorted({s.get("compile", "?") for s in out})
        print(f"  batched, compile={mode}: {secs:8.2f} s   {batched_s / secs:5.2f}x the batched run (compiling included;"
              f" evaluated: {', '.join(used)})", flush=True)
        compiled[mode] = {"batched_s": round(secs, 3), "ratio_to_batched": round(batched_s / secs, 3), "used": used}
    return {"compiled": compiled, "preset": name, "trials": len(overrides), "evaluations": evals, "batch_sizes": sizes,
            "failed": failed, "one_at_a_time_s": None if alone_s is None else round(alone_s, 3),
            "batched_s": round(batched_s, 3), "speedup": None if speedup is None else round(speedup, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", nargs="+", default=None,
                    help="six | ablations | eight512 (default: six on the CPU, all on a GPU)")
    ap.add_argument("--steps", type=int, default=None, help="evaluations per trial (default: the preset's)")
    ap.add_argument("--max-batch", type=int, default=None, help="largest batch (default: auto, as the launcher)")
    ap.add_argument("--size", type=int, default=None, help="long side in px (default: the preset's)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N trials of each preset (a quick try-out)")
    ap.add_argument("--batched-only", nargs="+", default=[], metavar="PRESET",
                    help="these presets run batched only (no one-at-a-time baseline: the ablations take minutes so)")
    ap.add_argument("--compile", nargs="+", default=[], metavar="MODE", choices=["default", "reduce-overhead"],
                    help="also run each preset batched with compile=MODE (compiling included in its time)")
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = ap.parse_args()
    presets = args.preset or (["six", "ablations", "eight512"] if args.device.startswith("cuda") else ["six"])
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    # the trials' own precision=auto, as the device resolves it
    precision = resolve_precision(compose.settings_for([f"device={args.device}", "logger=none"]).precision,
                                  torch.device(args.device))
    if args.device.startswith("cuda"):
        print(f"cuDNN autotuning (cudnn.benchmark): batch of one {'on' if cudnn_autotune(1) else 'off'}, "
              f"larger batches {'on' if cudnn_autotune(2) else 'off'}")
    print(f"device: {args.device} ({name}), precision {precision}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    rows = [bench(p, args.device, args.steps, args.max_batch, args.size, args.limit, p in args.batched_only, args.compile)
            for p in presets]
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "device_name": name, "torch": torch.__version__,
                                         "threads": torch.get_num_threads(), "precision": precision,
                                         "presets": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
