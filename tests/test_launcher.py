"""The project's Hydra launcher plugin, `hydra/launcher=nst` (hydra_plugins/nst_launcher/).

Part 1: Hydra's own launcher test suites, run for this plugin (foreign apps, plain task functions:
the plugin must behave like Hydra's basic launcher). Part 2: batch mode with a toy app
(tests/launcher_app/toy_app.py, a BatchApp), mostly as real `-m` multiruns in subprocesses. Part 3:
the contract (contract.py) itself, and how the launcher's modules depend on one another. No torch.
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from hydra.test_utils.test_utils import SweepTaskFunction
from omegaconf import OmegaConf

# Module, not names: Hydra's plugin scan executes the module again, replacing its classes.
from hydra_plugins.nst_launcher import nst_launcher
from hydra_plugins.nst_launcher.contract import BatchApp

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "tests" / "launcher_app"
APP = APP_DIR / "toy_app.py"


# ---------------------------------------------------------------------------------------------
# Part 1: Hydra's suites (as Hydra's tests/test_basic_launcher.py runs them for the basic launcher)

@pytest.fixture(autouse=True)
def _unset_version_base():
    """Hydra's suites assume no version_base was set in this process (legacy chdir=True); other
    test files compose with version_base 1.3, which Hydra keeps in a process-wide singleton."""
    from hydra.version import _UNSPECIFIED_, VersionBase

    vb = VersionBase.instance()
    saved, vb.version_base = vb.version_base, _UNSPECIFIED_
    yield
    vb.version_base = saved


@pytest.mark.parametrize("launcher_name, overrides", [("nst", []), ("nst", ["hydra.launcher.max_batch=1"])])
class TestNstLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides",
                         [("nst", ["hydra/sweeper=basic", "hydra.sweeper.max_batch_size=2"])])
class TestNstLauncherBatchedSweeper(BatchedSweeperTestSuite):
    pass


# Subprocesses from temp folders: this only passes because the project is installed (pip install -e .).
@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [({}, ["-m", "hydra/launcher=nst"])])
class TestNstLauncherIntegration(IntegrationTestSuite):
    pass


def test_plugin_is_discovered_and_light(tmp_path):
    # By name: Hydra's scan executes plugin modules again, so classes imported before it are other objects.
    found = [f"{c.__module__}.{c.__qualname__}" for c in Plugins.instance().discover(Launcher)]
    assert "hydra_plugins.nst_launcher.nst_launcher.NstLauncher" in found
    # A hydra_plugins/__init__.py would hide every other installed plugin (namespace package).
    assert not (ROOT / "hydra_plugins" / "__init__.py").exists()
    assert (ROOT / "hydra_plugins" / "nst_launcher" / "__init__.py").exists()
    # Hydra imports the plugin modules in every app: they must not pull in torch or the launcher's core.
    code = ("import sys, hydra_plugins.nst_launcher.nst_launcher, hydra_plugins.nst_launcher.contract; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.endswith('nst_launcher._core')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("value", ["auto", 1, 16])
def test_max_batch_accepts(value):
    assert nst_launcher.check_max_batch(value) == value


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "3", "many", None, [2]])
def test_max_batch_rejects(value):
    with pytest.raises(nst_launcher.NstLauncherConfigError,
                       match=r"hydra\.launcher\.max_batch must be 'auto' or an integer >= 1, got "):
        nst_launcher.check_max_batch(value)


# ---------------------------------------------------------------------------------------------
# Part 2: batch mode with the toy app

def run_toy(tmp_path: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TOY_", "HYDRA_"))}
    full_env.update(PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, str(APP), "-m", *overrides], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=120)


def results(tmp_path: Path) -> dict:
    """job num -> the result.json it wrote."""
    return {int(p.parent.name): json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/result.json")}


def events(tmp_path: Path) -> list:
    lines = (tmp_path / "sweep" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def batches(res: dict) -> list:
    """The distinct batches the jobs saw, in order of their first job."""
    return sorted({tuple(r["batch"]) for r in res.values()})


def assert_error_for(out: subprocess.CompletedProcess, overrides: list, message: str) -> None:
    """Hydra's BasicSweeper re-raises the first failed JobReturn (in return order), exit 1."""
    assert out.returncode == 1, out.stderr
    assert f"Error executing job with overrides: {overrides}" in out.stderr
    assert message in out.stderr


