"""Searches that survive: the project's Optuna sweeper (hydra/sweeper=optuna) keeps its study in a
journal file in the sweep folder, so a stopped search resumes to its total, a trial a killed command
left running is failed and proposed again, and several commands share one study. Real searches in
subprocesses, tiny images, the CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from conftest import nst_env
from helpers import summary

TINY = ["size=32", "steps=3", "device=cpu", "logger=none"]
SEARCH = ["+search=adam_lr", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", *TINY, "hydra.sweep.dir=out"]


def command(tmp: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "nst.run", "-m", *args]


def run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(tmp, *args), cwd=tmp, env=nst_env(tmp), capture_output=True, text=True, timeout=600)


def study(sweep: Path, name: str = "adam_lr") -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def states(s: optuna.Study) -> list[str]:
    return [t.state.name for t in s.get_trials(deepcopy=False)]


def completed_summaries(sweep: Path) -> list[dict]:
    out = [summary(d) for d in sweep.iterdir() if (d / "summary.json").exists()]
    return [s for s in out if s["status"] == "completed"]


def assert_best_is_the_best_trial(sweep: Path) -> None:
    done = completed_summaries(sweep)
    best = min(done, key=lambda s: s["objective"]["value"])
    found = OmegaConf.load(sweep / "optimization_results.yaml")
    assert found.best_value == best["objective"]["value"] == study(sweep).best_value
    assert found.best_params["optimizer.lr"] == best["config"]["optimizer"]["lr"]


def test_a_stopped_search_resumes_to_its_total(tmp_path):
    # Ctrl-C once the first ask's two trials have finished: the trials then running are failed and
    # enqueued again; the same command into the same folder ends with four finished trials.
    proc = subprocess.Popen(command(tmp_path, *SEARCH), cwd=tmp_path, env=nst_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300

    def told() -> int:
        try:
            return states(study(tmp_path / "out")).count("COMPLETE")
        except (KeyError, FileNotFoundError, ValueError):  # no journal or study yet
            return 0

    while told() < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    first = study(tmp_path / "out")
    complete_before = states(first).count("COMPLETE")
    assert 2 <= complete_before <= 4
    r = run(tmp_path, *SEARCH)
    assert r.returncode == 0, r.stderr[-3000:]
    s = study(tmp_path / "out")
    assert states(s).count("COMPLETE") == 4  # the total, not 4 more
    assert f"{complete_before} of 4 trials counted" in r.stdout + r.stderr or complete_before < 4
    retried = [t for t in s.get_trials(deepcopy=False) if "retry_of" in t.user_attrs]
    for t in retried:  # each stopped trial proposed again with its own parameters
        assert t.params == s.trials[t.user_attrs["retry_of"]].params and t.state.name == "COMPLETE"
    assert len(completed_summaries(tmp_path / "out")) == 4
    assert_best_is_the_best_trial(tmp_path / "out")
    # each stopped trial's folder says it was superseded (neither a failure nor a result)
    folders = {d.name.split("_", 1)[0]: d for d in (tmp_path / "out").iterdir() if d.name[0].isdigit()}
    stopped = [str(t.user_attrs["retry_of"]) for t in retried if str(t.user_attrs["retry_of"]) in folders]
    for number in stopped:
        assert summary(folders[number])["status"] == "superseded"
    assert sum((d / "summary.json").exists() and summary(d)["status"] == "superseded" for d in folders.values()) == len(stopped)
    # the same command once more runs nothing, and the study being complete, exits 0
    r = run(tmp_path, *SEARCH)
    assert r.returncode == 0 and states(study(tmp_path / "out")).count("COMPLETE") == 4
    assert "trial(s) failed" not in r.stderr
    # the report counts them apart: superseded, not failed
    page = (tmp_path / "out" / "report.html").read_text()
    if stopped:
        assert f"{len(stopped)} superseded" in page and "<tr class='superseded" in page
        assert "0 failed, unfinished or unreadable" in page


def test_a_trial_a_killed_command_left_running_is_failed_and_proposed_again(tmp_path):
    # a command that asked for a trial and died (its process is gone) before it told the result
    journal = tmp_path / "out" / "optuna.journal"
    journal.parent.mkdir()
    code = f"""
