"""The nst launcher's work: group a sweep's jobs into batches and run each batch as one call.

Hydra's `run_job` runs one job: compose, make its folder and `.hydra/` files, set up its logging,
`on_job_start`, call the task, `on_job_end`. Here those steps are split around one call for a
whole batch: every job of the batch is started, the app's `run_batch(jobs)` runs them together,
and every job is ended. Each job keeps its own folder, log file, callbacks and JobReturn, so
sweepers, callbacks and tools that read the folders cannot tell the difference.

The launcher knows nothing of what the jobs do: the app says how to batch through the contract
(contract.py: BatchApp's run_batch, batch_key, batch_size, lost_batch). A task function that is not
a BatchApp runs every job alone, as with Hydra's basic launcher.

Where the batches run is the runner's business (chosen by the launcher, nst_launcher.py): None for
this process, or one from `_pool.py` (a worker process per GPU) or `_slurm.py` (SLURM tasks through
submitit). Elsewhere, a batch travels as one cloudpickled payload (`dump_batch`) and comes back as
its JobReturns (`run_payload`); a batch lost there is ended here (`end_lost_batch`). A runner has:
  parallel: int                 batches that run at once
  batch_size(hook, cfgs) -> int the app's batch_size, called where the batches will run
  describe() -> str             where, for the log
  run(batches)                  yields (batch, its JobReturns) as each ends
  stop()                        the command is stopping (Ctrl-C, SIGTERM, SIGHUP, an error): end
                                everything it started, so that nothing outlives the command; bounded
  close()                       the sweep is over (after stop() too)
The pieces of Hydra's private API that repeating run_job needs come from `_hydra_private.py`.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from textwrap import dedent
from typing import Any

from hydra import version
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, env_override, filter_overrides, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from . import _hydra_private as private
from ._contract import check_stop
from .contract import BatchApp, BatchJob, batch_app

log = logging.getLogger(__name__)

AUTO_BATCH = 8  # max_batch=auto when the app does not size its batches
Item = tuple[int, DictConfig]  # (hydra.job.num, composed job config): what a batch is made of

# Jobs whose activate() is open, innermost last: leaving one restores the logging of the job around it.
_active: list[Job] = []


class Job(BatchJob):
    """One job of a batch (contract.BatchJob), started and ended here as run_job would.

    Beyond the contract: config, the full job config (with its `hydra` node).
    """

    def __init__(self, idx: int, config: DictConfig) -> None:
        self.idx = idx
        self.config = config
        self.cfg: DictConfig | None = None
        self.output_dir: Path | None = None
        self.overrides: list[str] = []
        self._ret: JobReturn | None = None
        self.started = False  # its folder and .hydra/ files written, on_job_start called

    def __repr__(self) -> str:
        return f"Job(idx={self.idx}, output_dir={str(self.output_dir)!r})"

    @contextmanager
    def activate(self) -> Iterator[Job]:
        """Make this the current job: HydraConfig (HydraConfig.get(), ${hydra:...}), its log file, its env_set.

        Everything is restored on exit. Logging cannot be saved and restored as an object, so on
        exit it is configured again for the enclosing activate(), or back to Hydra's own logging.
        """
        hydra = self.config.hydra
        previous = private.saved_hydra_config()
        HydraConfig.instance().set_config(self.config)
        _active.append(self)
        try:
            _job_logging(hydra)
            with env_override(hydra.job.env_set):
                yield self
        finally:
            private.flush_loggers()
            _active.pop()
            outer = _active[-1].config.hydra if _active else None
            if outer is not None:
                _job_logging(outer)
            else:
                configure_log(hydra.hydra_logging, hydra.verbose)
            private.restore_hydra_config(previous)

    def _start(self, hydra_context: HydraContext, task_function: TaskFunction) -> None:
        """run_job's steps before the task call (hydra/core/utils.py); job logging comes with activate()."""
        config = self.config
        previous = private.saved_hydra_config()
        try:
            # hydra.sweep.subdir may use ${hydra:...}, which reads HydraConfig: set it first.
            HydraConfig.instance().set_config(config)
            output_dir = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                                      str(OmegaConf.select(config, "hydra.sweep.subdir")))
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = os.path.abspath(output_dir)
            HydraConfig.instance().set_config(config)

            ret = JobReturn()
            task_cfg = copy.deepcopy(config)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
            ret.cfg = task_cfg
            ret.hydra_cfg = copy.deepcopy(private.saved_hydra_config())  # the job just made current
            overrides = [str(o) for o in config.hydra.overrides.task]
            ret.overrides = overrides
            self.cfg, self._ret = task_cfg, ret
            self.output_dir = Path(config.hydra.runtime.output_dir)
            self.overrides = list(overrides)
            # A folder or file that cannot be written (a full disk, a file size limit, a name too
            # long) fails this job alone: execute_batch ends it as lost, and the sweep goes on.
            with _writing(Path(output_dir)):
                Path(output_dir).mkdir(parents=True, exist_ok=True)
            if effective_chdir(config, warn=True):
                os.chdir(output_dir)  # only ever for a batch of one; execute_batch changes back
                ret.working_dir = output_dir
            else:
                ret.working_dir = os.getcwd()

            if config.hydra.output_subdir is not None:
                hydra_output = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
                _save_config(task_cfg, "config.yaml", hydra_output)
                _save_config(ret.hydra_cfg, "hydra.yaml", hydra_output)
                _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)
        finally:
            # Between activate() blocks no job is current (HydraConfig.get() fails rather than
            # silently answering for the last job started).
            private.restore_hydra_config(previous)

        self.started = True
        with self.activate():
            hydra_context.callbacks.on_job_start(config=config, task_function=task_function)

    def _end(self, hydra_context: HydraContext, value: Any) -> JobReturn:
        """run_job's steps after the task call: the JobReturn, then on_job_end with this job current."""
        ret = self._ret
        assert ret is not None, "job ended before it started"
        ret.return_value = value
        ret.status = JobStatus.FAILED if isinstance(value, BaseException) else JobStatus.COMPLETED
        ret.task_name = JobRuntime.instance().get("name")
        if self.started:  # a job that could not start had no on_job_start either
            with self.activate():
                hydra_context.callbacks.on_job_end(config=self.config, job_return=ret)
        return ret


