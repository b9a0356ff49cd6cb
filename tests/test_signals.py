"""Signals (docs/reliability.md, "Signals"): SIGTERM and SIGHUP end a command as Ctrl-C does (one line, exit code
128 + the signal, the running trials left for resume to run again), its worker processes and local
SLURM tasks are stopped before it exits, and a command killed outright (SIGKILL) takes its workers
with it. Real commands in subprocesses (CPU, 32 px); then the SLURM runner's cancel, in this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import nst_env
from helpers import summary

# 100 evaluations of a 32 px batch (style from conv1_1 alone) take seconds on the CPU: a signal sent
# as the first rows are logged finds the batch running, and running it again is quick.
SLOW = ["size=32", "steps=100", "layers=style1", "device=cpu", "logger=none"]
# With two workers: one batch of one trial each (one worker may start seconds after the other, and
# its companion's trial then be done: the tests allow for that).
TWO = ["style_weight=1e3,1e5", *SLOW]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")


def env(tmp: Path) -> dict:
    # two workers share this machine's cores: one thread each (not the suite's pinned count each)
    return {**nst_env(tmp), "NST_CPU_THREADS": "1"}


def default_signals() -> None:
    """In the child before it runs: SIGINT, SIGTERM and SIGHUP at their defaults, whatever this test
    process inherited (nohup, a background job), since the command keeps an ignored signal ignored."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def start(tmp: Path, *args: str) -> subprocess.Popen:
    """`python -m nst.run -m args` in its own session (a signal to it reaches nothing else), with
    SIGINT, SIGTERM and SIGHUP at their defaults whatever this test process inherited (nohup, a
    background job)."""
    return subprocess.Popen([sys.executable, "-m", "nst.run", "-m", *args, "hydra.sweep.dir=out"], cwd=tmp,
                            env=env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_signals)


