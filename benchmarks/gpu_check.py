"""The GPU check: everything the CUDA path claims, in one prepared run for a GPU lent for minutes.

    python benchmarks/gpu_check.py --out DIR [--budget 480] [--only PART ...]   # on a machine with one GPU
    python benchmarks/gpu_check.py --dry-run --out DIR                          # on the CPU: the same plumbing, tiny

`make gpu-check` runs it through benchmarks/gpu_check.sh, which first installs the wheels that
`make gpu-bundle` put in .whl/ (for a GPU machine that reaches no package registry).

The parts, in this order; each runs as its own process, with its own time limit, and a part that
fails stops nothing:

  gpu_tests         tests/test_gpu.py (CUDA vs CPU objective, bf16 near fp32, the vectorised L-BFGS on cuda)
  throughput        benchmarks/throughput.py at 512x384, fp32/tf32/bf16, with the L-BFGS and Adam loops
  sinks             benchmarks/sinks.py --device cuda: the file sink's time in the loop's thread, its writes
                    in the loop against on its writer thread (512x384, a frame every 50 evaluations)
  precision         benchmarks/precision.py --device cuda: the precision `auto` should pick on this GPU
  sweep             benchmarks/sweep.py: six trials at 64 px, the ablations preset at 128 px x 200,
                    eight trials at 512 px x 500; batched against one at a time
  default_transfer  python -m nst.run device=cuda (512 px, 500 evaluations), end to end
  oom_split         a batch too large for a capped memory pool: split in halves and completed; a trial
                    too large even alone fails with one line
  two_workers       a real Hydra sweep on two worker processes sharing the one GPU
  compile           the bare evaluation at 512x384 (tf32, bf16) under torch.compile, default mode and
                    reduce-overhead (CUDA graphs), beside the eager one of the same run
  host_cpu          the host CPU with 2 threads: fp32 against bf16 (its model and bf16 units printed)
  host_demo         the host CPU with 2 threads: `make demo`'s transfer (256 px, 150 evaluations) in fp32
                    and in bf16, wall time and metrics of each

--dry-run runs every part that does not need CUDA at tiny sizes on the CPU (so the commands, their
options and the parsing of their results are checked before a GPU is at hand) and skips, by name,
the parts that need CUDA. Written to --out: gpu_check.json (every part: status, exit code, wall
time, its figures), gpu_check.txt (the summary, also printed last, with the targets) and
gpu_check.log (every part's output). Only the standard library and torch are imported here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))  # nst, from this checkout

# The targets docs/speed.md sets for one H100/H200-class GPU.
TARGETS = {
    "bare_ms_bf16": 1.0,  # a bare evaluation at 512x384, ms
    "bare_ms_tf32": 2.0,
    "lbfgs_loop_vs_bare": 0.9,
    "default_optimisation_s": 1.0,  # 500 evaluations at 512 px
    "default_end_to_end_s": 5.0,
    "ablations_batched_s": 30.0,
    "eight512_batched_s": 8.0,
}


@dataclass
class Part:
    name: str
    needs_cuda: bool
    limit_s: int  # wall-clock cap on the GPU (the dry run has its own, smaller sizes)
    command: Callable[[Context], list[str]]
    read: Callable[[Context, dict], None]  # fills the part's record with its figures
    env: dict = field(default_factory=dict)


@dataclass
class Context:
    dry: bool
    work: Path  # scratch folder (temporary)
    opts: argparse.Namespace  # --sweep-presets, --sweep-steps, --sweep-batched-only, --precision-steps, --layouts, --no-loops
    py: str = sys.executable

    def json_path(self, name: str) -> Path:
        return self.work / f"{name}.json"


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _json_figures(name: str) -> Callable[[Context, dict], None]:
    """A part's reader whose figures are the JSON file it wrote, as it is (absent: no figures)."""
    def read(c: Context, rec: dict) -> None:
        data = _load(c.json_path(name))
        if data:
            rec["figures"] = data
    return read


