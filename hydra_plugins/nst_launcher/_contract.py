"""The contract between the nst launcher and the app it runs; imported as `contract` (see contract.py).

Light on purpose: Hydra imports the launcher's plugin modules in every app of the environment, and
worker processes and SLURM tasks import this to unpickle an app. Standard library and Hydra only.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Hashable
from pathlib import Path
from typing import Any, cast


class BatchJob(abc.ABC):
    """One job of a batch, as the app receives it.

    idx: hydra.job.num (None outside a multirun); cfg: the task config, without the `hydra` node,
    as a task function gets it; output_dir: the job's folder (it exists); overrides: the job's task
    overrides. Between activate() blocks no job is current: Hydra's per-job state is only valid
    inside one.
    """

    idx: int | None
    cfg: Any
    output_dir: Path | None
    overrides: list[str]

    @abc.abstractmethod
    def activate(self) -> contextlib.AbstractContextManager[BatchJob]:
        """Make this the current job: HydraConfig (HydraConfig.get(), ${hydra:...}), its log file and
        its hydra.job.env_set, all restored on exit. Nests: leaving an inner one gives the outer back."""


class BatchApp(abc.ABC):
    """A Hydra app that can run several jobs of a sweep as one unit of work.

    Subclass it, implement run_batch (and the optional hooks), and hand an instance to hydra.main
    as the task function:

        app = hydra.main(version_base="1.3", config_path=..., config_name="config")(MyApp())

    The nst launcher then groups the jobs of a sweep (batch_key), cuts groups into batches
    (hydra.launcher.max_batch, or batch_size when it is `auto`) and calls run_batch once per batch,
    in this process, in a worker process or in a SLURM task: an app travels there by cloudpickle,
    so it keeps no state that cannot (a module-level class is imported there by name; one in a
    script travels by value). A task function that is not a BatchApp runs one job per call, as
    under Hydra's basic launcher.

    Called with one config (a single run; a job of another launcher), the app runs the current job
    as a batch of one through run_batch. In a script (`__main__`), Hydra cannot read the file of an
    instance as it does a function's: it then takes the caller of `app()` from the stack, so call
    it at module level (under `if __name__ == "__main__":`), as Hydra's examples do.
    """

    def __call__(self, cfg: Any) -> Any:
        (value,) = self.run_batch([CurrentJob(cfg)])
        if isinstance(value, BaseException):
            raise value  # Hydra's way to fail a job: run_job catches it
        return value

    @abc.abstractmethod
    def run_batch(self, jobs: list[BatchJob]) -> list[Any]:
        """Run these jobs together; one value per job, in their order: what the job returns (its
        JobReturn.return_value), or a BaseException instance for a job that failed. Raising fails
        the whole batch with that error (other batches go on); KeyboardInterrupt and SystemExit
        stop the sweep, as in Hydra."""

    def batch_key(self, cfg: Any) -> Hashable:
        """Jobs whose keys are equal may share a batch. Called with that job current (HydraConfig);
        raising runs the job alone. Default: any jobs may share one."""
        return None

    def batch_size(self, cfgs: list[Any]) -> int | None:
        """The largest batch for these jobs of one group (an integer >= 1), used when
        hydra.launcher.max_batch=auto; called where the batches run (in a worker process, on its
        GPU). None: the launcher's default (8). Raising runs them one at a time."""
        return None

    def check_stop(self) -> None:
        """Raise KeyboardInterrupt if the command is stopping though its KeyboardInterrupt never
        arrived (Python drops one raised inside a __del__ or a weakref callback). Called in the
        launching process before each batch and at least once a second while it waits for workers
        or tasks. Default: nothing."""
        return None

    def lost_batch(self, jobs: list[BatchJob], error: BaseException, since: float) -> list[Any]:
        """The batch ran elsewhere and was lost (its worker process died, its SLURM task failed):
        one value per job, as run_batch would have returned. Called in the launching process, each
        job started as for run_batch; `since`: time.time() when the batch was handed out, so that
        what the batch recorded before it was lost can be told from older results. Default: every
        job fails with the error."""
        return [error] * len(jobs)


def batch_app(task_function: Any) -> BatchApp | None:
    """The app behind the task function Hydra handed a launcher, or None (a plain task function)."""
    return task_function if isinstance(task_function, BatchApp) else None


def check_stop(task_function: Any) -> None:
    """The app's check_stop (BatchApp), if the task function is an app."""
    app = batch_app(task_function)
    if app is not None:
        app.check_stop()


class CurrentJob(BatchJob):
    """The job Hydra is running now (a task function was called for it), as a BatchJob."""

    def __init__(self, cfg: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import DictConfig, OmegaConf

        # HydraConfig.get() is annotated as the HydraConf dataclass; what it returns is its DictConfig
        hc = cast(DictConfig, HydraConfig.get()) if HydraConfig.initialized() else None
        self.cfg = cfg
        self.idx = OmegaConf.select(hc, "job.num", default=None) if hc is not None else None  # unset in a single run
        self.output_dir = Path(hc.runtime.output_dir) if hc is not None else None
        self.overrides = list(hc.overrides.task) if hc is not None else []

    def activate(self) -> contextlib.AbstractContextManager[BatchJob]:
        return contextlib.nullcontext(self)  # Hydra made it current before calling the task


class ReadsResults:
    """Mixin for a Sweeper that reads its jobs' return values to choose what runs next (a search).

    A job's failure must then reach it as a failure (the app returns an exception); a sweeper that
    does not declare this, such as Hydra's basic sweeper (which stops a grid at the first failure
    it gets back), may be handed None for a failed job instead, the app keeping the failure in its
    own records.
    """


def reads_results(sweeper: Any = None) -> bool:
    """Whether a sweeper reads its jobs' results (is a ReadsResults): the one a `hydra.sweeper`
    config node names, or by default the one running the current job (False outside a multirun)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from hydra.utils import get_class

    if sweeper is None:
        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return False
        sweeper = HydraConfig.get().sweeper
    target = sweeper.get("_target_") if hasattr(sweeper, "get") else None
    if not target:
        return False
    try:
        cls = get_class(str(target))
    except Exception:  # noqa: BLE001 - a sweeper that cannot be imported here declares nothing
        return False
    return isinstance(cls, type) and issubclass(cls, ReadsResults)
