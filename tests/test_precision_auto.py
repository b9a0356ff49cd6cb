"""precision=auto: tf32 on a GPU; on the CPU bf16 where it has AMX-BF16 units, fp32 elsewhere. The
detection reads /proc/cpuinfo; NST_CPU_BF16 overrides it (the suite pins it to 'none', conftest.py)."""

from pathlib import Path

import pytest
import torch

from helpers import run_alone, settings
from nst.errors import InputError
from nst.trial import CPU_BF16_UNITS, cpu_bf16_units, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("units, expected", [("amx_bf16", "bf16"), ("avx512_bf16", "fp32"), ("none", "fp32")])
def test_auto_on_the_cpu_follows_its_bf16_units(monkeypatch, units, expected):
    monkeypatch.setenv("NST_CPU_BF16", units)
    assert cpu_bf16_units() == (None if units == "none" else units)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("auto", CUDA) == "tf32"  # the GPU's rule does not read the CPU
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


def test_the_detection_reads_the_cpus_flags(monkeypatch):
    monkeypatch.delenv("NST_CPU_BF16")
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    expected = next((unit for unit in CPU_BF16_UNITS if unit in flags), None)
    assert cpu_bf16_units() == expected


def test_a_bad_override_is_one_line(monkeypatch):
    monkeypatch.setenv("NST_CPU_BF16", "yes")
    with pytest.raises(InputError, match="NST_CPU_BF16: 'yes' is not one of amx_bf16, avx512_bf16, none"):
        cpu_bf16_units()


def test_a_trial_with_auto_runs_in_bf16_on_an_amx_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("NST_CPU_BF16", "amx_bf16")
    summary = run_alone(settings("device=cpu", "size=32", "steps=3", "precision=auto"), tmp_path)
    assert summary["status"] == "completed" and summary["precision"] == "bf16"
    monkeypatch.setenv("NST_CPU_BF16", "none")
    summary = run_alone(settings("device=cpu", "size=32", "steps=3", "precision=auto"), tmp_path / "plain")
    assert summary["status"] == "completed" and summary["precision"] == "fp32"
