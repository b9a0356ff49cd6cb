"""Hydra callbacks for tests/test_scaling.py:
`+hydra.callbacks.fail._target_=scaling_callbacks.KillWorker +hydra.callbacks.fail.job_num=0`."""

import os

from hydra.experimental.callback import Callback


class KillWorker(Callback):
    """Ends, as if killed, the worker process or SLURM task that starts the job with this number
    (never the process that launched the sweep)."""

    def __init__(self, job_num: int):
        self.job_num = job_num
        self.launcher_pid = os.getpid()  # instantiated in the submitting process, then shipped

    def on_job_start(self, config, **kwargs) -> None:
        if os.getpid() != self.launcher_pid and config.hydra.job.num == self.job_num:
            os._exit(3)  # no exception, no result


class ResultWait(Callback):
    """In the submitting process: how long submitit waits for the result file of a local task that
    has ended before it gives up on it (15 s, for network filesystems that show a new file late; on
    this machine's disk a task's result is there when it ends, and a killed task leaves none)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_multirun_start(self, config, **kwargs) -> None:
        from submitit.local.local import LocalJob

        LocalJob._results_timeout_s = self.seconds
