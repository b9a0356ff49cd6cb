"""benchmarks/precision.py, the measurement behind each device kind's default precision: a CPU smoke run."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, nst_env


def test_precision_benchmark_smoke(tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "precision.py"), "--device", "cpu", "--size", "32",
                        "--steps", "3", "--precisions", "fp32", "bf16", "--json", str(out)],
                       cwd=ROOT, env=nst_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("device: cpu") and "torch" in lines[0] and "threads" in lines[0]
    assert "style_weight 1000, 10000, 100000, 1e+06, 1e+07" in lines[0] and "32x24 px" in lines[0]
    table = {line.split()[0]: line.split() for line in lines if line.split()[:1] in (["fp32"], ["bf16"])}
    assert list(table) == ["fp32", "bf16"]
    for cells in table.values():
        assert cells[1:4] == ["5/5", "5", "15"]  # all completed, one batch of five, 3 evaluations each
    fp32 = table["fp32"]
    assert fp32[6:10] == ["1.000", "1.000", "0.000%", "-"] and fp32[-1] == "yes"
    assert lines[-1] in ("default for cpu: fp32", "default for cpu: bf16")

    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["device_kind"] == "cpu" and data["tolerance"] == 0.02
    assert data["style_weights"] == [1e3, 1e4, 1e5, 1e6, 1e7] and [data["width"], data["height"]] == [32, 24]
    rows = {x["precision"]: x for x in data["rows"]}
    assert list(rows) == ["fp32", "bf16"] and data["default"] == lines[-1].rsplit(" ", 1)[1]
    base = rows["fp32"]
    assert base["worst_metric_diff"] == 0 and base["within_tolerance"]
    assert base["evals_per_s_vs_fp32"] == 1 and base["time_vs_fp32"] == 1
    for x in rows.values():
        assert x["completed"] == x["trials"] == 5 and x["batch_sizes"] == [5] and x["evaluations"] == 15
        assert x["optimisation_time_s"] == max(t["optimisation_time"] for t in x["per_trial"])
        assert x["evals_per_s"] == pytest.approx(x["evaluations"] / x["optimisation_time_s"])
        assert x["evals_per_s_vs_fp32"] == pytest.approx(x["evals_per_s"] / base["evals_per_s"])
        assert [t["style_weight"] for t in x["per_trial"]] == data["style_weights"]
        assert {"style_swd", "gmsd", "psnr", "ssim"} <= set(x["per_trial"][0]["metric_diffs"])
    assert all(d == 0 for t in base["per_trial"] for d in t["metric_diffs"].values())
    # the default is the fastest precision within tolerance
    within = [x for x in rows.values() if x["within_tolerance"]]
    assert data["default"] == max(within, key=lambda x: x["evals_per_s"])["precision"]
