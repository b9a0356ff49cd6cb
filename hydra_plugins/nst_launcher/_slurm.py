"""`hydra/launcher=slurm`: each batch is one task of a SLURM job array, submitted through submitit.

`cluster: local` runs the very same path with submitit's local executor (processes on this
machine). The submitting process waits for every task and ends each batch's jobs from what came
back; a task that failed or never finished ends its batch as lost (the app's lost_batch). Every
task is Checkpointable: on a time-out (up to `max_num_timeout` times) or a preemption, submitit
requeues it with the same batch, and the app's resume skips the trials that had already completed.

When the command stops (Ctrl-C, SIGTERM, SIGHUP: the launcher calls `stop()`) its tasks are stopped
too: SLURM's are cancelled (`scancel`, through submitit), and local ones are sent SIGTERM, which
their controller passes on and which stops the batch as Ctrl-C would (the running trials are left
without a summary, for resume to run again); the command waits for them. A local task whose command
is gone without stopping it (SIGKILL) exits within a second.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import submitit
from hydra.types import HydraContext, TaskFunction
from omegaconf import OmegaConf

from ._contract import check_stop
from ._core import AUTO_BATCH, BatchLost, Item, dump_batch, end_lost_batch, load_returns, run_payload
from ._errors import NstLauncherConfigError
from ._processes import pid_alive

log = logging.getLogger(__name__)


STOP_GRACE_S = 10  # when the command stops, how long its local tasks get to leave their trials re-runnable


class BatchTask(submitit.helpers.Checkpointable):
    """One array task: one batch. `checkpoint()` (inherited) resubmits it with the same payload.

    owner: with cluster=local, the submitting command's process id (see _local_task)."""

    def __init__(self, owner: int | None = None) -> None:
        self.owner = owner

    def __call__(self, payload: bytes) -> bytes:
        if self.owner is not None:
            _local_task(self.owner)
        try:
            return run_payload(payload)
        except KeyboardInterrupt:
            if _stopping is None:
                raise
            log.warning(f"stopped by {signal.Signals(_stopping).name}: the trials that were running were left unfinished")
            raise SystemExit(128 + _stopping) from None


_stopping: int | None = None  # the signal that stops this task (local tasks)


def _local_task(owner: int) -> None:
    """A local task stops on SIGTERM and SIGHUP as on Ctrl-C (submitit lets a task ignore SIGTERM,
    which SLURM sends before a preemption: there is none here), and exits should its command or its
    controller be gone (SIGKILL): it must not go on writing into the sweep once nobody reads its results."""
    signal.signal(signal.SIGTERM, _on_stop)  # how the command stops it (stop())
    for name in ("SIGINT", "SIGHUP"):  # Ctrl-C, a closed terminal: unless the command ignores them
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _on_stop)
    parent = os.getppid()  # its controller

    def watch() -> None:
        while os.getppid() == parent and pid_alive(owner):
            time.sleep(1.0)
        folder = os.environ.get("SUBMITIT_FOLDER")  # what the command would have tidied (close())
        if folder:
            _drop_literal_folder(Path(folder))
        os._exit(1)

    threading.Thread(target=watch, name="nst-owner-watchdog", daemon=True).start()


def _on_stop(signum: int, frame: Any) -> None:
    global _stopping
    if _stopping is None:  # once: a repeat must not cut short its trials' ending
        _stopping = signum
        raise KeyboardInterrupt


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


