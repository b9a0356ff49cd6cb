import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, nst_env
from nst.errors import InputError
from nst.features import evaluation_flops


def test_conv1_1_by_hand():
    # 3 -> 64 channels, 3x3, at 40x30: 2*H*W*Cin*Cout*9 forward, the same again for the input gradient
    assert evaluation_flops("vgg19", "conv1_1", 40, 30) == 2 * (2 * 30 * 40 * 3 * 64 * 9)
    # what follows a conv without another conv (relu, pool) costs nothing counted
    assert evaluation_flops("vgg19", "pool1", 40, 30) == evaluation_flops("vgg19", "conv1_2", 40, 30)


def test_pooling_halves_the_map():
    # conv2_1 (64 -> 128) runs at half the width and height, floored
    below = evaluation_flops("vgg19", "conv1_2", 41, 31)
    assert evaluation_flops("vgg19", "conv2_1", 41, 31) - below == 2 * (2 * 20 * 15 * 64 * 128 * 9)


def test_scales_with_pixels_and_batch_and_depth():
    small = evaluation_flops("vgg19", "conv5_1", 64, 48)
    assert evaluation_flops("vgg19", "conv5_1", 128, 96) == 4 * small  # sizes divisible by 16: exact
    assert evaluation_flops("vgg19", "conv5_1", 64, 48, batch=3) == 3 * small
    names = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv4_2", "conv5_1"]
    counts = [evaluation_flops("vgg19", n, 64, 48) for n in names]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    assert evaluation_flops("vgg16", "conv5_1", 64, 48) < small  # three convs fewer


def test_default_layers_at_512x384():
    # VGG-19 forward + input-gradient backward to conv5_1: about 280 GFLOP
    assert evaluation_flops("vgg19", "conv5_1", 512, 384) / 1e9 == pytest.approx(284.0, abs=0.1)


def test_unknown_layer():
    with pytest.raises(InputError):
        evaluation_flops("vgg19", "conv6_1", 64, 48)


def _benchmark():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, bf16", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
                                        ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA H100 NVL", None),
                                        ("NVIDIA GeForce RTX 4090", None)])
def test_gpu_peaks_by_name(monkeypatch, name, bf16):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    bench = _benchmark()
    peaks = bench.device_peaks(torch.device("cuda"))
    assert (peaks and peaks["bf16"]) == bf16
    assert bench.device_peaks(torch.device("cpu")) is None


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--device", "cpu", "--sizes", "32",
                        "--evals", "2", "--precisions", "fp32", "tf32", "--loop", "--loop-evals", "4", "--json", str(out)],
                       cwd=tmp_path, env=nst_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("device: cpu") and "torch" in lines[0] and "threads" in lines[0]
    assert any("tf32 skipped" in line for line in lines)
    table = [line.split() for line in lines if line.lstrip().startswith("32 ")]
    assert table[0][4] == "bare" and len(table) == 5  # bare + 2 optimisers x (no files, files)
    for t in table:
        assert t[1:4] == ["32x24", "fp32", "1"] and "n/a" in t
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["deepest_layer"] == "conv5_1" and data["peak_tflops"] is None
    rows = data["rows"]
    assert [x["what"] for x in rows] == ["bare", "lbfgs loop", "lbfgs loop + files", "adam loop", "adam loop + files"]
    flops = evaluation_flops("vgg19", "conv5_1", 32, 24)
    for x in rows:
        assert x["evals_per_s"] > 0 and x["gflop_per_eval"] == pytest.approx(flops / 1e9)
        assert x["tflops"] == pytest.approx(x["evals_per_s"] * flops / 1e12)
        assert x["fraction_of_peak"] is None
        assert x["ratio_to_bare"] == pytest.approx(x["evals_per_s"] / rows[0]["evals_per_s"])
        assert x["ratio_to_fp32_batch1"] == pytest.approx(x["ratio_to_bare"])  # fp32 batch 1 is the baseline
