"""A Hydra callback that kills the process running a batch, for tests/test_scaling.py:
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
