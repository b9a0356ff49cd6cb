import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parent.parent
# precision=auto reads the CPU's bf16 units (bf16 on AMX-BF16 CPUs, fp32 elsewhere); the suite pins
# it to fp32 so that its figures do not depend on the CPU a run lands on (test_precision_auto
# overrides it). Subprocesses inherit it.
os.environ.setdefault("NST_CPU_BF16", "none")


def pytest_configure(config):
    """A CPU batch takes as many threads as cores are idle just before it (nst.device.cpu_threads):
    other tests running beside one would change its thread count, and with it its float rounding. The
    suite pins it (test_threads tests the rule): to the process's own count, or, where pytest-xdist
    starts workers (`make test`: one per core), to one thread for each worker and every subprocess it
    starts, so that they do not fight over the cores. Set here, before the workers start: they
    inherit this environment. A count set by the caller wins."""
    workers = getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER")
    os.environ.setdefault("NST_CPU_THREADS", "1" if workers else str(len(os.sched_getaffinity(0))))
    if workers:
        os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seeded():
    """Every test draws its random tensors from the same seed, so a failure reproduces on a rerun."""
    import torch

    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _clear_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def metrics_apart(a: dict, b: dict, rel: float = 0.02) -> list[tuple]:
    """The standardised metrics on which two summaries' `metrics` differ by more than `rel` (relative, plus
    1e-6: a term exactly 0 alone can be 1e-8 in a batch); a coarse style scale skipped (None) must be
    skipped in both. [] when they agree."""
    out = []
    for key in a.keys() | b.keys():
        x, y = a.get(key), b.get(key)
        if x is None or y is None:
            if x is not y:
                out.append((key, x, y))
        elif not abs(x - y) <= rel * max(abs(x), abs(y)) + 1e-6:
            out.append((key, x, y))
    return out


def nst_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(NST_PROGRESS="0", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0",
               # anything W&B or torch.hub would write goes into the test's folder
               WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_CACHE_DIR=str(tmp / ".wandb-cache"),
               WANDB_DATA_DIR=str(tmp / ".wandb-data"), WANDB_CONFIG_DIR=str(tmp / ".wandb-config"),
               TORCH_HOME=str(tmp / ".torch"), WANDB_ERROR_REPORTING="false")
    env.pop("WANDB_API_KEY", None)
    return env


def run_in(cwd: Path, *args: str, module: str = "nst.run", timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m <module> args...` in a subprocess with `cwd` as the working folder."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=nst_env(cwd),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_nst(tmp_path):
    """Run `python -m <module> args...` in a subprocess with tmp_path as the working folder."""

    def run(*args: str, module: str = "nst.run", timeout: int = 600) -> subprocess.CompletedProcess:
        return run_in(tmp_path, *args, module=module, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def failing_trial_sweep(tmp_path_factory):
    """One real sweep, with the default logger (W&B offline), whose first trial fails (a style weight
    beyond float32's range: its loss becomes inf at the first evaluation) and whose second completes:
    (its folder, the finished process). Read, never changed, by the tests of what a failed trial leaves
    (test_cli, test_sweeps, test_wandb, test_report_browser)."""
    cwd = tmp_path_factory.mktemp("failing_trial_sweep")
    r = run_in(cwd, "-m", "style_weight=1e39,1e5", "device=cpu", "size=32", "steps=4", "frame_every=2")
    (sweep,) = list((cwd / "outputs" / "sweeps").iterdir())
    return sweep, r


@pytest.fixture(scope="session")
def style_weight_sweep(tmp_path_factory):
    """One real three-trial sweep of the style weight, with the default logger (W&B offline) and an
    objective (as a search's trials have):
    (its folder, the finished process, `ps -eo args` just after it ended). Read, never changed, by
    test_cli (a folder per trial, the style loss falls as the weight rises) and test_wandb (the
    trials' and the aggregate's W&B runs)."""
    cwd = tmp_path_factory.mktemp("style_weight_sweep")
    r = run_in(cwd, "-m", "style_weight=1e2,1e4,1e6", "size=32", "steps=6", "frame_every=3", "device=cpu",
               "objective=final_loss")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    (sweep,) = list((cwd / "outputs" / "sweeps").iterdir())
    return sweep, r, ps