def test_batches_group_by_key_chunk_by_max_batch_and_keep_per_job_state(tmp_path):
    out = run_toy(tmp_path, "hydra/launcher=nst", "hydra.launcher.max_batch=2", "x=1,2,3", "key=a,b", "fail_on=[b2]")
    # jobs: 0=a1 1=b1 2=a2 3=b2 4=a3 5=b3; groups a=[0,2,4] b=[1,3,5], cut at 2, run by first job
    assert "nst launcher: 6 jobs in 4 batches (max_batch=2)" in out.stdout
    assert "\t#3 : x=2 key=b fail_on=[b2]" in out.stdout
    for line in ["batch 1/4: jobs [0, 2]", "batch 2/4: jobs [1, 3]", "batch 3/4: jobs [4]", "batch 4/4: jobs [5]"]:
        assert line in out.stdout
    # job 3 failed by returning an exception; the others still ran; the sweep exits 1 like basic
    assert_error_for(out, ["x=2", "key=b", "fail_on=[b2]"], "ValueError: job 3 asked to fail")

    sweep = (tmp_path / "sweep").resolve()
    res = results(tmp_path)
    assert sorted(res) == [0, 1, 2, 3, 4, 5]
    assert batches(res) == [(0, 2), (1, 3), (4,), (5,)]
    for n, r in res.items():
        key, x = "ab"[n % 2], n // 2 + 1
        assert (r["key"], r["x"]) == (key, x)
        # inside activate(): HydraConfig, ${hydra:...} and env_set are this job's
        assert r["num_seen"] == n and r["env"] == f"job_{n}"
        assert Path(r["output_dir"]) == Path(r["out_interp"]) == sweep / str(n)
        assert Path(r["cwd"]) == tmp_path.resolve()  # chdir is false (version_base 1.3)
        assert n in r["batch"]
        hydra_dir = sweep / str(n) / ".hydra"
        assert OmegaConf.load(hydra_dir / "config.yaml").x == x
        hydra_yaml = OmegaConf.load(hydra_dir / "hydra.yaml").hydra
        assert hydra_yaml.job.num == n and Path(hydra_yaml.runtime.output_dir) == sweep / str(n)
        assert list(OmegaConf.load(hydra_dir / "overrides.yaml")) == [f"x={x}", f"key={key}", "fail_on=[b2]"]
        # each job's log file has its own lines, logged inside activate(), and nobody else's
        log_text = (sweep / str(n) / "toy_app.log").read_text()
        assert f"job {n}: inside activate, batch {r['batch']}" in log_text
        assert f"job {n}: finishing, HydraConfig={n}, TOY_ENV=job_{n}" in log_text
        assert all(f"job {m}:" not in log_text for m in range(6) if m != n)
        assert "outside activate" not in log_text
    # activate() inside activate(): the inner job's line goes to its file, then the outer job is back
    # (the "finishing" line of job 0 above: its HydraConfig, env and log file)
    assert "job 2: nested in job 0" in (sweep / "2" / "toy_app.log").read_text()
    assert "job 3: nested in job 1" in (sweep / "3" / "toy_app.log").read_text()
    # outside activate(): no job is current (HydraConfig unset), Hydra's console logging, no env_set
    assert "outside activate: batch [0, 2], HydraConfig=unset, TOY_ENV=None" in out.stdout

    ev = events(tmp_path)
    assert [(e["event"], e["num"]) for e in ev] == [
        ("start", 0), ("start", 2), ("end", 0), ("end", 2), ("start", 1), ("start", 3), ("end", 1), ("end", 3),
        ("start", 4), ("end", 4), ("start", 5), ("end", 5)]
    assert all(e["hc_num"] == e["num"] and e["env"] == f"job_{e['num']}" for e in ev)
    ends = {e["num"]: (e["status"], e["value"]) for e in ev if e["event"] == "end"}
    assert ends.pop(3) == ("FAILED", "ValueError('job 3 asked to fail')")
    assert ends == {n: ("COMPLETED", f"'ok-{n}'") for n in (0, 1, 2, 4, 5)}


