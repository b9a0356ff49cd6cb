"""The GPU check's dry run on the CPU: every part that needs no CUDA runs at tiny sizes through the
same commands and result parsing as on a GPU; the CUDA parts are skipped by name."""

import json
import subprocess
import sys

from conftest import ROOT, nst_env


def test_the_gpu_check_dry_run_runs_every_cpu_part_and_names_the_cuda_ones(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                       cwd=tmp_path, env=nst_env(tmp_path), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    parts = {p["part"]: p for p in report["parts"]}
    assert list(parts) == ["gpu_tests", "throughput", "sinks", "precision", "sweep", "default_transfer", "oom_split",
                           "two_workers", "compile", "host_cpu", "host_demo"]
    for name in ("gpu_tests", "oom_split", "compile"):
        assert parts[name]["status"] == "skipped" and parts[name]["reason"] == "needs CUDA"
        assert f"- {name}: skipped - needs CUDA" in r.stdout
    for name in ("throughput", "sinks", "precision", "sweep", "default_transfer", "two_workers", "host_cpu", "host_demo"):
        assert parts[name]["status"] == "passed" and parts[name]["rc"] == 0, parts[name].get("output_tail")
        assert parts[name]["figures"], name  # its results were read back
    f = {name: parts[name]["figures"] for name in parts if "figures" in parts[name]}
    assert {"fp32 bare", "fp32 lbfgs loop", "fp32 adam loop + files"} <= set(f["throughput"]["rows"])
    assert f["sinks"]["size"] == "32x24" and f["sinks"]["loop_ms_per_eval_background"] > 0
    assert "file sink, 32x24: the loop's thread" in r.stdout
    assert f["precision"]["default"] == "fp32" and f["precision"]["noise_floor"] is not None
    assert {"six", "ablations", "eight512"} <= set(f["sweep"]) and not any(f["sweep"][p]["failed"] for p in ("six", "eight512"))
    assert f["default_transfer"]["status"] == "completed" and f["default_transfer"]["end_to_end_s"] > 0
    assert f["two_workers"]["trials"] == f["two_workers"]["completed"] == 4 and f["two_workers"]["results_csv"]
    assert "2 CPU worker processes" in f["two_workers"]["launcher"]
    assert {"fp32 bare 32x24", "bf16 bare nhwc 32x24"} <= set(f["host_cpu"]["rows"])
    # the demo's transfer on the host CPU; bf16 only where the CPU has bf16 units (the suite pins none)
    assert f["host_demo"]["fp32"]["status"] == "completed" and "bf16" not in f["host_demo"]
    # the summary: printed last and written beside the JSON and the parts' whole output
    summary = (out / "gpu_check.txt").read_text()
    assert summary.splitlines()[0].startswith("GPU check (dry run, CPU)") and summary.strip() in r.stdout
    log = (out / "gpu_check.log").read_text()
    assert "default_transfer| outputs:" in log and "sweep| six:" in log
