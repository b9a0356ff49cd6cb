"""`hydra/launcher=nst` and `hydra/launcher=slurm`: run compatible jobs of a sweep as one batch
(see `_core.py`), in this process, in one worker process per GPU (`_pool.py`), or as the tasks of a
SLURM job array through submitit (`_slurm.py`). An app offers batches through `contract.py`.

Hydra imports this module in every app of the environment, so it stays light: the config schemas,
their registration, the checks of the settings, and a Launcher whose work is imported only when a
sweep uses it. The launcher's modules import one another in one direction only: this one picks the
runner and hands it to `_core`; `_pool` and `_slurm` use `_core`; `_core` uses `contract` and
`_hydra_private` (the only module that touches Hydra's private API).
"""

import glob
import importlib.util
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from ._errors import NstLauncherConfigError


@dataclass
class NstLauncherConf:
    _target_: str = "hydra_plugins.nst_launcher.nst_launcher.NstLauncher"
    # Most jobs per batch: "auto" (the app's `batch_size`, else 8) or an integer >= 1.
    max_batch: Any = "auto"
    # The GPUs batches are dealt to: "auto" (every visible one), a count (the first N) or a list of
    # indices (as this process numbers them). One worker process per GPU, each seeing only its own;
    # with one GPU or none (and no `workers`), batches run in this process.
    gpus: Any = "auto"
    # Worker processes: null (one per GPU) or a number, dealt over the GPUs in turn (more workers
    # than GPUs share them: ask for it only if one batch leaves a GPU idle); without GPUs, CPU workers.
    workers: Any = None


@dataclass
class NstSlurmLauncherConf:
    _target_: str = "hydra_plugins.nst_launcher.nst_launcher.NstLauncher"
    max_batch: Any = "auto"
    # slurm: one task of a SLURM job array per batch | local: submitit's local executor (the same
    # code path, as processes on this machine: for trying it out and for tests)
    cluster: str = "slurm"
    partition: str | None = None
    gpus_per_task: Any = 1
    cpus_per_task: Any = 8
    mem_gb: Any = 32
    timeout_min: Any = 120
    array_parallelism: Any = 16  # array tasks running at once (--array=0-N%P)
    max_num_timeout: Any = 3  # requeues after a time-out; a preempted task is always requeued
    setup: list[str] = field(default_factory=list)  # shell lines before the task (module load, venv)
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # any other sbatch option
    submitit_folder: str = "${hydra.sweep.dir}/.submitit/%j"  # scripts and logs, beside the sweep
    name: str = "${hydra.job.name}"


ConfigStore.instance().store(group="hydra/launcher", name="nst", node=NstLauncherConf, provider="nst")
ConfigStore.instance().store(group="hydra/launcher", name="slurm", node=NstSlurmLauncherConf, provider="nst")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _is_int(value: Any, least: int) -> bool:
    # `type(...) is int` on purpose: bool is an int subclass, and max_batch=true is a mistake.
    return type(value) is int and value >= least


def check_max_batch(value: Any) -> Any:
    if value == "auto" or _is_int(value, 1):
        return value
    raise NstLauncherConfigError(f"hydra.launcher.max_batch must be 'auto' or an integer >= 1, got {value!r}")


