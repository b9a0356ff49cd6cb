import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clear_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def nst_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(NST_PROGRESS="0", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0",
               # anything W&B or torch.hub would write goes into the test's folder
               WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_CACHE_DIR=str(tmp / ".wandb-cache"),
               WANDB_DATA_DIR=str(tmp / ".wandb-data"), WANDB_CONFIG_DIR=str(tmp / ".wandb-config"),
               TORCH_HOME=str(tmp / ".torch"), WANDB_ERROR_REPORTING="false")
    env.pop("WANDB_API_KEY", None)
    return env


@pytest.fixture
def run_nst(tmp_path):
    """Run `python -m <module> args...` in a subprocess with tmp_path as the working folder."""

    def run(*args: str, module: str = "nst.run", timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=nst_env(tmp_path),
                              capture_output=True, text=True, timeout=timeout)

    return run