def _summary(path: Path) -> dict:
    """A trial's summary.json as nst reads it (nst.summary), by its keys; {} when it has none or it is unreadable."""
    from nst.summary import load

    summary, _ = load(path)
    return summary.to_dict() if summary is not None else {}


# --- the parts ------------------------------------------------------------------------------


def _tests_cmd(c: Context) -> list[str]:
    return [c.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(ROOT / "tests" / "test_gpu.py")]


def _tests_read(c: Context, rec: dict) -> None:
    last = [line for line in rec.get("output", "").splitlines() if " passed" in line or " failed" in line
            or " skipped" in line or " error" in line]
    rec["figures"] = {"pytest": last[-1].strip("= ") if last else None}


def _throughput_cmd(c: Context) -> list[str]:
    if c.dry:
        # fp32 only: bf16 without bf16 units is emulated and slow (host_cpu runs it)
        args = ["--device", "cpu", "--sizes", "32", "--precisions", "fp32", "--evals", "1", "--loop-evals", "2"]
    else:
        args = ["--device", "cuda", "--sizes", "512", "--precisions", "fp32", "tf32", "bf16", "--evals", "30",
                "--loop-evals", "60", "--layouts", *c.opts.layouts, "--bf16-autocast"]
    loop = [] if c.opts.no_loops else ["--loop"]
    return [c.py, str(BENCH / "throughput.py"), *args, *loop, "--json", str(c.json_path("throughput"))]


def _throughput_read(c: Context, rec: dict) -> None:
    data = _load(c.json_path("throughput"))
    if not data:
        return
    out = {"device_name": data["device_name"], "torch": data["torch"], "rows": {}}
    for r in data["rows"]:
        key = f"{r['precision']} {r['what']}"
        out["rows"][key] = {"evals_per_s": round(r["evals_per_s"], 2), "ms_per_eval": round(1000 / r["evals_per_s"], 3),
                            "tflops": round(r["tflops"], 2), "fraction_of_peak": r["fraction_of_peak"],
                            "ratio_to_bare": round(r["ratio_to_bare"], 3), "size": f"{r['width']}x{r['height']}"}
    rec["figures"] = out


def _precision_cmd(c: Context) -> list[str]:
    args = ["--device", "cpu", "--size", "32", "--steps", "3", "--warmup", "0", "--precisions", "fp32"] if c.dry \
        else ["--device", "cuda", *(["--steps", str(c.opts.precision_steps)] if c.opts.precision_steps else [])]
    return [c.py, str(BENCH / "precision.py"), *args, "--json", str(c.json_path("precision"))]


def _precision_read(c: Context, rec: dict) -> None:
    data = _load(c.json_path("precision"))
    if not data:
        return
    rec["figures"] = {
        "size": f"{data['width']}x{data['height']}", "steps": data["steps"], "default": data["default"],
        "noise_floor": data.get("noise_floor"),
        "rows": {r["precision"]: {k: r[k] for k in ("evals_per_s", "evals_per_s_vs_fp32", "time_vs_fp32",
                                                    "worst_metric_diff", "worst_metric", "within_tolerance")}
                 for r in data["rows"]}}


def _sweep_cmd(c: Context) -> list[str]:
    args = ["--device", "cpu", "--steps", "1", "--size", "32", "--limit", "3"] if c.dry else \
        ["--device", "cuda", *(["--steps", str(c.opts.sweep_steps)] if c.opts.sweep_steps else [])]
    only = ["--batched-only", *c.opts.sweep_batched_only] if c.opts.sweep_batched_only else []
    return [c.py, str(BENCH / "sweep.py"), "--preset", *c.opts.sweep_presets, *args, *only,
            "--json", str(c.json_path("sweep"))]


