"""The default precision for a kind of device: the fastest one whose results match fp32's.

    python benchmarks/precision.py                  # GPU: 512 px, 500 evaluations; CPU: 64 px, 20
    python benchmarks/precision.py --device cpu --size 64 --steps 20 --precisions fp32 bf16 --json PATH

Per precision (default: fp32 tf32 bf16 on a GPU; fp32 bf16 on the CPU, where tf32 is an error and
is skipped), the five trials of sweeps/style_weight.yaml (style_weight 1e3 ... 1e7) run as one
batch through the runner (nst.engine.run_together, logger=none, the file sink, all in a temporary
folder), after a warm-up batch of the same trials at --warmup evaluations (cuDNN tunes its
algorithms per precision). fp32 always runs, first: the yardstick, measured in the same process.

Speed: the batch's optimisation time is the MAX of its trials' `optimisation_time` (they start
together, so it is when the last one finished; a sum would count every shared pass five times);
evaluations/s are all the trials' evaluations over that time; both also as ratios to fp32.
Quality: for every trial and every standardised metric (nst.metrics: style_swd and its scales,
gmsd, psnr, ssim, gram_distance, content_distance), |m - m_fp32| / |m_fp32| against the same trial at fp32; the worst one
per precision, and whether it is within --tolerance (default 2 %).

The last line, "default for <device kind>: <precision>", names the precision with the most
evaluations/s among those whose trials all completed within tolerance (fp32 always qualifies).
Ranking by evaluations/s rather than time keeps a precision whose optimiser merely stopped sooner
from looking faster. The project's `precision=auto` (nst.device.resolve_precision) should be set from
this line on each kind of GPU; on the CPU the project keeps fp32 whatever this prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

import torch
from sweep import make_trials  # benchmarks/, this script's folder
from throughput import device_name

from nst import compose
from nst.engine import run_together

SWEEP = "style_weight"


def sweep_overrides(size: int, steps: int, precision: str) -> list[list[str]]:
    """Each trial's overrides: the sweep file's grid at this size, budget and precision."""
    return compose.expand_trials([f"+sweep={SWEEP}", f"size={size}", f"steps={steps}", f"precision={precision}"],
                             multirun=True)


def other_thread_count(threads: int) -> int:
    """The thread count a float-noise floor compares with: 1, or 2 where the trial itself ran on 1."""
    return 1 if threads > 1 else 2


@contextlib.contextmanager
def runner_threads(threads: int):
    """Every batch run inside the block on this many CPU threads (NST_CPU_THREADS, which the runner
    reads for each batch: nst.device.cpu_threads); the previous setting, or none, after it."""
    saved = os.environ.get("NST_CPU_THREADS")
    os.environ["NST_CPU_THREADS"] = str(threads)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("NST_CPU_THREADS", None)
        else:
            os.environ["NST_CPU_THREADS"] = saved


def relative_difference(value: float, reference: float) -> float:
    """|value - reference| / |reference|; 0 when equal (infinite PSNRs included), inf when undefined."""
    if value == reference:
        return 0.0
    if not (math.isfinite(value) and math.isfinite(reference)) or reference == 0:
        return math.inf
    return abs(value - reference) / abs(reference)


def run_precision(precision: str, args, folder: Path) -> list[dict]:
    """The sweep's trials at this precision, as one batch; their summaries in the sweep's order."""
    if args.warmup:
        run_together(make_trials(sweep_overrides(args.size, args.warmup, precision), args.device, folder / f"warm_{precision}"))
    trials = make_trials(sweep_overrides(args.size, args.steps, precision), args.device, folder / precision)
    summaries = run_together(trials)
    for t, s in zip(trials, summaries, strict=True):
        s["style_weight"] = t.settings.style_weight
    return summaries


def run_noise(args, folder: Path) -> tuple[list[dict], str]:
    """fp32 again, changed only in ways that should not matter: on the CPU another thread count (the
    same batch), on a GPU each trial as a batch of its own (other kernels for another batch size).
    What that moves is the float-noise floor a precision is judged against."""
    trials = make_trials(sweep_overrides(args.size, args.steps, "fp32"), args.device, folder / "fp32_noise")
    if args.device == "cpu":
        threads = int(os.environ["NST_CPU_THREADS"])  # main() pins it for every batch
        other = other_thread_count(threads)
        with runner_threads(other):
            summaries = run_together(trials)
        how = f"fp32 on {other} thread(s) instead of {threads}"
    else:
        summaries = [run_together([t])[0] for t in trials]
        how = "fp32 with each trial in a batch of its own"
    for t, s in zip(trials, summaries, strict=True):
        s["style_weight"] = t.settings.style_weight
    return summaries, how


def row(precision: str, summaries: list[dict], reference: list[dict], base: dict | None, tolerance: float) -> dict:
    """One precision's speed and its trials' metric differences to the same trials at fp32."""
    done = [s for s in summaries if s["status"] == "completed"]
    evaluations = sum(s["evaluations"] for s in done)
    seconds = max((s["optimisation_time"] for s in done), default=0.0)
    rate = evaluations / seconds if seconds > 0 else 0.0
    trials, worst = [], (math.inf if len(done) < len(summaries) else 0.0, None, None)
    for s, ref in zip(summaries, reference, strict=True):
        diffs = {}
        if s["status"] == "completed":
            diffs = {k: relative_difference(s["metrics"].get(k, math.nan), v) for k, v in ref["metrics"].items()}
            for k, d in diffs.items():
                if d > worst[0]:
                    worst = (d, k, s["style_weight"])
        trials.append({"style_weight": s["style_weight"], "status": s["status"], "error": s.get("error"),
                       "evaluations": s.get("evaluations"), "optimisation_time": s.get("optimisation_time"),
                       "stop_reason": s.get("stop_reason"), "metrics": s.get("metrics"),
                       "metric_diffs": {k: _finite(d) for k, d in diffs.items()}})
    within = worst[0] <= tolerance
    return {"precision": precision, "completed": len(done), "trials": len(summaries),
            "batch_sizes": sorted({s["batch"]["id"]: s["batch"]["size"] for s in summaries}.values(), reverse=True),
            "evaluations": evaluations, "optimisation_time_s": seconds, "evals_per_s": rate,
            "time_vs_fp32": seconds / base["optimisation_time_s"] if base else 1.0,
            "evals_per_s_vs_fp32": rate / base["evals_per_s"] if base else 1.0,
            "worst_metric_diff": _finite(worst[0]), "worst_metric": worst[1], "worst_style_weight": worst[2],
            "within_tolerance": within, "per_trial": trials}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no inf: null is "undefined or failed"


HEADER = (f"{'prec':<5} {'done':>5} {'batch':>5} {'evals':>6} {'time s':>8} {'evals/s':>8} {'time/fp32':>9} "
          f"{'speed/fp32':>10} {'worst diff':>10}  {'where':<24} {'within':>6}")


def format_row(r: dict) -> str:
    if r["completed"] < r["trials"]:
        diff = "failed"
    else:
        diff = "inf" if r["worst_metric_diff"] is None else f"{100 * r['worst_metric_diff']:9.3f}%"
    where = f"{r['worst_metric']} @ {r['worst_style_weight']:g}" if r["worst_metric"] else "-"
    batch = "+".join(map(str, r["batch_sizes"]))
    return (f"{r['precision']:<5} {r['completed']:>2}/{r['trials']:<2} {batch:>5} {r['evaluations']:>6} "
            f"{r['optimisation_time_s']:8.2f} {r['evals_per_s']:8.2f} {r['time_vs_fp32']:9.3f} "
            f"{r['evals_per_s_vs_fp32']:10.3f} {diff:>10}  {where:<24} {'yes' if r['within_tolerance'] else 'NO':>6}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "tf32", "bf16"],
                    help="default: fp32 tf32 bf16 on a GPU, fp32 bf16 on the CPU (fp32 always runs, first)")
    ap.add_argument("--size", type=int, help="long side in px (default: 512 on a GPU, 64 on the CPU)")
    ap.add_argument("--steps", type=int, help="evaluations per trial (default: 500 on a GPU, 20 on the CPU)")
    ap.add_argument("--warmup", type=int, default=3, help="evaluations per trial of the untimed warm-up batch "
                    "run before each precision's (0: none)")
    ap.add_argument("--tolerance", type=float, default=0.02, help="largest relative metric difference to fp32 "
                    "accepted whatever the noise floor (the floor, when larger, is accepted instead)")
    ap.add_argument("--no-noise", action="store_true", help="skip the float-noise run (then the tolerance alone judges)")
    ap.add_argument("--json", type=Path, help="also write the rows here as JSON")
    args = ap.parse_args()
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    if cpu:  # every batch on the same threads (not the runner's idle-core rule), but the noise run's
        os.environ.setdefault("NST_CPU_THREADS", str(torch.get_num_threads()))
    args.size = args.size or (64 if cpu else 512)
    args.steps = args.steps or (20 if cpu else 500)
    precisions = list(dict.fromkeys(["fp32", *(args.precisions or (["fp32", "bf16"] if cpu else ["fp32", "tf32", "bf16"]))]))
    name = device_name(device)
    kind = "cpu" if cpu else name
    s0 = compose.settings_for(sweep_overrides(args.size, args.steps, "fp32")[0] + [f"device={args.device}", "logger=none"])
    wh = s0.image_size
    weights = [float(o[0].split("=", 1)[1]) for o in sweep_overrides(args.size, args.steps, "fp32")]
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"sweep {SWEEP}: style_weight {', '.join(f'{w:g}' for w in weights)} as one batch, {s0.arch} {s0.weights}, "
          f"{wh[0]}x{wh[1]} px, {args.steps} evaluations, {s0.optimizer.name}")
    print(f"time: the batch's optimisation time (max over its trials); speed/fp32: evaluations/s over fp32's; "
          f"worst diff: largest |m - m_fp32| / |m_fp32| of any standardised metric of any trial; tolerance "
          f"{100 * args.tolerance:g} %")
    if cpu and "tf32" in precisions:
        print("note: tf32 skipped: a GPU mode (TensorFloat-32 tensor cores), an error on the CPU")
        precisions.remove("tf32")
    print(HEADER)
    rows: list[dict] = []
    noise: dict | None = None
    limit = args.tolerance
    with tempfile.TemporaryDirectory() as tmp:
        reference: list[dict] = []
        for precision in precisions:
            summaries = run_precision(precision, args, Path(tmp))
            if precision == "fp32":
                failed = [s for s in summaries if s["status"] != "completed"]
                if failed:
                    raise SystemExit(f"fp32, the yardstick, failed at style_weight={failed[0]['style_weight']:g}: "
                                     f"{failed[0].get('error')}")
                reference = summaries
            rows.append(row(precision, summaries, reference, rows[0] if rows else None, limit))
            print(format_row(rows[-1]), flush=True)
            if precision == "fp32" and not args.no_noise:
                summaries, how = run_noise(args, Path(tmp))
                noise = row("noise", summaries, reference, rows[0], args.tolerance)
                noise["how"] = how
                print(format_row(noise), flush=True)
                if noise["worst_metric_diff"] is not None:
                    limit = max(args.tolerance, noise["worst_metric_diff"])
    floor = noise["worst_metric_diff"] if noise else None
    for r in rows:  # judged against the floor measured in this run, where it is larger than the tolerance
        r["within_tolerance"] = r["worst_metric_diff"] is not None and r["worst_metric_diff"] <= limit \
            and r["completed"] == r["trials"]
    if noise:
        print(f"noise floor: {'failed' if floor is None else f'{100 * floor:.3f} %'} ({noise['how']}); a precision is "
              f"within when its worst diff is at most {100 * limit:.3f} %")
    qualified = [r for r in rows if r["within_tolerance"]]
    best = max(qualified, key=lambda r: r["evals_per_s"])["precision"]
    if args.json:
        args.json.write_text(json.dumps({
            "device": str(device), "device_name": name, "device_kind": kind, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "sweep": SWEEP, "style_weights": weights, "size": args.size,
            "width": wh[0], "height": wh[1], "steps": args.steps, "warmup": args.warmup, "tolerance": args.tolerance,
            "noise_floor": floor, "noise": noise, "limit": limit,
            "time": "max of the trials' optimisation_time", "rows": rows, "default": best}, indent=2), encoding="utf-8")
    print(f"default for {kind}: {best}")


if __name__ == "__main__":
    main()