@contextmanager
def started(tmp: Path, *args: str) -> Iterator[subprocess.Popen]:
    """The command started (`start`); its whole process group killed if it is still there at the end,
    so that a failing test leaves no process behind."""
    proc = start(tmp, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def rerun(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nst.run", "-m", *args, "hydra.sweep.dir=out"], cwd=tmp,
                          env=env(tmp), capture_output=True, text=True, timeout=300)


def parents() -> dict[int, int]:
    """pid -> parent pid, for every process there is."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def descendants(pid: int) -> dict[int, str]:
    """Every process below pid: its command line."""
    tree, found, todo = parents(), {}, [pid]
    while todo:
        p = todo.pop()
        for child, parent in tree.items():
            if parent == p and child not in found:
                try:
                    found[child] = (Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
                except OSError:
                    continue
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.1)


def optimising(sweep: Path, *nums: int) -> bool:
    """The trials with these job numbers have logged an evaluation."""
    return all(any(m.stat().st_size > 0 for m in sweep.glob(f"{n}_*/metrics.jsonl")) for n in nums)


def files(sweep: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in sweep.rglob("*") if p.is_file()}


def assert_one_line(err: str, name: str, sweep: Path) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"nst: interrupted by {name}; the trials that were running were left unfinished"), err
    assert f"run the same command with hydra.sweep.dir=<its folder> ({sweep.resolve()})" in lines[0]
    assert "Traceback" not in err


def assert_nothing_writes(sweep: Path) -> None:
    before = files(sweep)
    time.sleep(1.5)
    assert files(sweep) == before, "something still writes into the sweep"


def assert_left_for_resume(sweep: Path) -> int:
    """Every trial either completed or left no summary.json and no final.png (and no half file);
    at least one was left. Returns how many completed."""
    trials = sorted(d for d in sweep.iterdir() if (d / ".hydra").is_dir())
    done = [d for d in trials if (d / "summary.json").exists()]
    assert all(summary(d)["status"] == "completed" for d in done)
    left = [d for d in trials if d not in done]
    assert left and all(not (d / "final.png").exists() for d in left)
    assert not list(sweep.rglob("*.tmp"))
    return len(done)


def stop_while_optimising(tmp: Path, args: list[str], nums: tuple[int, ...], what: str, sig: int | None,
                          look=lambda pid: None):
    """Start the command, wait until trials `nums` optimise, `look(pid)` at it (what a test wants of its
    children, asserted there), then send `sig` (None: SIGKILL, which the command cannot handle) and wait
    for it to end; its process group is killed if it does not. -> (the process, its stderr, what look gave)."""
    sweep = tmp / "out"
    with started(tmp, *args) as proc:
        wait_for(lambda: optimising(sweep, *nums) or proc.poll() is not None, 120, what)
        assert proc.poll() is None, proc.communicate()
        seen = look(proc.pid)
        if sig is None:
            proc.kill()
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    return proc, err, seen


def assert_resumes_to_completion(tmp: Path, args: list[str], completed: int = 0) -> None:
    """The same command again finishes the sweep: its two trials completed, the finished ones resumed."""
    r = rerun(tmp, *args)
    assert r.returncode == 0, r.stderr
    assert completed == 0 or f"resumed: {completed} trial(s)" in r.stdout
    sweep = tmp / "out"
    assert [summary(d)["status"] for d in sorted(sweep.glob("*_*")) if (d / ".hydra").is_dir()] == ["completed"] * 2


def workers_in(children: dict[int, str]) -> list[int]:
    """The worker processes (multiprocessing's spawned children) among a command's descendants."""
    return [p for p, c in children.items() if "spawn_main" in c]


def test_sigterm_stops_a_two_worker_sweep_and_no_worker_outlives_it(tmp_path):
    args = [*TWO, "hydra.launcher.workers=2"]
    sweep = tmp_path / "out"

    def look(pid):  # both workers are running their batch ([0] and [1])
        children = descendants(pid)  # the workers, and multiprocessing's resource tracker
        workers = workers_in(children)
        assert len(workers) == 2, children
        return children, workers

    proc, err, (children, workers) = stop_while_optimising(tmp_path, args, (0, 1), "the batches never started",
                                                           signal.SIGTERM, look)
    assert proc.returncode == 143, err
    assert_one_line(err, "SIGTERM", sweep)
    assert not [p for p in workers if alive(p)], "a worker outlived its command"
    wait_for(lambda: not any(alive(p) for p in children), 3, "a child process outlived its command")
    assert_nothing_writes(sweep)
    assert_resumes_to_completion(tmp_path, args, assert_left_for_resume(sweep))


def test_sighup_stops_a_single_process_sweep(tmp_path):
    args = ["style_weight=1e3,1e5", *SLOW]
    sweep = tmp_path / "out"
    proc, err, _ = stop_while_optimising(tmp_path, args, (0,), "the batch never started", signal.SIGHUP)
    assert proc.returncode == 129, err
    assert_one_line(err, "SIGHUP", sweep)
    assert assert_left_for_resume(sweep) == 0  # the two trials ran as one batch
    assert_resumes_to_completion(tmp_path, args)


def test_sigterm_cancels_local_slurm_tasks_before_the_command_exits(tmp_path):
    args = ["style_weight=1e3,1e5", *SLOW, "hydra/launcher=slurm", "hydra.launcher.cluster=local",
            "hydra.launcher.max_batch=1"]
    sweep = tmp_path / "out"

    def look(pid):
        tasks = descendants(pid)  # each task's controller and the task itself
        assert len([c for c in tasks.values() if "submitit.core._submit" in c]) == 2, tasks
        return tasks

    proc, err, tasks = stop_while_optimising(tmp_path, args, (0, 1), "the tasks never started", signal.SIGTERM, look)
    assert proc.returncode == 143, err
    assert_one_line(err, "SIGTERM", sweep)
    assert not [p for p in tasks if alive(p)], "a task outlived its command"
    assert assert_left_for_resume(sweep) == 0
    # the tasks' logs say why they ended; no folder named after submitit's "%j" template is left
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and all("stopped by SIGTERM" in p.read_text() for p in logs)
    assert sorted(p.name for p in (sweep / ".submitit").iterdir() if "%" in p.name) == []


def test_a_killed_command_takes_its_workers_with_it(tmp_path):
    sweep = tmp_path / "out"

    def look(pid):
        workers = workers_in(descendants(pid))
        assert len(workers) == 2
        return workers

    _, _, workers = stop_while_optimising(tmp_path, [*TWO, "hydra.launcher.workers=2"], (0, 1),
                                          "the batches never started", None, look)  # SIGKILL
    wait_for(lambda: not any(alive(p) for p in workers), 3, "a worker outlived its killed command")
    assert_nothing_writes(sweep)
    assert_left_for_resume(sweep)


# ------------------------------------------------------------------------------ SLURM, here


class FakeSlurmJob:
    """What the SLURM runner uses of submitit's SlurmJob: job_id, paths.folder, done(), cancel()."""

    cancelled: list = []

    def __init__(self, folder, job_id: str) -> None:
        self.job_id = job_id
        self.paths = type("Paths", (), {"folder": Path(folder)})()

    def done(self) -> bool:
        return False

    def cancel(self, check: bool = True) -> None:
        FakeSlurmJob.cancelled.append((self.job_id, check))


def test_the_slurm_runner_cancels_each_job_array_once_when_the_command_stops(tmp_path):
    pytest.importorskip("submitit")
    from hydra_plugins.nst_launcher._slurm import SlurmRunner

    runner = SlurmRunner({"cluster": "slurm", "array_parallelism": 16}, hydra_context=None, task_function=None)
    FakeSlurmJob.cancelled = []
    runner.stop()  # nothing submitted: nothing to cancel
    assert FakeSlurmJob.cancelled == []
    runner.jobs = [FakeSlurmJob(tmp_path / f"4242_{i}", f"4242_{i}") for i in range(3)] + [FakeSlurmJob(tmp_path, "4250_0")]
    runner.stop()
    # `scancel 4242` and `scancel 4250`, without waiting on SLURM's answer
    assert FakeSlurmJob.cancelled == [("4242", False), ("4250", False)]


def test_sigterm_while_the_optuna_sweeper_asks_waits_for_the_owner_to_be_named():
    # as Ctrl-C does (test_launcher), where the command handles SIGTERM (nst.run's main)
    from hydra_plugins.nst_sweeper.optuna_sweeper import _ctrl_c_deferred

    got, done = [], []

    def handler(signum, frame):
        got.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with _ctrl_c_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("owner named")
        assert done == ["owner named"] and got == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------ repeats, the report, a dead worker


class Output:
    """A process's stdout and stderr lines, each with the time it arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[float, str, str]] = []
        self.threads = [threading.Thread(target=self._read, args=(f, name), daemon=True)
                        for f, name in ((proc.stdout, "out"), (proc.stderr, "err"))]
        for t in self.threads:
            t.start()

    def _read(self, f, name: str) -> None:
        for line in f:
            self.lines.append((time.time(), name, line.rstrip("\n")))

    def close(self) -> None:
        for t in self.threads:
            t.join(30)

    def text(self, name: str) -> str:
        return "\n".join(line for _, n, line in self.lines if n == name)


@pytest.mark.parametrize("logger, gap", [("none", 0.05), ("wandb", 0.3)])
def test_a_second_ctrl_c_is_ignored_however_soon_it_comes(tmp_path, logger, gap):
    # Ctrl-C reaches every process of the terminal's group (W&B's service too), twice, `gap` s apart;
    # the second used to find Python shutting down with its default handler back: exit -2.
    args = ["style_weight=1e3,1e5", *[a for a in SLOW if not a.startswith("logger=")], f"logger={logger}"]
    sweep = tmp_path / "out"
    with started(tmp_path, *args) as proc:
        output = Output(proc)
        wait_for(lambda: optimising(sweep, 0) or proc.poll() is not None, 120, "the batch never started")
        assert proc.poll() is None, output.text("err")
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(gap)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        ended = time.time()
        output.close()
    assert proc.returncode == 130, output.text("err")
    assert_one_line(output.text("err"), "SIGINT (Ctrl-C)", sweep)
    # nothing (W&B's lines included) is printed once the command has exited
    assert [line for t, _, line in output.lines if t > ended + 0.2] == []
    assert assert_left_for_resume(sweep) == 0


# Loaded at the command's start (PYTHONPATH): when a batch's trials have ended, Ctrl-C arrives while
# the main thread is in a __del__, where Python swallows the KeyboardInterrupt the handler raises.
SWALLOWING_SITE = """
import os, signal, time
import nst.engine

class _Lost:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.time() + 5
        while time.time() < deadline:  # the handler runs here, between two bytecodes
            pass

_run_together = nst.engine.run_together

def run_together(trials):
    summaries = _run_together(trials)
    if not os.path.exists(os.environ["NST_TEST_SENT"]):
        open(os.environ["NST_TEST_SENT"], "w").close()
        _Lost()  # deleted at once
    return summaries

nst.engine.run_together = run_together

# With worker processes (NST_TEST_POOL): the launching process is the one that swallows it, as it hands
# the second batch to the worker (the workers never see that Ctrl-C).
if os.environ.get("NST_TEST_POOL"):
    import hydra_plugins.nst_launcher._pool as pool

    _dump_batch, _calls = pool.dump_batch, []

    def dump_batch(*args, **kwargs):
        _calls.append(1)
        if len(_calls) == 2 and not os.path.exists(os.environ["NST_TEST_SENT"]):
            open(os.environ["NST_TEST_SENT"], "w").close()
            _Lost()
        return _dump_batch(*args, **kwargs)

    pool.dump_batch = dump_batch
    nst.engine.run_together = _run_together
"""


@pytest.mark.parametrize("batches, pool", [(1, False), (2, False), (2, True)])
def test_a_ctrl_c_python_swallows_still_stops_the_command(tmp_path, batches, pool):
    # One batch: the trials had ended, so the command stops once the report is written (130, "after every
    # trial had ended"). Two batches: the second batch's first step stops it, its trial left for resume.
    # Two batches on one worker process: the launching process, waiting for the worker, stops it.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SWALLOWING_SITE)
    env_ = {**env(tmp_path), "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p),
            "NST_TEST_SENT": str(tmp_path / "sent"), **({"NST_TEST_POOL": "1"} if pool else {})}
    args = ["style_weight=1e3,1e5", "size=32", f"steps={300 if pool else 20}", "device=cpu", "logger=none",
            f"hydra.launcher.max_batch={2 // batches}", *(["hydra.launcher.workers=1"] if pool else [])]
    proc = subprocess.run([sys.executable, "-m", "nst.run", "-m", *args, "hydra.sweep.dir=out"], cwd=tmp_path, env=env_,
                          capture_output=True, text=True, timeout=300, preexec_fn=default_signals)
    sweep = tmp_path / "out"
    assert (tmp_path / "sent").exists(), proc.stderr
    assert proc.returncode == 130, proc.stderr
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if batches == 1:
        assert len(lines) == 1 and lines[0].startswith("nst: stopped by SIGINT (Ctrl-C) after every trial had ended"), proc.stderr
        assert (sweep / "report.html").is_file()
    else:
        assert_one_line(proc.stderr, "SIGINT (Ctrl-C)", sweep)
        # the first batch's trial completed; the second's was stopped, or (in this process, stopped
        # before the batch began) never started: either way nothing of it claims to be done
        done = [d for d in sweep.iterdir() if (d / "summary.json").exists()]
        assert [summary(d)["status"] for d in done] == ["completed"]
        assert not [d for d in sweep.iterdir() if (d / "final.png").exists() and d not in done]


def test_sigterm_while_the_report_is_written_leaves_it_whole_and_says_no_trial_was_running(tmp_path):
    sweep = tmp_path / "out"
    with started(tmp_path, "style_weight=1e3,1e5", "size=32", "steps=2", "device=cpu", "logger=none") as proc:
        # results.csv is the report's first file; grid.png, curves.png and report.html follow it
        wait_for(lambda: (sweep / "results.csv").exists() or proc.poll() is not None, 180, "no report was started")
        assert proc.poll() is None, "the command ended before the signal could be sent"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nst: stopped by SIGTERM after every trial had ended"), err
    assert "were running" not in err and "Traceback" not in err
    assert all((sweep / name).is_file() for name in ("results.csv", "grid.png", "curves.png", "report.html"))
    assert "2 trials" in (sweep / "report.html").read_text() and not list(sweep.rglob("*.tmp"))
    assert [summary(d)["status"] for d in sorted(sweep.glob("*_*")) if (d / ".hydra").is_dir()] == ["completed"] * 2


def test_a_worker_killed_outright_is_one_line_without_multiprocessing_warnings(tmp_path):
    args = [*TWO, "hydra.launcher.workers=2"]
    sweep = tmp_path / "out"
    with started(tmp_path, *args) as proc:
        wait_for(lambda: optimising(sweep, 0, 1) or proc.poll() is not None, 120, "the batches never started")
        workers = workers_in(descendants(proc.pid))
        assert proc.poll() is None and len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "worker process died (killed by SIGKILL)" in lines[0], err
    assert "leaked" not in err + out and "resource_tracker" not in err + out and "Traceback" not in err + out