def _sweep_read(c: Context, rec: dict) -> None:
    data = _load(c.json_path("sweep"))
    if data:
        rec["figures"] = {"precision": data["precision"], **{p["preset"]: p for p in data["presets"]}}


def _nst_run_cmd(c: Context, *overrides: str, multirun: bool = False) -> list[str]:
    return [c.py, "-m", "nst.run", *(["-m"] if multirun else []), *overrides, "logger=none"]


def _default_cmd(c: Context) -> list[str]:
    tiny = ["device=cpu", "size=32", "steps=3"] if c.dry else ["device=cuda"]
    return _nst_run_cmd(c, *tiny, f"hydra.run.dir={c.work / 'default_run'}")


def _default_read(c: Context, rec: dict) -> None:
    s = _summary(c.work / "default_run" / "summary.json")
    if s:
        rec["figures"] = {k: s.get(k) for k in ("status", "error", "device_name", "precision", "image_size", "evaluations",
                                                "optimisation_time", "evals_per_second", "wall_time", "peak_memory_mb",
                                                "stop_reason")}
        rec["figures"]["end_to_end_s"] = rec["wall_s"]  # the whole command: start-up, weights, optimisation, files


def _oom_cmd(c: Context) -> list[str]:
    return [c.py, str(Path(__file__).resolve()), "--inner", "oom_split", "--out", str(c.work)]


def _workers_cmd(c: Context) -> list[str]:
    tiny = ["device=cpu", "size=32", "steps=2"] if c.dry else ["device=cuda", "size=256", "steps=100"]
    return _nst_run_cmd(c, "style_weight=1e2,1e3,1e4,1e5", *tiny, "hydra.launcher.workers=2",
                        "hydra.launcher.max_batch=2", f"hydra.sweep.dir={c.work / 'two_workers'}", multirun=True)


def _workers_read(c: Context, rec: dict) -> None:
    sweep = c.work / "two_workers"
    summaries = [_summary(p) for p in sorted(sweep.glob("*/summary.json"))]
    workers = [line for line in rec.get("output", "").splitlines() if "worker process" in line]
    rec["figures"] = {"trials": len(summaries), "completed": sum(s.get("status") == "completed" for s in summaries),
                      "batches": len({(s.get("batch") or {}).get("id") for s in summaries}),
                      "launcher": workers[0].strip() if workers else None,
                      "results_csv": (sweep / "results.csv").exists()}


def _compile_cmd(c: Context) -> list[str]:
    return [c.py, str(BENCH / "throughput.py"), "--device", "cuda", "--sizes", "512", "--precisions", "tf32", "bf16",
            "--evals", "30", "--compile", "default", "reduce-overhead", "--json", str(c.json_path("compile"))]


def _compile_read(c: Context, rec: dict) -> None:
    data = _load(c.json_path("compile"))
    if data:
        rec["figures"] = {"rows": {f"{r['precision']} {r['what']}": {
            "evals_per_s": round(r["evals_per_s"], 2), "ms_per_eval": round(1000 / r["evals_per_s"], 3),
            "tflops": round(r["tflops"], 2), "fraction_of_peak": r["fraction_of_peak"],
            "ratio_to_bare": round(r["ratio_to_bare"], 3)} for r in data["rows"]}}
        compiling = [line.strip() for line in rec.get("output", "").splitlines() if "torch.compile(" in line]
        rec["figures"]["compiling"] = compiling


def _host_demo_cmd(c: Context) -> list[str]:
    return [c.py, str(Path(__file__).resolve()), "--inner", "host_demo", "--out", str(c.work)] + (["--dry-run"] if c.dry else [])


def _host_cpu_cmd(c: Context) -> list[str]:
    return [c.py, str(Path(__file__).resolve()), "--inner", "host_cpu", "--out", str(c.work)] + (["--dry-run"] if c.dry else [])