def visible_gpus() -> list[str]:
    """This process's GPUs, in its numbering, as the CUDA_VISIBLE_DEVICES entry a worker gets for each."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip() in ("", "-1"):
        return []
    # No NVIDIA device node: no GPU, and no need to import torch (apps without torch use this launcher too).
    if not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/proc/driver/nvidia/version"):
        return []
    try:
        import torch

        count = torch.cuda.device_count()  # no CUDA context is created in this process
    except Exception:  # noqa: BLE001 - no usable CUDA here
        return []
    if env is not None:
        return [e.strip() for e in env.split(",")][:count]
    return [str(i) for i in range(count)]


def check_gpus(value: Any, visible: list[str]) -> list[str]:
    """The CUDA_VISIBLE_DEVICES entries of the GPUs `hydra.launcher.gpus` picks."""
    value = _plain(value)
    shown = f"{len(visible)} visible: {', '.join(map(str, range(len(visible))))}" if visible else "no GPU is visible"
    if value == "auto":
        return list(visible)
    if _is_int(value, 0):
        if value > len(visible):
            raise NstLauncherConfigError(f"hydra.launcher.gpus={value}: there are not that many GPUs here ({shown})")
        return visible[:value]
    if isinstance(value, list) and value and all(_is_int(i, 0) for i in value):
        missing = [i for i in value if i >= len(visible)]
        if missing:
            raise NstLauncherConfigError(f"hydra.launcher.gpus={value}: GPU {missing[0]} is not visible here ({shown})")
        return [visible[i] for i in value]
    raise NstLauncherConfigError(
        f"hydra.launcher.gpus must be 'auto', a number of GPUs or a list of GPU indices such as [0,1], got {value!r}")


def check_workers(value: Any) -> int | None:
    if value is None or _is_int(value, 1):
        return value
    raise NstLauncherConfigError(f"hydra.launcher.workers must be null (one per GPU) or an integer >= 1, got {value!r}")


def worker_gpus(gpus: Any, workers: int | None, picked: list[str]) -> list[str] | None:
    """The GPU of each worker process ("" for none), or None: batches run in this process.

    Without `workers`: one worker per picked GPU; with one GPU or none picked by "auto" or a count,
    this process (it sees that GPU first anyway). A list of indices always pins, so it always uses workers.
    """
    if workers is None:
        if len(picked) <= 1 and not isinstance(_plain(gpus), list):
            return None
        return list(picked)
    if not picked:
        return [""] * workers  # CPU workers, no GPU visible to them
    return [picked[i % len(picked)] for i in range(workers)]


def check_target(target: Any) -> None:
    """hydra.launcher._target_ must name a Launcher class: Hydra calls whatever it names (a function,
    say, whose refusal of the launcher's settings it then reports in twenty lines)."""
    import importlib

    parts, found = str(target).split("."), None
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module, then attributes
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except Exception:  # noqa: BLE001 - not a module (or a broken one): try a shorter prefix
            continue
        for name in parts[cut:]:
            found = getattr(found, name, None)
        break
    if not (isinstance(found, type) and issubclass(found, Launcher)):
        raise NstLauncherConfigError(f"'{target}' is not a Hydra launcher class; choose a launcher with "
                                     "hydra/launcher=nst, slurm or basic")


_SLURM_NUMBERS = {  # key: (least value, may be null)
    "gpus_per_task": (0, True), "cpus_per_task": (1, True), "timeout_min": (1, False),
    "array_parallelism": (1, False), "max_num_timeout": (0, False),
}


def check_slurm(params: dict[str, Any]) -> None:
    cluster = params.get("cluster")
    if cluster not in ("slurm", "local"):
        raise NstLauncherConfigError(f"hydra.launcher.cluster must be 'slurm' or 'local', got {cluster!r}")
    if importlib.util.find_spec("submitit") is None:
        raise NstLauncherConfigError("hydra/launcher=slurm needs submitit: pip install '.[slurm]' in a clone")
    for key, (least, nullable) in _SLURM_NUMBERS.items():
        value = params.get(key)
        if not (_is_int(value, least) or (nullable and value is None)):
            allowed = f"an integer >= {least}" + (" or null" if nullable else "")
            raise NstLauncherConfigError(f"hydra.launcher.{key} must be {allowed}, got {value!r}")
    mem = params.get("mem_gb")
    if mem is not None and (type(mem) not in (int, float) or mem <= 0):
        raise NstLauncherConfigError(f"hydra.launcher.mem_gb must be a number > 0 or null, got {mem!r}")
    setup = _plain(params.get("setup"))
    if not isinstance(setup, list) or not all(isinstance(line, str) for line in setup):
        raise NstLauncherConfigError(f"hydra.launcher.setup must be a list of shell lines, got {setup!r}")
    if not isinstance(_plain(params.get("additional_parameters")), dict):
        raise NstLauncherConfigError("hydra.launcher.additional_parameters must be a mapping of sbatch options, "
                                     f"got {params.get('additional_parameters')!r}")
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if cluster == "slurm" and missing:
        raise NstLauncherConfigError(f"hydra.launcher.cluster=slurm: no SLURM here (no `{missing[0]}` on PATH); run this on "
                                     "the cluster's login node, or set hydra.launcher.cluster=local to try it on this machine")


class NstLauncher(Launcher):
    def __init__(self, max_batch: Any = "auto", **params: Any) -> None:
        super().__init__()
        self.max_batch = max_batch
        self.params = params  # nst: gpus, workers; slurm: cluster and the submitit settings
        self.workers: list[str] | None = None  # the GPU of each worker process, once set up
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    @property
    def cluster(self) -> str | None:
        return self.params.get("cluster")

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # Checked here, not in __init__: Hydra wraps errors raised while instantiating into a
        # multi-line message, and setup() still runs before the sweep starts any job.
        check_max_batch(self.max_batch)
        if self.cluster is not None:
            check_slurm(self.params)
        else:
            gpus = self.params.get("gpus", "auto")
            workers = check_workers(_plain(self.params.get("workers")))
            self.workers = worker_gpus(gpus, workers, check_gpus(gpus, visible_gpus()))
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # The launcher's work is imported only now (see the module's docstring).
        from . import _core

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        runner: Any = None  # None: batches run in this process
        if self.cluster is not None:
            from ._slurm import SlurmRunner

            runner = SlurmRunner(self.params, self.hydra_context, self.task_function)
        elif self.workers is not None:
            from ._pool import PoolRunner

            runner = PoolRunner(self.workers, self.hydra_context, self.task_function)
        return _core.launch(self.hydra_context, self.task_function, self.config, self.max_batch,
                            job_overrides, initial_job_idx, runner)