def test_auto_uses_batch_size_per_group_and_returns_follow_job_order(tmp_path):
    out = run_toy(tmp_path, "hydra/launcher=nst", "x=1,2,3,4", "key=a,b", "fail_on=[b1,a3]")
    # jobs: 0=a1 1=b1 2=a2 3=b2 4=a3 5=b3 6=a4 7=b4; batch_size: a -> 3, b -> 2
    assert "nst launcher: 8 jobs in 4 batches (max_batch=auto)" in out.stdout
    assert batches(results(tmp_path)) == [(0, 2, 4), (1, 3), (5, 7), (6,)]
    calls = [json.loads(line) for line in (tmp_path / "batch_size_calls.jsonl").read_text().splitlines()]
    assert calls == [{"keys": ["a"] * 4, "xs": [1, 2, 3, 4]}, {"keys": ["b"] * 4, "xs": [1, 2, 3, 4]}]
    # job 4 failed before job 1 did (its batch ran first), but Hydra reports job 1: the first
    # failure in the returned list, which must be in job order, not in the order jobs ran.
    order = [e["num"] for e in events(tmp_path) if e["event"] == "end"]
    assert order.index(4) < order.index(1)
    assert_error_for(out, ["x=1", "key=b", "fail_on=[b1,a3]"], "ValueError: job 1 asked to fail")
    assert "ValueError: job 4 asked to fail" not in out.stderr


@pytest.fixture
def toy_module(monkeypatch, tmp_path):
    """The toy app imported in this process (its Recorder callback is `toy_app.Recorder`)."""
    monkeypatch.syspath_prepend(str(APP_DIR))
    monkeypatch.chdir(tmp_path)  # batch_size writes into the working folder
    monkeypatch.delenv("TOY_NO_HOOKS", raising=False)
    sys.modules.pop("toy_app", None)
    yield importlib.import_module("toy_app")
    sys.modules.pop("toy_app", None)


class BatchSweepTask(SweepTaskFunction, BatchApp):
    """Hydra's sweep runner (the `hydra_sweep_runner` fixture's) hands Hydra itself as the task
    function: as a BatchApp, it hands the launcher's calls on to the toy app it runs."""

    def run_batch(self, jobs):
        return self.task_function.run_batch(jobs)

    def batch_key(self, cfg):
        return self.task_function.batch_key(cfg)

    def batch_size(self, cfgs):
        return self.task_function.batch_size(cfgs)