def _host_cpu_read(c: Context, rec: dict) -> None:
    data = _load(c.json_path("host_cpu"))
    if data:
        rec["figures"] = {"cpu": data["device_name"], "threads": data["threads"], "bf16": data.get("cpu_bf16"),
                          "rows": {f"{r['precision']} {r['what']} {r['width']}x{r['height']}": round(r["evals_per_s"], 3)
                                   for r in data["rows"]}}
        prec = _load(c.json_path("host_cpu_precision"))
        if prec:
            rec["figures"]["precision"] = {"noise_floor": prec.get("noise_floor"), "default": prec["default"],
                                           **{r["precision"]: {"speed_vs_fp32": round(r["evals_per_s_vs_fp32"], 3),
                                                               "worst_metric_diff": r["worst_metric_diff"]}
                                              for r in prec["rows"]}}


def _sinks_cmd(c: Context) -> list[str]:
    args = ["--device", "cpu", "--size", "32", "--steps", "6", "--rounds", "1"] if c.dry else ["--device", "cuda"]
    return [c.py, str(BENCH / "sinks.py"), *args, "--json", str(c.json_path("sinks"))]


PARTS = [
    Part("gpu_tests", True, 120, _tests_cmd, _tests_read),
    Part("throughput", False, 90, _throughput_cmd, _throughput_read),
    Part("sinks", False, 30, _sinks_cmd, _json_figures("sinks")),
    Part("precision", False, 100, _precision_cmd, _precision_read),
    Part("sweep", False, 200, _sweep_cmd, _sweep_read),
    Part("default_transfer", False, 60, _default_cmd, _default_read),
    Part("oom_split", True, 60, _oom_cmd, _json_figures("oom_split")),
    Part("two_workers", False, 90, _workers_cmd, _workers_read),
    Part("compile", True, 200, _compile_cmd, _compile_read),
    # two threads, as on the project's 2-core machines
    Part("host_cpu", False, 90, _host_cpu_cmd, _host_cpu_read, env={"OMP_NUM_THREADS": "2"}),
    Part("host_demo", False, 240, _host_demo_cmd, _json_figures("host_demo"),
         env={"OMP_NUM_THREADS": "2", "NST_CPU_THREADS": "2"}),
]


# --- inner parts (run in their own process) ---------------------------------------------------