class SlurmRunner:
    def __init__(self, params: dict[str, Any], hydra_context: HydraContext, task_function: TaskFunction) -> None:
        self.params = {k: _plain(v) for k, v in params.items()}  # the launcher's cluster and submitit settings
        self.cluster: str = self.params["cluster"]
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.jobs: list[submitit.Job] = []

    @property
    def parallel(self) -> int:
        return int(self.params["array_parallelism"])

    def batch_size(self, hook: Callable[[list], int | None], cfgs: list) -> int:
        # The nodes' GPUs are unknown from here; a batch that does not fit is split by the task.
        return AUTO_BATCH

    def describe(self) -> str:
        if self.cluster == "local":
            return "as local submitit tasks (hydra.launcher.cluster=local)"
        p = self.params
        return (f"as SLURM array tasks (partition {p['partition'] or 'default'}, {p['gpus_per_task']} GPU(s) per task, "
                f"at most {p['array_parallelism']} at once)")

    def executor(self) -> submitit.AutoExecutor:
        p = self.params
        executor = submitit.AutoExecutor(folder=str(p["submitit_folder"]), cluster=self.cluster,
                                         slurm_max_num_timeout=p["max_num_timeout"],
                                         local_max_num_timeout=p["max_num_timeout"])
        # One task on one node per batch; submitit drops the settings that are null.
        settings = dict(name=p["name"], timeout_min=p["timeout_min"], nodes=1, tasks_per_node=1,
                        cpus_per_task=p["cpus_per_task"], mem_gb=p["mem_gb"])
        if self.cluster == "slurm":
            settings.update(slurm_partition=p["partition"], slurm_gpus_per_task=p["gpus_per_task"],
                            slurm_array_parallelism=p["array_parallelism"], slurm_setup=list(p["setup"]),
                            slurm_additional_parameters=dict(p["additional_parameters"]))
        else:
            settings.update(gpus_per_node=p["gpus_per_task"] or 0, local_setup=list(p["setup"]))
        executor.update_parameters(**settings)
        return executor

    def run(self, batches: list[list[Item]]) -> Iterator[tuple[list[Item], list]]:
        executor = self.executor()
        payloads = [dump_batch(self.hydra_context, self.task_function, batch) for batch in batches]
        since = time.time()
        try:
            owner = os.getpid() if self.cluster == "local" else None
            self.jobs = executor.map_array(BatchTask(owner), payloads)
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as e:
            # sbatch refused it (its stderr is the message): nothing runs, and the sweep stops here.
            detail = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise NstLauncherConfigError(f"hydra/launcher=slurm: the job array was not submitted: {detail}") from None
        finally:
            _drop_literal_folder(Path(str(executor.folder)))
        first = self.jobs[0].job_id.split("_")[0] if self.jobs else "-"
        what = f"SLURM job array {first}" if self.cluster == "slurm" else "local submitit jobs"
        log.info(f"submitted {len(self.jobs)} batches as {what}; logs in {executor.folder}")
        for number, (job, batch) in enumerate(zip(self.jobs, batches, strict=True), 1):
            log.info(f"batch {number}/{len(batches)}: jobs {[idx for idx, _ in batch]} -> task {job.job_id}")
        for job, batch in zip(self.jobs, batches, strict=True):
            while not job.done():  # job.result() would wait without looking up
                check_stop(self.task_function)
                time.sleep(0.5)
            try:
                returns = load_returns(job.result())
                log.info(f"task {job.job_id} finished: jobs {[idx for idx, _ in batch]}")
            except Exception as e:  # noqa: BLE001 - the task failed or never finished
                returns = end_lost_batch(self.hydra_context, self.task_function, batch,
                                         BatchLost(self._failure(job, e)), since)
            yield batch, returns

    def stop(self) -> None:
        """The command is stopping: its tasks would go on without anyone to collect them."""
        if not self.jobs:
            return
        if self.cluster == "slurm":
            # One scancel per job array (array id) rather than one per task.
            first = self.jobs[0]
            for array in sorted({job.job_id.split("_")[0] for job in self.jobs}):
                type(first)(folder=first.paths.folder, job_id=array).cancel(check=False)
            log.info(f"cancelled SLURM job array(s) {', '.join(sorted({j.job_id.split('_')[0] for j in self.jobs}))}")
            return
        # A local job's id is its controller's process id; the controller passes SIGTERM on to its
        # task (_local_task), and ends when the task has.
        running = [job for job in self.jobs if not job.done()]
        for job in running:
            try:
                os.kill(int(job.job_id), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass
        if not _wait_done(running, STOP_GRACE_S):
            for job in running:
                if not job.done():
                    log.warning(f"local task {job.job_id} did not stop within {STOP_GRACE_S} s: cancelled")
                    job.cancel(check=False)  # Ctrl-C to the controller, which kills its task a second later
            _wait_done(running, 5)

    def _failure(self, job: submitit.Job, error: Exception) -> str:
        kind = "SLURM" if self.cluster == "slurm" else "local"
        logs = f"logs: {job.paths.stdout.parent}"
        if isinstance(error, submitit.core.utils.FailedJobError):
            # The task raised: the last line of its trace names the error.
            lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith("----")]
            trace = lines[1:lines.index(next((x for x in lines if x.startswith("You can check")), lines[-1]))]
            return f"{kind} task {job.job_id} failed: {trace[-1].strip() if trace else 'see its log'} ({logs})"
        return f"{kind} task {job.job_id} ended without a result ({type(error).__name__}, state {job.state}; {logs})"

    def close(self) -> None:
        if self.jobs:
            _drop_literal_folder(self.jobs[0].paths.folder.parent / "%j")
        self.jobs = []


def _wait_done(jobs: list[submitit.Job], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(not job.done() for job in jobs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _drop_literal_folder(folder: Path) -> None:
    # submitit makes the folder with "%j" in its name before it knows any job id (the executor, and
    # each local controller as it starts its task); it stays empty, and goes once the tasks have ended.
    if "%" in folder.name:
        try:
            folder.rmdir()
        except OSError:
            pass