def toy_sweep(toy_module, tmp_path, overrides):
    sweep = BatchSweepTask()
    sweep.calling_file, sweep.calling_module, sweep.task_function = str(APP), None, toy_module.ToyApp()
    sweep.config_path, sweep.config_name, sweep.overrides = "conf", "config", overrides
    sweep.temp_dir = str(tmp_path / "sweep")
    return sweep


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_job_returns_in_job_order_in_process(toy_module, tmp_path):
    sweep = toy_sweep(toy_module, tmp_path, ["hydra/launcher=nst", "x=1,2,3", "key=a,b"])
    with sweep:
        (returns,) = sweep.returns  # one launch() call
        assert [r.overrides for r in returns] == [[f"x={n // 2 + 1}", f"key={'ab'[n % 2]}"] for n in range(6)]
        assert [r.status for r in returns] == [JobStatus.COMPLETED] * 6
        assert [r.return_value for r in returns] == [f"ok-{n}" for n in range(6)]
        assert [r.hydra_cfg.hydra.job.num for r in returns] == list(range(6))
        assert [(r.cfg.key, r.cfg.x) for r in returns] == [("ab"[n % 2], n // 2 + 1) for n in range(6)]
        assert all(r.task_name == "toy_app" and r.working_dir == str(tmp_path) for r in returns)
        # batches ran as [0,2,4] [1,3] [5]: not the order of the list above
        assert batches(results(tmp_path)) == [(0, 2, 4), (1, 3), (5,)]
    assert "TOY_ENV" not in os.environ


@pytest.mark.usefixtures("hydra_restore_singletons")
@pytest.mark.parametrize("kind, exc", [("keyboard", KeyboardInterrupt), ("exit", SystemExit)])
def test_interrupt_propagates_after_restoring_hydra_state(toy_module, tmp_path, kind, exc):
    hydra_cfg_before = HydraConfig.instance().cfg
    sweep = toy_sweep(toy_module, tmp_path, ["hydra/launcher=nst", "x=1,2", f"interrupt={kind}"])
    with pytest.raises(exc):
        with sweep:
            pass
    # raised from inside job 0's activate(): nothing of the jobs' state is left behind
    assert HydraConfig.instance().cfg is hydra_cfg_before
    assert "TOY_ENV" not in os.environ
    assert Path.cwd() == tmp_path
    job_logs = [h for h in logging.getLogger().handlers if str(tmp_path / "sweep") in getattr(h, "baseFilename", "")]
    assert job_logs == []
    # not swallowed as a job failure: jobs started, none ended
    assert [(e["event"], e["num"]) for e in events(tmp_path)] == [("start", 0), ("start", 1)]


def test_failing_batch_function_fails_only_its_batch(tmp_path):
    out = run_toy(tmp_path, "hydra/launcher=nst", "x=1,2", "key=a,b", "crash_key=a")
    # batch [0, 2] (key a) raises and runs first; batch [1, 3] still runs
    assert "batch [0, 2] failed: RuntimeError('batch [0, 2] crashed')" in out.stdout
    assert_error_for(out, ["x=1", "key=a", "crash_key=a"], "RuntimeError: batch [0, 2] crashed")
    assert sorted(results(tmp_path)) == [1, 3]
    assert all((tmp_path / "sweep" / str(n) / ".hydra" / "config.yaml").exists() for n in range(4))
    ends = {e["num"]: (e["status"], e["value"]) for e in events(tmp_path) if e["event"] == "end"}
    crashed = ("FAILED", "RuntimeError('batch [0, 2] crashed')")
    assert ends == {0: crashed, 2: crashed, 1: ("COMPLETED", "'ok-1'"), 3: ("COMPLETED", "'ok-3'")}


def test_a_job_whose_files_cannot_be_written_fails_alone(tmp_path):
    # job 1's .hydra/ is taken by a file: its config cannot be saved (as on a full disk); it fails in
    # its place, the other jobs of its batch run, and no half-written file is left
    (tmp_path / "sweep" / "1").mkdir(parents=True)
    (tmp_path / "sweep" / "1" / ".hydra").write_text("not a folder")
    out = run_toy(tmp_path, "hydra/launcher=nst", "x=1,2,3")
    config = (tmp_path / "sweep" / "1" / ".hydra" / "config.yaml").resolve()
    assert_error_for(out, ["x=2"], f"JobNotStarted: File exists while writing {config}")
    assert batches(results(tmp_path)) == [(0, 2)]
    assert "Traceback" not in out.stderr.split("Error executing job")[0]
    assert not list((tmp_path / "sweep").rglob("*.tmp"))
    ends = {e["num"]: e["status"] for e in events(tmp_path) if e["event"] == "end"}
    assert ends == {0: "COMPLETED", 2: "COMPLETED"}  # a job that never started has no callbacks


def test_job_whose_batch_key_fails_runs_alone(tmp_path):
    out = run_toy(tmp_path, "hydra/launcher=nst", "x=1,2", "key=a,boom")
    assert out.returncode == 0, out.stderr
    assert "#1: batch_key failed (ValueError('no key for boom')); this job runs alone" in out.stdout
    assert batches(results(tmp_path)) == [(0, 2), (1,), (3,)]


@pytest.mark.parametrize("version_base, overrides, alone", [
    ("1.3", ["hydra.job.chdir=true"], True),
    ("1.1", [], True),  # chdir null means true before version_base 1.2
    ("1.1", ["hydra.job.chdir=false"], False),
])
def test_jobs_that_change_folder_run_alone(tmp_path, version_base, overrides, alone):
    out = run_toy(tmp_path, "hydra/launcher=nst", "x=1,2", *overrides, env={"TOY_VERSION_BASE": version_base})
    assert out.returncode == 0, out.stderr
    res = results(tmp_path)
    assert sorted(res) == [0, 1]
    if alone:
        assert batches(res) == [(0,), (1,)]
        assert all(Path(r["cwd"]) == (tmp_path / "sweep" / str(n)).resolve() for n, r in res.items())
    else:
        assert batches(res) == [(0, 1)]
        assert all(Path(r["cwd"]) == tmp_path.resolve() for r in res.values())


@pytest.mark.parametrize("launcher, env", [("nst", {"TOY_NO_HOOKS": "1"}), ("basic", {})],
                         ids=["nst-without-hooks", "basic-with-hooks"])
def test_each_job_alone_without_hooks_as_with_basic_launcher(tmp_path, launcher, env):
    out = run_toy(tmp_path, f"hydra/launcher={launcher}", "x=1,2", "key=a,b", "fail_on=[b1]", env=env)
    assert ("nst launcher: 4 jobs in 4 batches" in out.stdout) == (launcher == "nst")
    assert_error_for(out, ["x=1", "key=b", "fail_on=[b1]"], "ValueError: job 1 asked to fail")
    res = results(tmp_path)
    assert sorted(res) == [0, 1, 2, 3]
    assert all(r["batch"] == [n] and r["num_seen"] == n and r["env"] == f"job_{n}" for n, r in res.items())
    for n in range(4):
        assert f"job {n}: inside activate" in (tmp_path / "sweep" / str(n) / "toy_app.log").read_text()
    ev = events(tmp_path)
    assert [(e["event"], e["num"]) for e in ev] == [(s, n) for n in range(4) for s in ("start", "end")]
    assert [e["status"] for e in ev if e["event"] == "end"] == ["COMPLETED", "FAILED", "COMPLETED", "COMPLETED"]
    assert not (tmp_path / "batch_size_calls.jsonl").exists()


def test_bad_max_batch_is_a_one_line_error_before_any_job(tmp_path):
    out = run_toy(tmp_path, "hydra/launcher=nst", "hydra.launcher.max_batch=0", "x=1,2")
    assert out.returncode == 1
    # No traceback: the message, then the hint Hydra prints after every error.
    assert [line for line in out.stderr.splitlines() if line.strip()] == [
        "hydra.launcher.max_batch must be 'auto' or an integer >= 1, got 0",
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."]
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------------------------------------
# Part 3: the contract, and the launcher's modules

def composed(keys: list) -> list:
    """(hydra.job.num, full job config) for toy jobs with these keys, as the launcher plans them."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(APP_DIR / "conf"), version_base="1.3", job_name="toy_app"):
        return [(n, compose("config", overrides=[f"key={k}", f"x={n}"], return_hydra_config=True))
                for n, k in enumerate(keys)]


class Keyed(BatchApp):
    def run_batch(self, jobs):
        return [job.idx for job in jobs]

    def batch_key(self, cfg):
        return cfg.key


class Minimal(BatchApp):  # run_batch only: the other hooks keep the contract's defaults
    def run_batch(self, jobs):
        return [job.cfg.x for job in jobs]


def planned(task_function, items, max_batch="auto", **kw) -> list:
    from hydra_plugins.nst_launcher._core import plan_batches

    return [[idx for idx, _ in batch] for batch in plan_batches(task_function, items, max_batch, **kw)]


def test_only_an_app_that_implements_the_contract_gets_batches():
    items = composed(["a", "b", "a", "b"])

    def plain(cfg):
        return cfg.x

    plain.run_batch = lambda jobs: [None] * len(jobs)  # attributes on a function are not the contract
    assert planned(plain, items) == [[0], [1], [2], [3]]  # one job at a time, as the basic launcher
    assert planned(Keyed(), items) == [[0, 2], [1, 3]]
    assert planned(Keyed(), items, max_batch=1) == [[0], [1], [2], [3]]

    def sizer(hook, cfgs):
        raise AssertionError("an app that does not size its batches is not asked")

    # the defaults: any jobs may share a batch, of at most 8 under max_batch=auto
    assert planned(Minimal(), composed(["a", "b"] * 5), sizer=sizer) == [list(range(8)), [8, 9]]


def test_a_batch_app_called_for_one_job_runs_it_as_a_batch_of_one():
    class Echo(BatchApp):
        def run_batch(self, jobs):
            (job,) = jobs
            with job.activate() as current:
                return [ValueError("asked to fail") if current.cfg.fail else (current.idx, current.cfg.x)]

    assert Echo()(OmegaConf.create({"x": 3, "fail": False})) == (None, 3)  # no Hydra job: idx None
    with pytest.raises(ValueError, match="asked to fail"):  # how a task function fails its job
        Echo()(OmegaConf.create({"x": 3, "fail": True}))
    with pytest.raises(TypeError):
        BatchApp()  # run_batch is the one hook an app must have
    assert Minimal().lost_batch([1, 2], RuntimeError("gone"), 0.0)[1].args == ("gone",)


def test_a_sweeper_says_whether_it_reads_results():
    from hydra_plugins.nst_launcher.contract import reads_results

    def sweeper(target):
        return OmegaConf.create({"_target_": target})

    assert reads_results(sweeper("hydra_plugins.nst_sweeper.optuna_sweeper.NstOptunaSweeper"))
    assert not reads_results(sweeper("hydra._internal.core_plugins.basic_sweeper.BasicSweeper"))
    assert not reads_results(sweeper("nowhere.Sweeper"))
    assert not reads_results()  # no job is current: no sweeper


def test_an_app_defined_in_a_script_runs_in_worker_processes(tmp_path):
    # ToyApp lives in __main__: it travels to the workers by value (cloudpickle), its batch_size too
    out = run_toy(tmp_path, "hydra/launcher=nst", "hydra.launcher.workers=2", "x=1,2,3,4", "fail_on=[a4]")
    assert "nst launcher: 4 jobs in 2 batches (max_batch=auto) on 2 CPU worker processes" in out.stdout
    assert_error_for(out, ["x=4", "fail_on=[a4]"], "ValueError: job 3 asked to fail")
    res = results(tmp_path)
    assert batches(res) == [(0, 1), (2, 3)]  # batch_size says 3 for key a; two workers: halves
    assert len({r["env"] for r in res.values()}) == 4 and all(r["num_seen"] == n for n, r in res.items())
    calls = [json.loads(line) for line in (tmp_path / "batch_size_calls.jsonl").read_text().splitlines()]
    assert calls == [{"keys": ["a"] * 4, "xs": [1, 2, 3, 4]}]
    ends = {e["num"]: e["status"] for e in events(tmp_path) if e["event"] == "end"}
    assert ends == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED", 3: "FAILED"}


def test_an_app_defined_in_a_script_runs_in_slurm_tasks(tmp_path):
    pytest.importorskip("submitit")
    # A task starts as `python -m submitit...`: the script's folder is not on its path, and the
    # toy's callback (toy_app.Recorder) travels by name. The app itself travels by value.
    path = os.pathsep.join(filter(None, [str(APP_DIR), os.environ.get("PYTHONPATH")]))
    out = run_toy(tmp_path, "hydra/launcher=slurm", "hydra.launcher.cluster=local", "hydra.launcher.gpus_per_task=0",
                  "hydra.launcher.max_batch=2", "x=1,2,3", "key=a", env={"PYTHONPATH": path})
    assert out.returncode == 0, out.stderr
    assert "nst launcher: 3 jobs in 2 batches (max_batch=2) as local submitit tasks" in out.stdout
    assert batches(results(tmp_path)) == [(0, 1), (2,)]


def launcher_imports() -> dict:
    """module -> the launcher's own modules it imports, at the top or inside a function."""
    package = ROOT / "hydra_plugins" / "nst_launcher"
    names = {p.stem for p in package.glob("*.py")}
    graph = {}
    for path in package.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hydra_plugins.nst_launcher"):
                rest = node.module.split(".")[2:]
                found.update(rest[:1] if rest else [a.name for a in node.names])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("hydra_plugins.nst_launcher."))
        graph[path.stem] = found & names - {path.stem}
    return graph


def test_the_launchers_modules_import_one_another_in_one_direction():
    graph = launcher_imports()

    def cycle_from(module, path):
        if module in path:
            return path[path.index(module):] + [module]
        for other in sorted(graph[module]):
            found = cycle_from(other, path + [module])
            if found:
                return found
        return None

    for module in sorted(graph):
        cycle = cycle_from(module, [])
        assert cycle is None, f"import circle among the launcher's modules: {' -> '.join(cycle)}"
    # the contract and the private-API module stand on nothing of the launcher's
    assert graph["_contract"] == graph["_hydra_private"] == graph["_errors"] == set()
    assert graph["contract"] == {"_contract"}


@pytest.fixture
def sigint_handler():
    """Sets SIGINT's handler for a test and restores it after: a test run as a background job of a
    shell without job control starts with SIGINT ignored, not with Python's Ctrl-C handler."""
    import signal

    saved = signal.getsignal(signal.SIGINT)
    yield lambda handler: signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGINT, saved)


def test_ctrl_c_while_the_optuna_sweeper_asks_waits_for_the_owner_to_be_named(sigint_handler):
    import signal

    from hydra_plugins.nst_sweeper.optuna_sweeper import _ctrl_c_deferred

    sigint_handler(signal.default_int_handler)  # Python's own, as in a terminal
    done = []
    with pytest.raises(KeyboardInterrupt):
        with _ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("owner named")
    assert done == ["owner named"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_the_optuna_sweeper_asks_stays_ignored_where_the_command_ignores_it(sigint_handler):
    import signal

    from hydra_plugins.nst_sweeper.optuna_sweeper import _ctrl_c_deferred

    sigint_handler(signal.SIG_IGN)  # a command started as `nst ... &` from a script
    done = []
    with _ctrl_c_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("owner named")
    done.append("went on")
    assert done == ["owner named", "went on"] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
