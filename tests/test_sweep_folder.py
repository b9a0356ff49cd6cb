"""A sweep folder's identity and its one owner (nst.sweep_folder), and the paths and values that must
not reach a run: real commands in subprocesses at 32 px."""

import hashlib
import json
import subprocess
import sys
import time
import types
from pathlib import Path

from conftest import nst_env
from nst import sweep_folder

TINY = ("size=32", "steps=2", "device=cpu", "logger=none")


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_extending_a_sweep_runs_only_the_new_values_and_keeps_its_history(run_nst, tmp_path):
    sweep = tmp_path / "sw"
    r = run_nst("-m", "style_weight=1e3,1e4", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-2000:]
    first_multirun = (sweep / "multirun.yaml").read_text()
    done = {p.name: (p / "summary.json").read_bytes() for p in sweep.iterdir() if (p / "summary.json").exists()}
    assert sorted(n.split("_", 1)[0] for n in done) == ["0", "1"]
    r = run_nst("-m", "style_weight=1e4,1e5", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-2000:]
    trials = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").exists())
    assert [n.split("_", 1)[0] for n in trials] == ["0", "1", "2"]  # 1e4 kept its folder; 1e5 is new
    for name, data in done.items():
        assert (sweep / name / "summary.json").read_bytes() == data  # not run again
    # named by the swept values as people write them; the fixed overrides stay in .hydra/overrides.yaml
    assert trials == ["0_style_weight=1e3", "1_style_weight=1e4", "2_style_weight=1e5"]
    assert "size=32" in (sweep / trials[2] / ".hydra" / "overrides.yaml").read_text()
    # "resumed" counts the command's own trials: 1e4, not 1e3, which it did not name
    assert "resumed: 1 trial(s)" in r.stdout
    state = json.loads((sweep / ".nst" / "sweep.json").read_text())
    assert len(state["history"]) == 2 and "style_weight=1e4,1e5" in state["history"][1]["command"]
    assert (sweep / ".nst" / "multirun.0.yaml").read_text() == first_multirun  # the first command's, kept
    rows = (sweep / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 4  # header and three trials, each once


def test_another_sweep_into_a_folder_is_refused_before_anything_is_written(run_nst, tmp_path):
    sweep = tmp_path / "sw"
    assert run_nst("-m", "style_weight=1e3,1e4", *TINY, f"hydra.sweep.dir={sweep}").returncode == 0
    before = checksums(sweep)
    for other in (["-m", "seed=0,1", *TINY], ["-m", "style_weight=1e3,1e4", "size=40", "steps=2", "device=cpu", "logger=none"]):
        r = run_nst(*other, f"hydra.sweep.dir={sweep}")
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"nst: error: hydra.sweep.dir: {sweep} holds another sweep")
        assert "style_weight" in lines[0] and "leave hydra.sweep.dir unset" in lines[0]
        assert checksums(sweep) == before


def test_a_second_command_on_a_running_sweep_fails_at_once_naming_the_holder(run_nst, tmp_path):
    sweep = tmp_path / "sw"
    args = [sys.executable, "-m", "nst.run", "-m", "style_weight=1e3,1e4", "size=32", "steps=40", "device=cpu",
            "logger=none", f"hydra.sweep.dir={sweep}"]
    first = subprocess.Popen(args, cwd=tmp_path, env=nst_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = sweep / ".nst" / "lock"
        deadline = time.time() + 60
        while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
            time.sleep(0.2)
        r = run_nst("-m", "style_weight=1e3,1e4", "size=32", "steps=40", "device=cpu", "logger=none", f"hydra.sweep.dir={sweep}")
        assert r.returncode == 2
        assert f"is being run by another command (pid {first.pid} on " in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert len([p for p in sweep.iterdir() if (p / "summary.json").exists()]) == 2
    # the lock went with its process: the same command now runs (and skips what is done)
    r = run_nst("-m", "style_weight=1e3,1e4", "size=32", "steps=40", "device=cpu", "logger=none", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0 and "2 trial(s) had already completed" in r.stdout


def test_trial_folder_names_stay_readable_and_unique():
    short = sweep_folder.folder_name(3, "style_weight=1e4")
    assert short == "3_style_weight=1e4"
    a = "content_weight=1.0,optimizer.history_size=100,style_weight=10000.0,tv_weight=0.5,wandb.init_timeout=30"
    b = a.replace("init_timeout=30", "init_timeout=31")
    na, nb = sweep_folder.folder_name(0, a), sweep_folder.folder_name(0, b)
    assert na != nb and len(na) <= 82
    head = na.split("_", 1)[1].rsplit("_", 1)[0]
    assert a.startswith(head) and a[len(head)] == ","  # cut between two overrides, never inside a value


def test_paths_and_values_that_must_not_reach_a_run_are_one_line(run_nst, tmp_path):
    (tmp_path / "afile").write_text("x")
    cases = [
        (["-m", "style_weight=1,2", *TINY, "sweep_name=../../../escape"], "sweep_name: must be a name"),
        (["-m", "style_weight=1,2", *TINY, f"hydra.sweep.dir={tmp_path / 'afile'}"], "exists and is not a folder"),
        ([*TINY, f"hydra.run.dir={tmp_path / 'afile'}"], "hydra.run.dir:"),
        ([*TINY, "content=été.jpg"], "must be quoted for Hydra"),
        ([*TINY, "style_layers=[conv1_1,conv1_1,conv2_1]"], "style_layers: names conv1_1 more than once"),
        ([*TINY, "content_weight=0", "style_weight=0"], "are all 0: there is nothing to optimise"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, expected in cases:
        r = run_nst(*args)
        assert r.returncode == 2, (args, r.stderr[-1500:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing outside
    assert not (tmp_path.parent.parent / "escape").exists()


def test_the_wandb_shutdown_waits_at_most_its_timeout(monkeypatch):
    from nst import wandb_sink

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(teardown=lambda: time.sleep(30)))
    t = time.perf_counter()
    wandb_sink.teardown(timeout=0.5)
    assert time.perf_counter() - t < 5