class JobNotStarted(RuntimeError):
    """A job's folder or its `.hydra/` files could not be written: `<reason> while writing <path>`."""


@contextmanager
def _writing(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """An OSError while writing `path` (through `tmp`) becomes JobNotStarted naming it; `tmp` is removed."""
    try:
        yield
    except OSError as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        reason = e.strerror or str(e) or type(e).__name__
        raise JobNotStarted(f"{reason} while writing {path}") from None


def _save_config(cfg: Any, filename: str, output_dir: Path) -> None:
    """run_job's _save_config, written whole or not at all (a full disk leaves no half file)."""
    path, tmp = output_dir / filename, output_dir / f".{filename}.tmp"
    with _writing(path, tmp):
        private.save_config(cfg, tmp.name, output_dir)
        os.replace(tmp, path)


def _job_logging(hydra: DictConfig) -> None:
    """A job's logging; where its log file cannot be opened (its folder unreadable, or not there: a
    full disk), the console alone, as Hydra logs outside jobs. The job still runs and reports."""
    try:
        configure_log(hydra.job_logging, hydra.verbose)
    except (OSError, ValueError):  # logging.config wraps the handler's OSError in a ValueError
        configure_log(hydra.hydra_logging, hydra.verbose)


def effective_chdir(config: DictConfig, warn: bool = False) -> bool:
    """hydra.job.chdir as run_job reads it: null means True before version_base 1.2, else False."""
    chdir = config.hydra.job.chdir
    if chdir is None:
        chdir = not version.base_at_least("1.2")
        if chdir and warn:
            url = "https://hydra.cc/docs/1.2/upgrades/1.1_to_1.2/changes_to_job_working_dir/"
            private.deprecation_warning(message=dedent(f"""\
                Future Hydra versions will no longer change working directory at job runtime by default.
                See {url} for more information."""), stacklevel=2)
    return bool(chdir)


def launch(hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig, max_batch: Any,
           job_overrides: Sequence[Sequence[str]], initial_job_idx: int, runner: Any = None) -> list[JobReturn]:
    """Launcher.launch: compose every job, plan the batches, run them (here, or through the runner)."""
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    try:
        # All jobs are composed up front (the basic launcher composes each just before it runs):
        # grouping needs their configs, and a composition error then stops the sweep before any job.
        items: list[Item] = []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            items.append((idx, sweep_config))
        # Jobs whose folders are one (a value given twice, `x=1,1.0`) are one job: it runs once, and
        # each of them returns its result.
        same_as: dict[int, int] = {}
        first: dict[str, int] = {}
        for idx, sweep_config in items:
            folder = job_output_dir(sweep_config)
            if folder in first:
                same_as[idx] = first[folder]
                log.info(f"#{idx} is #{first[folder]} (the same folder, {folder}): it runs once")
            else:
                first[folder] = idx
        all_items, items = items, [item for item in items if item[0] not in same_as]

        spread = runner.parallel if runner is not None else 1
        sizer = runner.batch_size if runner is not None else None
        batches = plan_batches(task_function, items, max_batch, sizer=sizer, spread=spread)
        where = f" {runner.describe()}" if runner is not None else ""
        log.info(f"nst launcher: {len(items)} jobs in {len(batches)} batches (max_batch={max_batch}){where}")
        for (idx, _), overrides in zip(all_items, job_overrides, strict=True):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")

        returns: dict[int, JobReturn] = {}
        started = time.monotonic()
        if runner is None:
            for number, batch in enumerate(batches, 1):
                check_stop(task_function)
                log.info(f"batch {number}/{len(batches)}: jobs {[idx for idx, _ in batch]}")
                for (idx, _), ret in zip(batch, execute_batch(hydra_context, task_function, batch), strict=True):
                    returns[idx] = ret
                _progress(len(returns), len(items), started, len(batches))
        else:
            for batch, rets in runner.run(batches):
                for (idx, _), ret in zip(batch, rets, strict=True):
                    returns[idx] = ret
                _progress(len(returns), len(items), started, len(batches))
    except BaseException:
        # Stopped (KeyboardInterrupt: Ctrl-C, or SIGTERM and SIGHUP as the app turns them) or failed:
        # no worker process or task may go on writing into the sweep once the command is gone.
        if runner is not None:
            runner.stop()
        raise
    finally:
        if runner is not None:
            runner.close()
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    # In the order of job_overrides: sweepers pair returns with their trials by position.
    return [returns[same_as.get(idx, idx)] for idx, _ in all_items]


def job_output_dir(config: DictConfig) -> str:
    """The job's folder: hydra.sweep.dir/hydra.sweep.subdir, resolved with the job current (the subdir
    may read ${hydra:...})."""
    previous = private.saved_hydra_config()
    try:
        HydraConfig.instance().set_config(config)
        return os.path.abspath(os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                                            str(OmegaConf.select(config, "hydra.sweep.subdir"))))
    finally:
        private.restore_hydra_config(previous)


