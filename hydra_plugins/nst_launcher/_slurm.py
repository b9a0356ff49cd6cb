"""`hydra/launcher=slurm`: each batch is one task of a SLURM job array, submitted through submitit.

`cluster: local` runs the very same path with submitit's local executor (processes on this
machine). The submitting process waits for every task and ends each batch's jobs from what came
back; a task that failed or never finished ends its batch as lost (the app's lost_batch). Every
task is Checkpointable: on a time-out (up to `max_num_timeout` times) or a preemption, submitit
requeues it with the same batch, and the app's resume skips the trials that had already completed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import submitit
from hydra.types import HydraContext, TaskFunction
from omegaconf import OmegaConf

from ._core import AUTO_BATCH, BatchLost, Item, dump_batch, end_lost_batch, load_returns, run_payload
from ._errors import NstLauncherConfigError

log = logging.getLogger(__name__)


class BatchTask(submitit.helpers.Checkpointable):
    """One array task: one batch. `checkpoint()` (inherited) resubmits it with the same payload."""

    def __call__(self, payload: bytes) -> bytes:
        return run_payload(payload)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


class SlurmRunner:
    def __init__(self, params: Dict[str, Any], hydra_context: HydraContext, task_function: TaskFunction) -> None:
        self.params = {k: _plain(v) for k, v in params.items()}  # the launcher's cluster and submitit settings
        self.cluster: str = self.params["cluster"]
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.jobs: List[submitit.Job] = []

    @property
    def parallel(self) -> int:
        return int(self.params["array_parallelism"])

    def batch_size(self, hook: Callable[[list], Optional[int]], cfgs: list) -> int:
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

    def run(self, batches: List[List[Item]]) -> Iterator[Tuple[List[Item], list]]:
        executor = self.executor()
        payloads = [dump_batch(self.hydra_context, self.task_function, batch) for batch in batches]
        since = time.time()
        try:
            self.jobs = executor.map_array(BatchTask(), payloads)
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as e:
            # sbatch refused it (its stderr is the message): nothing runs, and the sweep stops here.
            detail = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise NstLauncherConfigError(f"hydra/launcher=slurm: the job array was not submitted: {detail}") from None
        finally:
            _drop_literal_folder(Path(str(executor.folder)))
        first = self.jobs[0].job_id.split("_")[0] if self.jobs else "-"
        what = f"SLURM job array {first}" if self.cluster == "slurm" else "local submitit jobs"
        log.info(f"submitted {len(self.jobs)} batches as {what}; logs in {executor.folder}")
        for number, (job, batch) in enumerate(zip(self.jobs, batches), 1):
            log.info(f"batch {number}/{len(batches)}: jobs {[idx for idx, _ in batch]} -> task {job.job_id}")
        try:
            for job, batch in zip(self.jobs, batches):
                try:
                    returns = load_returns(job.result())
                    log.info(f"task {job.job_id} finished: jobs {[idx for idx, _ in batch]}")
                except Exception as e:  # noqa: BLE001 - the task failed or never finished
                    returns = end_lost_batch(self.hydra_context, self.task_function, batch,
                                             BatchLost(self._failure(job, e)), since)
                yield batch, returns
        except BaseException:
            # Ctrl-C while waiting: the tasks would go on without anyone to collect them.
            for job in self.jobs:
                if not job.done():
                    job.cancel(check=False)
            raise

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


def _drop_literal_folder(folder: Path) -> None:
    # submitit makes the folder with "%j" in its name before it knows any job id; left empty.
    if "%" in folder.name:
        try:
            folder.rmdir()
        except OSError:
            pass
