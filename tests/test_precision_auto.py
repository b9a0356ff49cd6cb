"""precision=auto: tf32 on a GPU, fp32 on the CPU whatever its bf16 units (docs/speed.md has the
measurements behind both). The CPU's bf16 units are read from /proc/cpuinfo; NST_CPU_BF16 overrides
what is read (the suite pins it to 'none', conftest.py). On a CPU with AMX-BF16 a run says once what
precision=bf16 would offer."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import nst_env
from helpers import run_alone, settings
from nst.device import CPU_BF16_UNITS, cpu_bf16_units, resolve_precision
from nst.errors import InputError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("units", ["amx_bf16", "avx512_bf16", "none"])
def test_auto_is_fp32_on_every_cpu_and_tf32_on_a_gpu(monkeypatch, units):
    monkeypatch.setenv("NST_CPU_BF16", units)
    assert cpu_bf16_units() == (None if units == "none" else units)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", CUDA) == "tf32"
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CUDA) == "fp32"


def test_the_detection_reads_the_cpus_flags(monkeypatch):
    monkeypatch.delenv("NST_CPU_BF16")
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    assert cpu_bf16_units() == next((unit for unit in CPU_BF16_UNITS if unit in flags), None)


def test_a_bad_override_is_one_line(monkeypatch):
    monkeypatch.setenv("NST_CPU_BF16", "yes")
    with pytest.raises(InputError, match="NST_CPU_BF16: 'yes' is not one of amx_bf16, avx512_bf16, none"):
        cpu_bf16_units()


def test_bf16_on_the_cpu_runs_and_records_its_precision(tmp_path):
    summary = run_alone(settings("device=cpu", "size=32", "steps=3", "precision=bf16"), tmp_path)
    assert summary["status"] == "completed" and summary["precision"] == "bf16"


@pytest.mark.parametrize("units, hint", [("amx_bf16", True), ("avx512_bf16", False)])
def test_a_run_on_an_amx_cpu_names_what_bf16_would_offer(tmp_path, units, hint):
    env = {**nst_env(tmp_path), "NST_CPU_BF16": units}
    r = subprocess.run([sys.executable, "-m", "nst.run", "device=cpu", "size=32", "steps=2", "logger=none"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    log = r.stdout + r.stderr
    assert ("AMX-BF16 units: precision=bf16" in log) == hint
    (summary,) = list((tmp_path / "outputs" / "runs").glob("*/summary.json"))
    assert '"precision": "fp32"' in summary.read_text()


def test_channels_last_for_bf16_on_the_cpu_only(monkeypatch):
    from nst.device import channels_last

    monkeypatch.delenv("NST_CHANNELS_LAST", raising=False)
    assert channels_last(CPU, "bf16") and not channels_last(CPU, "fp32")
    assert not channels_last(CUDA, "bf16") and not channels_last(CUDA, "tf32")
    monkeypatch.setenv("NST_CHANNELS_LAST", "1")
    assert channels_last(CPU, "fp32") and channels_last(CUDA, "tf32")
    monkeypatch.setenv("NST_CHANNELS_LAST", "0")
    assert not channels_last(CPU, "bf16")


def test_the_layouts_and_bf16_paths_compute_the_same_features():
    """channels-last is another memory layout, not other arithmetic; bf16 with weights cast once is
    autocast's arithmetic without its per-call casts: features and image gradients agree."""
    from nst.features import FeatureExtractor, get_weights_spec

    spec, layers = get_weights_spec("vgg19", "caffe"), ["conv1_1", "conv3_1", "conv4_2"]
    x = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(0))

    def run(**kw):
        ex = FeatureExtractor("vgg19", spec, layers, "max", CPU, **kw)
        xi = x.clone().requires_grad_(True)
        feats = ex(xi)
        (g,) = torch.autograd.grad(sum(f.float().pow(2).mean() for f in feats.values()), xi)
        assert g.dtype == torch.float32 and g.shape == x.shape
        return {k: f.float() for k, f in feats.items()}, g

    def close(a, b, rel):
        (fa, ga), (fb, gb) = a, b
        for k in fa:
            assert (fa[k] - fb[k]).abs().max() <= rel * fb[k].abs().max(), k
        assert (ga - gb).abs().max() <= rel * gb.abs().max()

    fp32 = run(precision="fp32")
    close(run(precision="fp32", channels_last=True), fp32, 1e-4)
    bf16 = run(precision="bf16")
    close(bf16, run(precision="bf16", bf16_autocast=True), 0.0)  # the same arithmetic, bit for bit
    close(run(precision="bf16", channels_last=True), bf16, 2e-2)
    close(bf16, fp32, 5e-2)
