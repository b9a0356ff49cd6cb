"""Batched sweeps as a user runs them: real Hydra multiruns in a subprocess, with the project's
launcher (the default) and with Hydra's one-at-a-time basic launcher."""

import sys
from pathlib import Path

import pandas as pd

from conftest import metrics_apart, nst_env
from helpers import settings, summary

SWEEP = ["-m", "style_weight=1e3,1e5,1e7", "size=32", "steps=10", "device=cpu", "logger=none"]


def _trials(d: Path) -> list[dict]:
    return [summary(t) for t in sorted((p for p in d.iterdir() if (p / "summary.json").exists()),
                                       key=lambda p: int(p.name.split("_")[0]))]


def test_batched_and_one_at_a_time_give_the_same_trials(run_nst, tmp_path):
    for launcher in ("nst", "basic"):
        r = run_nst(*SWEEP, f"hydra/launcher={launcher}", f"hydra.sweep.dir={launcher}")
        assert r.returncode == 0, r.stderr
    batched, alone = _trials(tmp_path / "nst"), _trials(tmp_path / "basic")
    assert [t["batch"]["size"] for t in batched] == [3, 3, 3] and len({t["batch"]["id"] for t in batched}) == 1
    assert [t["batch"]["size"] for t in alone] == [1, 1, 1] and len({t["batch"]["id"] for t in alone}) == 3
    for b, a in zip(batched, alone, strict=True):
        assert b["label"] == a["label"] and b["evaluations"] == a["evaluations"]
        assert not metrics_apart(a["metrics"], b["metrics"]), (b["label"], metrics_apart(a["metrics"], b["metrics"]))
    # both sweeps aggregate the same way
    for launcher in ("nst", "basic"):
        table = pd.read_csv(tmp_path / launcher / "results.csv")
        assert list(table["status"]) == ["completed"] * 3


def test_a_failing_trial_leaves_its_batch_and_the_sweep_exits_1(run_nst, tmp_path):
    r = run_nst("-m", "style_weight=1e3,1e38,1e5", "init=noise", "size=32", "steps=5", "device=cpu", "logger=none",
                "hydra.sweep.dir=out")
    assert r.returncode == 1
    ok1, bad, ok2 = _trials(tmp_path / "out")
    assert bad["status"] == "failed" and bad["error"].startswith("the loss became inf at evaluation 1")
    assert ok1["status"] == ok2["status"] == "completed" and ok1["evaluations"] == ok2["evaluations"] == 5
    assert {t["batch"]["size"] for t in (ok1, bad, ok2)} == {3}
    assert "1 trial(s) failed: style_weight=1e+38," in r.stderr and ": the loss became inf at evaluation 1" in r.stderr
    assert "Traceback" not in r.stderr


def test_trials_proposed_as_the_sweep_goes_are_validated_when_they_run(tmp_path):
    # Bypass the up-front check (as a sweeper that proposes trials as it goes does): the bad trial
    # records its one-line error when it is proposed, and the others run.
    import subprocess

    (tmp_path / "empty.jpg").write_bytes(b"")
    code = ("import sys; from nst.run import app; sys.argv = ['nst', '-m', 'content=tubingen,empty.jpg', 'size=32', "
            "'steps=3', 'device=cpu', 'logger=none', 'hydra.sweep.dir=out']; app()")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=nst_env(tmp_path), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    good, bad = _trials(tmp_path / "out")
    assert good["status"] == "completed"
    assert bad["status"] == "failed" and bad["error"] == "content: 'empty.jpg' is an empty file"


def test_on_a_gpu_auto_batches_as_many_trials_as_its_free_memory_holds(monkeypatch):
    # No GPU here: the device and its free memory are given; the sizing is what is tested (the GPU
    # check runs it for real: benchmarks/sweep.py --preset ablations).
    import torch

    from nst import engine

    s = settings("size=128", "steps=10")
    per_trial = engine.trial_bytes(s)
    monkeypatch.setattr(engine, "resolve_device", lambda name: torch.device("cuda"))
    cap = engine.batch_cap()
    assert 88 <= cap <= 256  # the ablations' largest group at 128 px fits one pass (with the usual 1024 open files)
    for free, expected in [(80 * 2**30, cap), (3 * per_trial / 0.8 + 1, 3), (1, 1)]:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (int(free), 80 * 2**30))
        assert engine.auto_batch_size([s] * 500) == expected
    assert int(0.8 * 80 * 2**30) // per_trial > cap  # at 128 px an 80 GB GPU would hold more: the cap decides


def test_the_batch_cap_leaves_room_in_the_open_file_limit():
    import subprocess

    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]));"
            "from nst import engine; print(engine.batch_cap())")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["32"]
