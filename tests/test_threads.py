"""The intra-op threads of a CPU batch: the cores idle just before it (nst.device.cpu_threads), at
least one and at most the process's limit; NST_CPU_THREADS forces a count. benchmarks/threads.py
measures what the rule is for."""

import os
import subprocess
import sys
import time

import pytest
import torch

from helpers import run_alone, settings
from nst import device
from nst.errors import InputError


def test_a_forced_count_is_used_and_recorded_and_the_process_keeps_its_own(monkeypatch, tmp_path):
    before = torch.get_num_threads()
    monkeypatch.setenv("NST_CPU_THREADS", "1")
    assert device.cpu_threads() == 1
    summary = run_alone(settings("device=cpu", "size=32", "steps=2"), tmp_path)
    assert summary["status"] == "completed" and summary["cpu_threads"] == 1
    assert torch.get_num_threads() == before  # restored after the batch


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_count_is_one_line(monkeypatch, value):
    monkeypatch.setenv("NST_CPU_THREADS", value)
    with pytest.raises(InputError, match=f"NST_CPU_THREADS: '{value}' is not 'auto' or a number of threads >= 1"):
        device.cpu_threads()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_the_rule_leaves_out_a_core_that_another_process_keeps_busy(monkeypatch):
    monkeypatch.setenv("NST_CPU_THREADS", "auto")
    monkeypatch.setattr(device, "_THREADS", len(os.sched_getaffinity(0)))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        chosen = [device.cpu_threads() for _ in range(3)]
    finally:
        busy.kill()
        busy.wait()
    assert all(1 <= c < os.cpu_count() for c in chosen), chosen
