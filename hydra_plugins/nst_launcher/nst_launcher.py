"""`hydra/launcher=nst`: runs compatible jobs of a sweep as one batch (see `_core.py`).

Hydra imports this module in every app of the environment, so it stays light: the config schema,
its registration, and a Launcher whose work is imported only when a sweep uses it.
"""

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction


@dataclass
class NstLauncherConf:
    _target_: str = "hydra_plugins.nst_launcher.nst_launcher.NstLauncher"
    # Most jobs per batch: "auto" (the task function's `batch_size` hook, else 8) or an integer >= 1.
    max_batch: Any = "auto"


ConfigStore.instance().store(group="hydra/launcher", name="nst", node=NstLauncherConf, provider="nst")


class NstLauncherConfigError(CompactHydraException, ValueError):
    """A bad launcher setting. Compact: Hydra prints only the message, one line."""


def check_max_batch(value: Any) -> Any:
    # `type(...) is int` on purpose: bool is an int subclass, and max_batch=true is a mistake.
    if value == "auto" or (type(value) is int and value >= 1):
        return value
    raise NstLauncherConfigError(f"hydra.launcher.max_batch must be 'auto' or an integer >= 1, got {value!r}")


class NstLauncher(Launcher):
    def __init__(self, max_batch: Any = "auto") -> None:
        super().__init__()
        self.max_batch = max_batch
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # Checked here, not in __init__: Hydra wraps errors raised while instantiating into a
        # multi-line message, and setup() still runs before the sweep starts any job.
        check_max_batch(self.max_batch)
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        return _core.launch(self.hydra_context, self.task_function, self.config, self.max_batch,
                            job_overrides, initial_job_idx)