def _progress(done: int, total: int, started: float, batches: int) -> None:
    """The sweep's progress as each batch ends (the jobs may run elsewhere): jobs done, time, time left
    at the pace so far. Nothing for a sweep of one batch, whose end is the sweep's."""
    if batches < 2:
        return
    elapsed = time.monotonic() - started
    left = elapsed / done * (total - done) if done < total else 0.0
    clock = lambda s: f"{int(s // 3600)}:{int(s % 3600 // 60):02d}:{int(s % 60):02d}"  # noqa: E731 -- a one-line helper, named where it is used
    log.info(f"nst launcher: {done}/{total} jobs done, {clock(elapsed)} elapsed, about {clock(left)} left")


Sizer = Callable[[Callable[[list], int | None], list[DictConfig]], int | None]


def plan_batches(task_function: TaskFunction, items: list[Item], max_batch: Any,
                 sizer: Sizer | None = None, spread: int = 1) -> list[list[Item]]:
    """Group jobs by the app's batch_key, cut groups into chunks of at most the limit, order by first job.

    With max_batch=auto, `sizer(app.batch_size, task_cfgs)` calls the hook where the batches will
    run (None: here), and a group is cut into at least `spread` batches when it has that many jobs,
    so that no worker idles while another runs one large batch.
    """
    app = batch_app(task_function)
    if app is None:
        return [[item] for item in items]  # nothing can run several jobs at once

    groups: dict[Hashable, list[Item]] = {}  # insertion order = order of each group's first job
    for idx, config in items:
        key: Hashable
        if effective_chdir(config):
            key = ("alone", idx)  # a batch shares one process, hence one working folder
        else:
            previous = private.saved_hydra_config()
            HydraConfig.instance().set_config(config)
            try:
                key = ("key", app.batch_key(_task_cfg(config)))
                hash(key)
            except Exception as e:  # noqa: BLE001 - whatever batch_key raises, the job can still run alone
                # Running the job alone is always possible; its own run will report what is wrong.
                log.warning(f"#{idx}: batch_key failed ({e!r}); this job runs alone")
                key = ("alone", idx)
            finally:
                private.restore_hydra_config(previous)
        groups.setdefault(key, []).append((idx, config))

    batches: list[list[Item]] = []
    for group in groups.values():
        if max_batch != "auto":
            limit = max_batch
        else:
            limit = _auto_limit(app, group, sizer)
            limit = max(1, min(limit, -(-len(group) // max(1, spread))))  # ceil(len / spread)
        batches += [group[i:i + limit] for i in range(0, len(group), limit)]
    batches.sort(key=lambda batch: batch[0][0])
    return batches


def _auto_limit(app: BatchApp, group: list[Item], sizer: Sizer | None = None) -> int:
    if type(app).batch_size is BatchApp.batch_size:
        return AUTO_BATCH  # the app does not size batches: no need to ask (in a worker process, perhaps)
    if len(group) == 1:
        return 1
    try:
        cfgs = [_task_cfg(config) for _, config in group]
        limit = sizer(app.batch_size, cfgs) if sizer is not None else app.batch_size(cfgs)
        if limit is None:
            return AUTO_BATCH
        if type(limit) is not int or limit < 1:
            raise ValueError(f"batch_size returned {limit!r}, not an integer >= 1")
        return limit
    except Exception as e:  # noqa: BLE001 - whatever batch_size raises, the jobs can still run one at a time
        log.warning(f"jobs {[idx for idx, _ in group]}: batch_size failed ({e!r}); they run one at a time")
        return 1


def _task_cfg(config: DictConfig) -> DictConfig:
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def execute_batch(hydra_context: HydraContext, task_function: TaskFunction, batch: list[Item],
                  singleton_state: dict[Any, Any] | None = None, lost: BaseException | None = None,
                  since: float = 0.0) -> list[JobReturn]:
    """Run one batch: start every job, one call for all, end every job. JobReturns in batch order.

    In another process, pass `Singleton.get_state()` from the launching process as singleton_state.
    lost: the batch ran elsewhere and was lost with this error (handed out at `since`): its jobs
    are ended here with what the app's `lost_batch` says (a plain task function: the error).
    """
    if singleton_state is not None:
        Singleton.set_state(singleton_state)
        setup_globals()
    jobs = [Job(idx, config) for idx, config in batch]
    if len(jobs) > 1 and any(effective_chdir(job.config) for job in jobs):
        raise ValueError("nst launcher: jobs with hydra.job.chdir=true cannot share a batch")

    # Hydra's state is restored even when KeyboardInterrupt/SystemExit ends the batch; those
    # propagate (like run_job, only Exception counts as a job's failure).
    old_cwd = os.getcwd()
    chdir = effective_chdir(jobs[0].config)  # then the batch is this one job; _start changes folder
    hydra_cfg = private.saved_hydra_config()
    try:
        values: list[Any] = [None] * len(jobs)
        for n, job in enumerate(jobs):
            try:
                job._start(hydra_context, task_function)
            except JobNotStarted as e:
                # The app records and reports it as it does a lost batch's jobs (or says why it cannot).
                values[n] = _lost(task_function, [job], e, time.time())[0]
                if chdir:
                    os.chdir(old_cwd)
        started = [n for n, job in enumerate(jobs) if job.started]
        if started:
            run = [jobs[n] for n in started]
            got = _call(task_function, run) if lost is None else _lost(task_function, run, lost, since)
            for n, value in zip(started, got, strict=True):
                values[n] = value
        return [job._end(hydra_context, value) for job, value in zip(jobs, values, strict=True)]
    finally:
        private.restore_hydra_config(hydra_cfg)
        if chdir:
            os.chdir(old_cwd)
        # activate() already gives logging back; this also undoes logging set up by run_batch itself
        # (the basic launcher likewise reconfigures Hydra's logging after every job).
        hydra = jobs[0].config.hydra
        configure_log(hydra.hydra_logging, hydra.verbose)


def _call(task_function: TaskFunction, jobs: list[Job]) -> list[Any]:
    """One value per job; a job's failure is an exception instance in its place."""
    app = batch_app(task_function)
    if app is None:
        (job,) = jobs  # plan_batches gives batches of one here
        with job.activate():
            try:
                return [task_function(job.cfg)]
            except Exception as e:  # noqa: BLE001 - the job's error is its JobReturn, as Hydra's run_job gives it
                return [e]
    try:
        values = list(app.run_batch(list[BatchJob](jobs)))
        if len(values) != len(jobs):
            raise ValueError(f"run_batch returned {len(values)} values for {len(jobs)} jobs")
        return values
    except Exception as e:  # noqa: BLE001 - one batch failing must not stop the sweep
        # One crash (say, out of memory for the whole batch) fails this batch; the sweep goes on.
        log.error(f"batch {[job.idx for job in jobs]} failed: {e!r}")
        return [e] * len(jobs)


def _lost(task_function: TaskFunction, jobs: list[Job], error: BaseException, since: float) -> list[Any]:
    app = batch_app(task_function)
    if app is not None:
        try:
            values = list(app.lost_batch(list[BatchJob](jobs), error, since))
            if len(values) == len(jobs):
                return values
            log.error(f"lost_batch returned {len(values)} values for {len(jobs)} jobs")
        except Exception as e:  # noqa: BLE001 - the lost batch still ends with its error
            log.error(f"lost_batch failed for batch {[job.idx for job in jobs]}: {e!r}")
    return [error] * len(jobs)


class BatchLost(RuntimeError):
    """A batch that ran elsewhere and did not come back (a dead worker process, a failed SLURM task)."""


# ------------------------------------------------------------------------------------ elsewhere


def dump_batch(hydra_context: HydraContext, task_function: TaskFunction, batch: list[Item]) -> bytes:
    """One batch as a payload for another process: cloudpickle, as Hydra's joblib and submitit
    launchers ship jobs (Hydra's singletons hold lambdas, which pickle cannot carry)."""
    import cloudpickle

    return cloudpickle.dumps((hydra_context, task_function, batch, Singleton.get_state()))


def run_payload(payload: bytes) -> bytes:
    """In a worker process or a SLURM task: run one batch from `dump_batch`; its JobReturns, pickled."""
    import cloudpickle

    hydra_context, task_function, batch, state = cloudpickle.loads(payload)
    returns = execute_batch(hydra_context, task_function, batch, singleton_state=state)
    for ret in returns:
        value = private.job_value(ret)
        if isinstance(value, BaseException):
            try:
                pickle.loads(cloudpickle.dumps(value))
            except Exception:  # noqa: BLE001 - an exception that cannot travel back: its text does
                ret.return_value = RuntimeError(f"{type(value).__name__}: {value}")
    return cloudpickle.dumps(returns)


def load_returns(data: bytes) -> list[JobReturn]:
    import cloudpickle

    return cloudpickle.loads(data)


def end_lost_batch(hydra_context: HydraContext, task_function: TaskFunction, batch: list[Item],
                   error: BaseException, since: float) -> list[JobReturn]:
    """In this process, for a batch that was lost elsewhere (the app's lost_batch says how its jobs end)."""
    log.error(f"batch {[idx for idx, _ in batch]} was lost: {error}")
    return execute_batch(hydra_context, task_function, batch, lost=error, since=since)

