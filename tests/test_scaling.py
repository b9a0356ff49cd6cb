"""Scaling out (docs/scaling-out.md): the launcher's worker pool, the SLURM launcher through
submitit, and Optuna searches, as real Hydra multiruns in subprocesses (CPU, 32 px, a few
evaluations); then the settings' one-line errors, in this process."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import metrics_apart, nst_env
from helpers import summary

TESTS = Path(__file__).resolve().parent
TINY = ["size=32", "steps=3", "device=cpu", "logger=none"]
FOUR = ["style_weight=1e3,1e5,1e7,1e9", *TINY]


def run(tmp: Path, *args: str, path_prefix: Path | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**nst_env(tmp), **extra_env}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))  # scaling_callbacks
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "nst.run", "-m", *args], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=600)


def folders(sweep: Path) -> list[Path]:
    return sorted((d for d in sweep.iterdir() if (d / ".hydra").is_dir()), key=lambda d: int(d.name.split("_")[0]))


def trials(sweep: Path) -> list[dict]:
    return [summary(d) for d in folders(sweep)]


def fail_job(kind: str, num: int = 0) -> list[str]:
    return [f"+hydra.callbacks.fail._target_=scaling_callbacks.{kind}", f"+hydra.callbacks.fail.job_num={num}"]


def assert_report(sweep: Path, statuses: list[str]) -> None:
    """The submitting process aggregated the sweep from the files, once every batch had ended."""
    assert list(pd.read_csv(sweep / "results.csv")["status"]) == statuses
    for name in ("grid.png", "curves.png", "report.html"):
        assert (sweep / name).exists(), name


# ------------------------------------------------------------------------------ worker processes


def test_two_cpu_workers_run_the_same_sweep_as_one_process(tmp_path):
    sweep = ["style_weight=1e3,1e5,1e7,1e38", *TINY]
    here = run(tmp_path, *sweep, "hydra.sweep.dir=here")
    pool = run(tmp_path, *sweep, "hydra.launcher.workers=2", "hydra.sweep.dir=pool")
    for r in (here, pool):  # the 1e38 trial fails, whichever way the trials ran
        assert r.returncode == 1, r.stderr
        assert "nst: 1 trial(s) failed: style_weight=1e+38," in r.stderr
    assert "nst launcher: 4 jobs in 2 batches (max_batch=auto) on 2 CPU worker processes" in pool.stdout
    assert "batch 1/2: jobs [0, 1] -> worker 0 (CPU)" in pool.stdout

    assert [d.name for d in folders(tmp_path / "here")] == [d.name for d in folders(tmp_path / "pool")]
    one, two = trials(tmp_path / "here"), trials(tmp_path / "pool")
    assert [t["status"] for t in one] == [t["status"] for t in two] == ["completed"] * 3 + ["failed"]
    assert len({t["process"]["pid"] for t in one}) == 1 and len({t["batch"]["id"] for t in one}) == 1
    # two processes, one batch of two each, no GPU visible to them
    assert len({t["process"]["pid"] for t in two}) == 2 and len({t["batch"]["id"] for t in two}) == 2
    assert [t["batch"]["size"] for t in two] == [2, 2, 2, 2]
    assert {t["process"]["cuda_visible_devices"] for t in two} == {""}
    for a, b in zip(one[:3], two[:3], strict=True):
        assert a["label"] == b["label"] and a["evaluations"] == b["evaluations"]
        assert not metrics_apart(a["metrics"], b["metrics"]), (a["label"], metrics_apart(a["metrics"], b["metrics"]))
    assert two[3]["error"] == one[3]["error"]
    for name in ("here", "pool"):
        assert_report(tmp_path / name, ["completed"] * 3 + ["failed"])
    assert list(pd.read_csv(tmp_path / "here" / "results.csv").columns) == \
        list(pd.read_csv(tmp_path / "pool" / "results.csv").columns)


def test_a_dead_worker_fails_only_its_batch_and_resume_runs_it_again(tmp_path):
    args = [*FOUR, "hydra.launcher.workers=2", "hydra.sweep.dir=out"]
    r = run(tmp_path, *args, *fail_job("KillWorker", 0))
    assert r.returncode == 1
    s = trials(tmp_path / "out")
    # batch [0, 1] was on worker 0, which died starting job 0; batch [2, 3] completed on worker 1
    assert [t["status"] for t in s] == ["failed", "failed", "completed", "completed"]
    assert s[0]["error"] == s[1]["error"] == \
        "worker process died (exit code 3) while running this batch on worker 0 (CPU)"
    assert "nst: 2 trial(s) failed" in r.stderr
    assert_report(tmp_path / "out", ["failed", "failed", "completed", "completed"])

    again = run(tmp_path, *args)  # the same sweep into its folder: only the lost batch runs
    assert again.returncode == 0, again.stderr
    assert "resumed: 2 trial(s) had already completed with the same config and were skipped" in again.stdout
    s2 = trials(tmp_path / "out")
    assert [t["status"] for t in s2] == ["completed"] * 4
    assert [t["finished_unix"] for t in s2[2:]] == [t["finished_unix"] for t in s[2:]]
    assert_report(tmp_path / "out", ["completed"] * 4)


# ---------------------------------------------------------------------------------------- SLURM


def test_slurm_launcher_on_submitits_local_executor(tmp_path):
    r = run(tmp_path, *FOUR, "hydra/launcher=slurm", "hydra.launcher.cluster=local", "hydra.launcher.max_batch=2",
            "hydra.sweep.dir=out")
    assert r.returncode == 0, r.stderr
    assert "nst launcher: 4 jobs in 2 batches (max_batch=2) as local submitit tasks" in r.stdout
    s = trials(tmp_path / "out")
    assert [t["status"] for t in s] == ["completed"] * 4
    assert len({t["process"]["pid"] for t in s}) == 2 and [t["batch"]["size"] for t in s] == [2, 2, 2, 2]
    assert_report(tmp_path / "out", ["completed"] * 4)
    # the tasks' logs are beside the sweep, one folder per task
    logs = sorted((tmp_path / "out" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and all("Job completed successfully" in p.read_text() for p in logs)


def test_a_lost_slurm_task_fails_its_batch_and_the_sweep_exits_1(tmp_path):
    # job 0's task dies (as if the node killed it); job 1's trial fails on its own, inside its task
    # the lost task's missing result is waited for 2 s, not submitit's 15 (scaling_callbacks.ResultWait)
    r = run(tmp_path, "style_weight=1e3,1e38", *TINY, "hydra/launcher=slurm", "hydra.launcher.cluster=local",
            "hydra.launcher.max_batch=1", *fail_job("KillWorker", 0),
            "+hydra.callbacks.wait._target_=scaling_callbacks.ResultWait", "+hydra.callbacks.wait.seconds=2",
            "hydra.sweep.dir=out")
    assert r.returncode == 1
    lost, inf = trials(tmp_path / "out")
    assert lost["status"] == "failed" and lost["error"].startswith("local task ")
    assert " ended without a result (UncompletedJobError, " in lost["error"]
    assert inf["status"] == "failed" and inf["error"].startswith("the loss became inf at evaluation 1")
    assert "nst: 2 trial(s) failed" in r.stderr
    assert_report(tmp_path / "out", ["failed", "failed"])


STAND_IN_SBATCH = """#!/bin/sh
cat "$1" > "$SBATCH_SCRIPT"
echo "sbatch: error: stand-in sbatch, nothing submitted" >&2
exit 1
"""


def test_the_script_submitted_to_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(STAND_IN_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    r = run(tmp_path, "style_weight=1e3,1e5,1e7", *TINY, "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
            "hydra.launcher.gpus_per_task=1", "hydra.launcher.timeout_min=90", "hydra.launcher.max_batch=2",
            "hydra.launcher.array_parallelism=2", "hydra.launcher.setup=['module load cuda/12.1']",
            "+hydra.launcher.additional_parameters.account=proj", "hydra.sweep.dir=out", path_prefix=bin_dir,
            SBATCH_SCRIPT=str(tmp_path / "script.sh"))
    # nothing ran: one line says why, and no trial folder exists
    assert r.returncode == 1
    assert "hydra/launcher=slurm: the job array was not submitted: sbatch: error: stand-in sbatch, nothing submitted" \
        in r.stderr
    assert not folders(tmp_path / "out")
    script = (tmp_path / "script.sh").read_text()
    logs = tmp_path.resolve() / "out" / ".submitit"
    for line in ["#SBATCH --array=0-1%2",  # two batches (of 2 and 1 trials), both at once
                 "#SBATCH --gpus-per-task=1", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --account=proj", "#SBATCH --job-name=nst",
                 "#SBATCH --signal=USR2@90",  # submitit's cue to requeue before the time limit
                 f"#SBATCH --output={logs}/%A_%a/%A_%a_0_log.out", "module load cuda/12.1"]:
        assert line in script.splitlines(), line
    assert f"{sys.executable} -u -m submitit.core._submit {logs}/%j" in script


def test_a_requeued_task_runs_the_same_batch():
    from hydra_plugins.nst_launcher._slurm import BatchTask

    task = BatchTask()
    again = task.checkpoint(b"the batch")  # what submitit resubmits after a time-out or preemption
    assert again.function is task and again.args == (b"the batch",)


# --------------------------------------------------------------------------------------- search


def test_a_search_reports_the_best_of_its_trials_own_results(tmp_path):
    # `+search=adam_lr`, four trials in two asks of two, with a style weight to search as well:
    # seed 26 proposes 1e38 for the first trial only, whose loss overflows (1 failure in 2 is within
    # max_failure_rate 0.5, so the search goes on)
    r = run(tmp_path, "+search=adam_lr", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler.seed=26",
            "style_weight=choice(1e4,1e38)", *TINY, "hydra.sweep.dir=out")
    assert r.returncode == 1  # a trial failed
    assert "nst: 1 trial(s) failed: optimizer.lr=" in r.stderr
    assert "Failed trial 0: " in r.stdout + r.stderr  # Optuna counted it as failed
    assert "alembic" not in r.stdout + r.stderr  # optuna's database layer keeps quiet
    s = trials(tmp_path / "out")
    assert [t["status"] for t in s] == ["failed", "completed", "completed", "completed"]
    assert s[0]["config"]["style_weight"] == 1e38 and "objective" not in s[0]
    # each ask's two trials ran as one batch
    assert [t["batch"]["size"] for t in s] == [2, 2, 2, 2] and len({t["batch"]["id"] for t in s}) == 2
    done = s[1:]
    assert all(t["config"]["optimizer"]["name"] == "adam" for t in done)
    assert all(t["objective"] == {"name": "final_loss", "value": t["final"]["total"]} for t in done)
    best = min(done, key=lambda t: t["objective"]["value"])
    found = OmegaConf.load(tmp_path / "out" / "optimization_results.yaml")
    assert found.best_value == best["objective"]["value"]
    assert found.best_params["optimizer.lr"] == best["config"]["optimizer"]["lr"]
    assert found.best_params["style_weight"] == best["config"]["style_weight"] == 1e4
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert table["objective"].isna().tolist() == [True, False, False, False]
    assert list(table["objective"][1:]) == [t["objective"]["value"] for t in done]
    assert_report(tmp_path / "out", ["failed", "completed", "completed", "completed"])
    assert (tmp_path / "out" / "objective.png").exists()
    assert "objective.png" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize("search, objective, searched", [
    ("adam_lr", "final_loss", {"optimizer.lr": "tag(log, interval(1e-3, 1.0))"}),
    ("style_weight_for_psnr", "style_swd_at_psnr", {"style_weight": "tag(log, interval(1e2, 1e8))"}),
])
def test_ready_searches(search, objective, searched):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from nst import compose

    compose.register_resolvers()
    with initialize_config_dir(config_dir=str(compose.CONF_DIR), version_base=compose.VERSION_BASE, job_name="nst"):
        cfg = hydra_compose(config_name="config", overrides=[f"+search={search}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.nst_sweeper.optuna_sweeper.NstOptunaSweeper"
    assert cfg.objective == objective and sweeper.params == searched and sweeper.direction == "minimize"
    assert sweeper.storage is None  # the journal file in the sweep folder
    assert (sweeper.n_trials, sweeper.n_jobs, sweeper.max_failure_rate, sweeper.sampler.seed) == (16, 4, 0.5, 0)
    assert cfg.optimizer.name == ("adam" if search == "adam_lr" else "lbfgs")
    assert cfg.hydra.launcher._target_.endswith("NstLauncher")
    assert "search" in cfg.hydra.job.config.override_dirname.exclude_keys


# ------------------------------------------------------------------------- settings and checks


def test_a_gpu_that_is_not_there_is_a_one_line_error_before_any_job(tmp_path):
    r = run(tmp_path, *FOUR, "hydra.launcher.gpus=[7]", "hydra.sweep.dir=out")
    assert r.returncode == 1
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        "hydra.launcher.gpus=[7]: GPU 7 is not visible here (no GPU is visible)",
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."]
    assert not (tmp_path / "out").exists()


def test_gpus_and_workers_settings():
    from hydra_plugins.nst_launcher.nst_launcher import (
        NstLauncherConfigError,
        check_gpus,
        check_workers,
        visible_gpus,
        worker_gpus,
    )

    two = ["0", "1"]
    assert check_gpus("auto", two) == two and check_gpus(1, two) == ["0"] and check_gpus([1], two) == ["1"]
    assert check_gpus([0, 0], two) == ["0", "0"]  # asked for: two workers on GPU 0
    assert check_gpus([1], ["2", "3"]) == ["3"]  # indices as this process numbers them (CUDA_VISIBLE_DEVICES=2,3)
    for value, message in [([7], "hydra.launcher.gpus=[7]: GPU 7 is not visible here (2 visible: 0, 1)"),
                           (3, "hydra.launcher.gpus=3: there are not that many GPUs here (2 visible: 0, 1)"),
                           ("all", "hydra.launcher.gpus must be 'auto', a number of GPUs or a list of GPU indices such "
                                   "as [0,1], got 'all'"),
                           ([], "hydra.launcher.gpus must be"), (True, "hydra.launcher.gpus must be")]:
        with pytest.raises(NstLauncherConfigError) as e:
            check_gpus(value, two)
        assert str(e.value).startswith(message)
    for value in (0, -1, 1.5, "2"):
        with pytest.raises(NstLauncherConfigError, match="hydra.launcher.workers must be null .one per GPU. or an integer >= 1"):
            check_workers(value)
    # (gpus, workers, GPUs picked) -> each worker's GPU, or None: batches run in this process
    assert worker_gpus("auto", None, []) is None  # no GPU: in this process, as ever
    assert worker_gpus("auto", None, ["0"]) is None  # one GPU: likewise
    assert worker_gpus("auto", None, two) == two  # one worker per GPU
    assert worker_gpus([1], None, ["1"]) == ["1"]  # a list pins, hence a worker
    assert worker_gpus("auto", 2, []) == ["", ""]  # CPU workers
    assert worker_gpus("auto", 3, two) == ["0", "1", "0"]  # asked for more workers than GPUs
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        assert visible_gpus() == []
    finally:
        del os.environ["CUDA_VISIBLE_DEVICES"]


def test_slurm_settings(monkeypatch, tmp_path):
    import importlib.util

    from hydra_plugins.nst_launcher.nst_launcher import NstLauncherConfigError, NstSlurmLauncherConf, check_slurm

    base = {k: v for k, v in vars(NstSlurmLauncherConf()).items() if k != "_target_"}
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    check_slurm({**base, "cluster": "local"})
    for change, message in [
        ({}, "hydra.launcher.cluster=slurm: no SLURM here (no `sbatch` on PATH); run this on the cluster's login node, "
             "or set hydra.launcher.cluster=local to try it on this machine"),
        ({"cluster": "pbs"}, "hydra.launcher.cluster must be 'slurm' or 'local', got 'pbs'"),
        ({"cluster": "local", "timeout_min": 0}, "hydra.launcher.timeout_min must be an integer >= 1, got 0"),
        ({"cluster": "local", "gpus_per_task": "one"}, "hydra.launcher.gpus_per_task must be an integer >= 0 or null, got 'one'"),
        ({"cluster": "local", "mem_gb": -1}, "hydra.launcher.mem_gb must be a number > 0 or null, got -1"),
        ({"cluster": "local", "setup": "module load cuda"}, "hydra.launcher.setup must be a list of shell lines"),
    ]:
        with pytest.raises(NstLauncherConfigError) as e:
            check_slurm({**base, **change})
        assert str(e.value).startswith(message)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else real(name, *a))
    needs = r"^hydra/launcher=slurm needs submitit: pip install '\.\[slurm\]' in a clone$"
    with pytest.raises(NstLauncherConfigError, match=needs):
        check_slurm({**base, "cluster": "local"})


@pytest.mark.parametrize("args, message", [
    (["-m", "hydra/sweeper=optuna", "style_weight=tag(log, interval(1e2, 1e8))"],
     "objective: a search (NstOptunaSweeper) minimises the trials' objective, and none is set: "
     "objective=final_loss | style_swd_at_psnr, or a ready search: +search=adam_lr (manual: docs/scaling-out.md)"),
    (["-m", "+search=adam_lr", "hydra.sweeper.sampler.name=grid"],
     "hydra.sweeper.sampler.name: unknown sampler 'grid'; allowed: tpe, random, cmaes"),
    (["-m", "+search=adam_lr", "content=nowhere.jpg"], "content: "),  # what every trial shares is checked up front
    (["objective=lowest_loss"], "objective: unknown objective 'lowest_loss'; allowed: null, final_loss, style_swd_at_psnr"),
])
def test_search_errors_before_any_trial(args, message):
    from nst import preflight
    from nst.errors import InputError

    with pytest.raises(InputError) as e:
        preflight.check([*args, "size=32", "logger=none"])
    assert str(e.value).startswith(message)


def test_optuna_missing_says_what_to_install(monkeypatch):
    import builtins

    from nst import compose, preflight
    from nst.errors import InputError

    e = compose.describe(Exception("In 'hydra/config': Could not find 'hydra/sweeper/optuna'\n\nAvailable options: basic"))
    assert str(e).startswith("hydra/sweeper: optuna needs the project's launcher plugins")
    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "optuna" else real(name, *a, **k))
    with pytest.raises(InputError, match=r"^hydra/sweeper: optuna needs Optuna: pip install '\.\[search\]' in a clone$"):
        preflight.check(["-m", "+search=adam_lr", "size=32", "logger=none"])


def test_objectives():
    from dataclasses import replace

    from nst.search import value
    from nst.summary import Summary

    s = Summary(final={"total": 12.5}, metrics={"psnr": 16.0, "style_swd": 0.3})
    assert value("final_loss", s, 15) == 12.5
    assert value("style_swd_at_psnr", s, 15) == 0.3
    missed = value("style_swd_at_psnr", replace(s, metrics={"psnr": 14.0, "style_swd": 1.0}), 15)
    worse = value("style_swd_at_psnr", replace(s, metrics={"psnr": 10.0, "style_swd": 1.0}), 15)
    assert 1e9 < missed < worse  # below the target: worse than any style distance, and worse the further below
    assert value("style_swd_at_psnr", replace(s, metrics={"psnr": math.inf, "style_swd": 5.0}), 15) == 5.0