import optuna, os, socket
from optuna.distributions import FloatDistribution
storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend({str(journal)!r}))
s = optuna.create_study(study_name="adam_lr", storage=storage, direction="minimize")
t = s.ask({{"optimizer.lr": FloatDistribution(1e-3, 1.0, log=True)}})
t.set_user_attr("owner", f"{{socket.gethostname()}}:{{os.getpid()}}")
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    lost = study(tmp_path / "out").trials[0]
    assert lost.state.name == "RUNNING"
    r = run(tmp_path, *[a for a in SEARCH if "n_trials" not in a], "hydra.sweeper.n_trials=2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trial(s) 0 left running by a dead command: failed, proposed again" in r.stdout + r.stderr
    s = study(tmp_path / "out")
    assert states(s) == ["FAIL", "COMPLETE", "COMPLETE"]
    assert s.trials[1].user_attrs["retry_of"] == 0 and s.trials[1].params == lost.params
    assert len(completed_summaries(tmp_path / "out")) == 2


def test_two_commands_share_one_study_without_running_a_trial_twice(tmp_path):
    args = [a for a in SEARCH if "n_jobs" not in a] + ["hydra.sweeper.n_jobs=1"]
    procs = [subprocess.Popen(command(tmp_path, *args), cwd=tmp_path, env=nst_env(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    s = study(tmp_path / "out")
    assert states(s) == ["COMPLETE"] * 4  # four trials in all, between the two commands
    owners = {t.user_attrs["owner"] for t in s.trials}
    assert len(owners) == 2  # both commands ran trials
    folders = sorted(d.name.split("_")[0] for d in (tmp_path / "out").iterdir() if (d / "summary.json").exists())
    assert folders == ["0", "1", "2", "3"]  # one folder per trial, each run once


@pytest.mark.parametrize("sampler", ["random", "cmaes"])
def test_the_other_samplers_run(tmp_path, sampler):
    r = run(tmp_path, *[a for a in SEARCH if "n_trials" not in a], "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.sampler.name={sampler}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert states(study(tmp_path / "out")) == ["COMPLETE", "COMPLETE"]


def test_an_unknown_sampler_is_one_line_before_any_trial(tmp_path):
    r = run(tmp_path, *SEARCH, "hydra.sweeper.sampler.name=grid")
    assert r.returncode == 2
    assert r.stderr.strip() == "nst: error: hydra.sweeper.sampler.name: unknown sampler 'grid'; allowed: tpe, random, cmaes"
    assert not (tmp_path / "out").exists()


def test_the_search_space_syntax_of_hydras_optuna_sweeper():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from hydra_plugins.nst_sweeper.optuna_sweeper import SearchConfigError, search_space

    parser = OverridesParser.create()
    space, fixed = search_space(parser, {"optimizer.lr": "tag(log, interval(1e-3, 1.0))", "size": "64"},
                                ["seed=tag(int, interval(0, 9))", "pooling=choice(max, avg)", "steps=range(10, 40, 10)",
                                 "style_weight=1e5", "size=32"])
    assert space == {"optimizer.lr": FloatDistribution(1e-3, 1.0, log=True), "seed": IntDistribution(0, 9),
                     "pooling": CategoricalDistribution(["max", "avg"]), "steps": IntDistribution(10, 30, step=10)}
    assert fixed == ["style_weight=1e5", "size=32"]  # the command line wins over hydra.sweeper.params
    with pytest.raises(SearchConfigError, match="needs at least one parameter to sample"):
        search_space(parser, {}, ["size=32"])


def test_a_database_url_keeps_the_study_there(tmp_path):
    r = run(tmp_path, *[a for a in SEARCH if "n_trials" not in a], "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}")
    assert r.returncode == 0, r.stderr[-3000:]
    s = optuna.load_study(study_name="adam_lr", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert states(s) == ["COMPLETE", "COMPLETE"] and not (tmp_path / "out" / "optuna.journal").exists()


def test_a_range_keeps_its_last_value_and_sampled_values_read_back_as_themselves():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from hydra_plugins.nst_sweeper.optuna_sweeper import _value, search_space

    parser = OverridesParser.create()
    space, _ = search_space(parser, {}, ["seed=range(0, 10, 3)", "tv_weight=range(0.5, 2, 0.5)"])
    assert space["seed"] == IntDistribution(0, 9, step=3)  # 0, 3, 6, 9
    assert space["tv_weight"] == CategoricalDistribution([0.5, 1.0, 1.5])  # a range of floats: its values
    for v in [None, "max", "c,d", "e=f", "it's", "1", "null", "[1]", "with space", -3, 1e16, 0.1, True]:
        (o,) = parser.parse_overrides([f"k={_value(v)}"])
        assert o.value() == v and type(o.value()) is type(v), v


def test_the_sweeper_is_a_light_plugin_package_of_its_own(tmp_path):
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    from conftest import ROOT

    # By name: Hydra's scan executes plugin modules again, so classes imported before it are other objects.
    found = [f"{c.__module__}.{c.__qualname__}" for c in Plugins.instance().discover(Sweeper)]
    assert "hydra_plugins.nst_sweeper.optuna_sweeper.NstOptunaSweeper" in found
    assert (ROOT / "hydra_plugins" / "nst_sweeper" / "__init__.py").exists()
    assert not (ROOT / "hydra_plugins" / "nst_launcher" / "optuna_sweeper.py").exists()
    # Hydra imports it in every app of the environment: Optuna and torch only once a search runs
    code = ("import sys, hydra_plugins.nst_sweeper.optuna_sweeper; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'optuna', 'nst'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=nst_env(tmp_path), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are read from /proc (Linux)")
def test_a_trial_owner_is_alive_until_its_process_has_ended_or_is_a_zombie():
    import socket

    from hydra_plugins.nst_launcher._processes import pid_alive
    from hydra_plugins.nst_sweeper.optuna_sweeper import _alive

    host = socket.gethostname()
    assert pid_alive(os.getpid()) and _alive(f"{host}:{os.getpid()}")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        # ended, not yet collected: a zombie, whose pid still answers a signal
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not end"
            time.sleep(0.02)
        assert not pid_alive(child.pid) and not _alive(f"{host}:{child.pid}")
    finally:
        child.wait()
    assert not pid_alive(child.pid)  # collected: no such process
    # another machine's command cannot be checked from here: it is left running
    assert _alive(f"{host}-elsewhere:{child.pid}") and _alive("")