def inner_oom_split(out: Path) -> None:
    """A batch of eight 512 px L-BFGS trials in a memory pool capped at about three trials' worth: the
    runner must split it (halves, retried from the start) until every trial completes; then one trial
    far too large for the cap must fail alone with the one-line out-of-memory error."""
    import torch

    sys.path.insert(0, str(BENCH))
    from sweep import make_trials

    from nst.engine import run_trials, trial_bytes

    device = torch.device("cuda")
    total = torch.cuda.get_device_properties(device).total_memory
    trials = make_trials([["size=512", "steps=5", f"style_weight=1e{e}"] for e in range(2, 10)], "cuda", out / "oom")
    per_trial = trial_bytes(trials[0].settings)
    cap = 600 * 2**20 + 3 * per_trial  # the network, its workspace, about three trials
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)
    t = time.perf_counter()
    summaries = run_trials(trials, max_batch=8)
    split_s = time.perf_counter() - t
    big = make_trials([["size=4096", "steps=2"]], "cuda", out / "oom_alone")
    alone = run_trials(big, max_batch=1)[0]
    result = {
        "cap_mb": round(cap / 2**20), "trial_estimate_mb": round(per_trial / 2**20),
        "statuses": [s["status"] for s in summaries],
        # the size of the attempt each trial completed in (a split keeps the batch's id)
        "batch_sizes": [s["batch"]["size"] for s in summaries],
        "seconds": round(split_s, 2),
        "alone_status": alone["status"], "alone_error": alone.get("error"),
    }
    (out / "oom_split.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2))
    ok = all(s == "completed" for s in result["statuses"]) and max(result["batch_sizes"]) < 8 \
        and alone["status"] == "failed" and "out of memory even alone" in (alone.get("error") or "")
    sys.exit(0 if ok else 1)


def inner_host_demo(out: Path, dry: bool) -> None:
    """`make demo`'s transfer on the host CPU (two threads), fp32 then bf16 (bf16 only where the CPU has
    bf16 units: emulated, it takes many minutes): the whole command's wall time, the optimisation's, and
    the standardised metrics of each (to compare with the float-noise floor)."""
    from nst.device import cpu_bf16_units

    units = cpu_bf16_units()
    precisions = ["fp32"] + (["bf16"] if units and not dry else [])
    size, steps = ("32", "2") if dry else ("256", "150")
    result: dict = {"cpu_bf16": units, "size": int(size), "steps": int(steps)}
    keys = ("status", "error", "precision", "image_size", "evaluations", "optimisation_time", "evals_per_second",
            "wall_time", "stop_reason", "cpu_threads", "final_loss", "metrics")
    rc = 0
    for p in precisions:
        run_dir = out / f"host_demo_{p}"
        t = time.perf_counter()
        rc |= subprocess.call([sys.executable, "-m", "nst.run", f"size={size}", f"steps={steps}", "device=cpu",
                               f"precision={p}", "logger=none", f"hydra.run.dir={run_dir}"])
        s = _summary(run_dir / "summary.json")
        result[p] = {"end_to_end_s": round(time.perf_counter() - t, 2), **{k: s.get(k) for k in keys if k in s}}
        print(f"host demo {p}: {json.dumps(result[p])}", flush=True)
    if "bf16" in result and result["fp32"].get("optimisation_time") and result["bf16"].get("optimisation_time"):
        result["bf16_speedup_optimisation"] = round(result["fp32"]["optimisation_time"] / result["bf16"]["optimisation_time"], 3)
        result["bf16_speedup_end_to_end"] = round(result["fp32"]["end_to_end_s"] / result["bf16"]["end_to_end_s"], 3)
    (out / "host_demo.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    sys.exit(rc)


def inner_host_cpu(out: Path, dry: bool) -> None:
    """The host CPU on two threads (the project's machines have two cores): fp32 against bf16 in both
    layouts at 256 px where the CPU has bf16 units (with a profile of the costliest operators), and the
    precision benchmark's verdict with its noise floor; a CPU without them gets a 64 px look only (bf16
    is emulated there and many times slower)."""
    sys.path.insert(0, str(BENCH))
    from nst.device import cpu_bf16_units, cpu_model

    units = cpu_bf16_units()
    print(f"host CPU: {cpu_model()}; bf16 units: {units or 'none'}", flush=True)
    size = "32" if dry else ("256" if units else "64")
    rc = subprocess.call([sys.executable, str(BENCH / "throughput.py"), "--device", "cpu", "--sizes", size,
                          "--precisions", "fp32", "bf16", "--layouts", "nchw", "nhwc", "--evals", "1" if dry else "3",
                          "--profile", "0" if dry or not units else "12", "--json", str(out / "host_cpu.json")])
    if units or dry:
        rc |= subprocess.call([sys.executable, str(BENCH / "precision.py"), "--device", "cpu", "--size", "32" if dry else "64",
                               "--steps", "3" if dry else "30", "--precisions", "fp32", *([] if dry else ["bf16"]),
                               "--json", str(out / "host_cpu_precision.json")])
    sys.exit(rc)


# --- the driver --------------------------------------------------------------------------------


def run_part(part: Part, c: Context, limit: float, log) -> dict:
    rec: dict = {"part": part.name, "needs_cuda": part.needs_cuda, "command": " ".join(part.command(c))}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NST_PROGRESS": "0", "HYDRA_FULL_ERROR": "0",
           "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           **part.env}
    t = time.perf_counter()
    lines: list[str] = []
    proc = subprocess.Popen(part.command(c), cwd=c.work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", bufsize=1, start_new_session=True)

    def pump() -> None:  # the part's output, as it comes: echoed with the part's name, and logged
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            print(f"  {part.name}| {line}", flush=True)
            log.write(f"{part.name}| {line}\n")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        rec["timed_out"] = True
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and anything it left running (its own session)
        except ProcessLookupError:
            pass
        proc.wait()
    reader.join(timeout=5)
    log.flush()
    rec["rc"] = proc.returncode
    rec["wall_s"] = round(time.perf_counter() - t, 2)
    rec["output"] = "\n".join(lines)
    rec["status"] = "timed out" if rec.get("timed_out") else ("passed" if proc.returncode == 0 else "failed")
    try:
        part.read(c, rec)
    except Exception as e:  # noqa: BLE001 - a result that cannot be read is this part's problem only
        rec["read_error"] = f"{type(e).__name__}: {e}"
    rec["output_tail"] = "\n".join(lines[-25:])
    del rec["output"]
    return rec


def environment() -> dict:
    import torch

    from nst.device import _cpuinfo, cpu_model

    env = {"torch": torch.__version__, "python": platform.python_version(), "cuda_available": torch.cuda.is_available(),
           "host": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
           "cpu_bf16": sorted(f for f in (_cpuinfo("flags") or "").split() if "bf16" in f or f.startswith("amx"))}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), capability=f"{p.major}.{p.minor}")
    return env


def _fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def summary_lines(report: dict) -> list[str]:
    e = report["environment"]
    out = [f"GPU check {'(dry run, CPU) ' if report['dry_run'] else ''}on {e.get('gpu', 'no GPU')} "
           f"({e['cpu']}, {e['cpu_count']} CPUs), torch {e['torch']}, {report['wall_s']:.0f} s"]
    for rec in report["parts"]:
        out.append(f"- {rec['part']}: {rec['status']}" + (f" (rc {rec['rc']}, {rec['wall_s']:.1f} s)" if "rc" in rec else "")
                   + (f" - {rec['reason']}" if rec.get("reason") else ""))
        f = rec.get("figures") or {}
        if rec["part"] == "gpu_tests" and f.get("pytest"):
            out.append(f"    {f['pytest']}")
        elif rec["part"] in ("throughput", "host_cpu", "compile") and f.get("rows"):
            for key, r in f["rows"].items():
                if isinstance(r, dict):
                    peak = f", {100 * r['fraction_of_peak']:.1f} % of peak" if r.get("fraction_of_peak") else ""
                    out.append(f"    {key:<24} {r['evals_per_s']:9.2f} evals/s  {r['ms_per_eval']:8.3f} ms  "
                               f"{r['tflops']:7.2f} TFLOP/s{peak}  x{r['ratio_to_bare']:.3f} bare")
                else:
                    out.append(f"    {key:<24} {r:9.3f} evals/s")
            if rec["part"] == "host_cpu":
                out.append(f"    CPU: {f.get('cpu')}, {f.get('threads')} threads, bf16 units: {f.get('bf16')}")
            for line in f.get("compiling", []):
                out.append(f"    {line}")
        elif rec["part"] == "precision" and f.get("rows"):
            out.append(f"    {f['size']} px, {f['steps']} evaluations; noise floor {_fmt(f.get('noise_floor'), '.4f')}; "
                       f"default: {f['default']}")
            for p, r in f["rows"].items():
                out.append(f"    {p:<5} {r['evals_per_s']:8.2f} evals/s  speed x{r['evals_per_s_vs_fp32']:.3f}  "
                           f"worst diff {_fmt(r['worst_metric_diff'], '.4f')} ({r['worst_metric']})  "
                           f"within: {r['within_tolerance']}")
        elif rec["part"] == "sweep":
            for name in ("six", "ablations", "eight512"):
                if name in f:
                    p = f[name]
                    out.append(f"    {name:<10} {p['trials']:>3} trials  one at a time {_fmt(p['one_at_a_time_s']):>8} s  "
                               f"batched {p['batched_s']:7.2f} s  x{_fmt(p['speedup'])}  batches {p['batch_sizes']}"
                               + (f"  {p['failed']} FAILED" if p["failed"] else ""))
        elif rec["part"] == "host_demo" and f:
            for p in ("fp32", "bf16"):
                if p in f:
                    r = f[p]
                    out.append(f"    {p}: {r.get('status')}, {r.get('evaluations')} evaluations, optimisation "
                               f"{_fmt(r.get('optimisation_time'))} s, end to end {_fmt(r.get('end_to_end_s'))} s, "
                               f"threads {r.get('cpu_threads')}, metrics {r.get('metrics')}")
            if "bf16_speedup_optimisation" in f:
                out.append(f"    bf16 speed-up: optimisation x{f['bf16_speedup_optimisation']}, "
                           f"end to end x{f['bf16_speedup_end_to_end']}")
        elif rec["part"] == "sinks" and f:
            out.append(f"    file sink, {f['size']}: the loop's thread {f['loop_ms_per_eval_background']:.3f} ms per "
                       f"evaluation with the writer thread, {f['loop_ms_per_eval_in_loop']:.3f} ms writing in the loop "
                       f"(x{f['ratio']:.3f})")
        elif rec["part"] in ("default_transfer", "oom_split", "two_workers") and f:
            out.append("    " + ", ".join(f"{k}={v}" for k, v in f.items() if v is not None))
    if not report["dry_run"]:
        out += ["targets:", *target_lines(report)]
    return out


def target_lines(report: dict) -> list[str]:
    parts = {r["part"]: r.get("figures") or {} for r in report["parts"]}
    rows = (parts.get("throughput") or {}).get("rows", {})
    sweep = parts.get("sweep") or {}
    default = parts.get("default_transfer") or {}

    def check(what: str, value, target: float, higher_better: bool = False) -> str:
        if value is None:
            return f"  {what}: not measured (target {target:g})"
        met = value >= target if higher_better else value <= target
        return f"  {what}: {value:.3f} (target {'>=' if higher_better else '<='} {target:g}) {'met' if met else 'MISSED'}"

    def ms(key: str):
        return (rows.get(key) or {}).get("ms_per_eval")

    lbfgs = [(rows.get(f"{p} lbfgs loop") or {}).get("ratio_to_bare") for p in ("tf32", "bf16")]
    with_files = (rows.get("tf32 lbfgs loop + files") or {}).get("ratio_to_bare")
    return [
        check("bare evaluation 512x384 bf16, ms", ms("bf16 bare"), TARGETS["bare_ms_bf16"]),
        check("bare evaluation 512x384 tf32, ms", ms("tf32 bare"), TARGETS["bare_ms_tf32"]),
        check("L-BFGS loop / bare (tf32)", lbfgs[0], TARGETS["lbfgs_loop_vs_bare"], higher_better=True),
        check("L-BFGS loop / bare (bf16)", lbfgs[1], TARGETS["lbfgs_loop_vs_bare"], higher_better=True),
        check("L-BFGS loop with the run's files / bare (tf32)", with_files, TARGETS["lbfgs_loop_vs_bare"], higher_better=True),
        check("default transfer, optimisation s", default.get("optimisation_time"), TARGETS["default_optimisation_s"]),
        check("default transfer, end to end s", default.get("end_to_end_s"), TARGETS["default_end_to_end_s"]),
        check("the ablations preset batched, s", (sweep.get("ablations") or {}).get("batched_s"), TARGETS["ablations_batched_s"]),
        check("eight 512 px trials batched, s", (sweep.get("eight512") or {}).get("batched_s"), TARGETS["eight512_batched_s"]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "gpu_check", help="where the three files go")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU: tiny sizes; parts that need CUDA are skipped")
    ap.add_argument("--budget", type=float, default=480, help="seconds for all parts together (default 480)")
    ap.add_argument("--only", nargs="+", choices=[p.name for p in PARTS], help="run these parts only")
    ap.add_argument("--sweep-presets", nargs="+", default=["six", "ablations", "eight512"],
                    choices=["six", "ablations", "eight512"], help="the sweep part's presets (default: all three)")
    ap.add_argument("--sweep-steps", type=int, help="evaluations per sweep trial instead of each preset's own")
    ap.add_argument("--precision-steps", type=int, help="evaluations per precision trial instead of 500")
    ap.add_argument("--layouts", nargs="+", default=["nchw"], choices=["nchw", "nhwc"],
                    help="the throughput part's layouts on the GPU (default nchw: nhwc won no loop there)")
    ap.add_argument("--no-loops", action="store_true", help="the throughput part without the optimiser loops")
    ap.add_argument("--sweep-batched-only", nargs="+", default=[], metavar="PRESET",
                    help="sweep presets to run batched only (no one-at-a-time baseline)")
    ap.add_argument("--limit", nargs="+", default=[], metavar="PART=SECONDS",
                    help="a part's own time limit instead of its default")
    ap.add_argument("--inner", choices=["oom_split", "host_cpu", "host_demo"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.inner == "oom_split":
        return inner_oom_split(args.out)
    if args.inner == "host_cpu":
        return inner_host_cpu(args.out, args.dry_run)
    if args.inner == "host_demo":
        return inner_host_demo(args.out, args.dry_run)
    limits = {}
    for item in args.limit:
        name, _, seconds = item.partition("=")
        if name not in {p.name for p in PARTS} or not seconds.replace(".", "", 1).isdigit():
            ap.error(f"--limit {item!r}: expected PART=SECONDS with PART one of {', '.join(p.name for p in PARTS)}")
        limits[name] = float(seconds)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; on the CPU run it with --dry-run")
    start = time.perf_counter()
    report = {"dry_run": args.dry_run, "budget_s": args.budget, "environment": environment(), "parts": [],
              "settings": {k: os.environ[k] for k in ("NST_CUDNN_BENCHMARK", "NST_CHANNELS_LAST") if k in os.environ}}
    print(f"GPU check{' (dry run)' if args.dry_run else ''}: {report['environment']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nst_gpu_check_") as tmp, \
            open(args.out / "gpu_check.log", "w", encoding="utf-8") as log:
        c = Context(dry=args.dry_run, work=Path(tmp), opts=args)
        chosen = [p for p in PARTS if not args.only or p.name in args.only]
        for n, part in enumerate(chosen, 1):
            left = args.budget - (time.perf_counter() - start)
            head = f"[{n}/{len(chosen)}] {part.name}"
            if args.dry_run and part.needs_cuda:
                rec = {"part": part.name, "needs_cuda": True, "status": "skipped", "reason": "needs CUDA"}
            elif left < 10:
                rec = {"part": part.name, "needs_cuda": part.needs_cuda, "status": "not run",
                       "reason": f"the {args.budget:.0f} s budget was spent"}
            else:
                limit = min(limits.get(part.name, part.limit_s), left)
                print(f"{head} (limit {limit:.0f} s, {time.perf_counter() - start:.0f} s in)", flush=True)
                rec = run_part(part, c, limit, log)
            print(f"{head}: {rec['status']}" + (f" ({rec['wall_s']:.1f} s)" if "wall_s" in rec else "")
                  + (f" - {rec['reason']}" if rec.get("reason") else ""), flush=True)
            report["parts"].append(rec)
            report["wall_s"] = round(time.perf_counter() - start, 1)
            # written after every part: a run cut short still leaves what it measured
            (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    lines = summary_lines(report)
    (args.out / "gpu_check.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    bad = [r["part"] for r in report["parts"] if r["status"] not in ("passed", "skipped")]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
