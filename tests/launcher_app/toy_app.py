"""Toy Hydra app for the nst launcher tests: `python toy_app.py -m hydra/launcher=nst key=a,b x=1,2`.

The task function is a ToyApp, which implements the launcher's contract (run_batch, batch_key,
batch_size), unless TOY_NO_HOOKS=1: then a plain function. Every job writes <its folder>/result.json
with what it saw; a Recorder callback appends on_job_start/on_job_end events to <sweep dir>/events.jsonl; batch_size calls go to
./batch_size_calls.jsonl (the working folder).
"""

import json
import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback

from hydra_plugins.nst_launcher.contract import BatchApp

log = logging.getLogger("toy")


def _label(cfg) -> str:
    return f"{cfg.key}{cfg.x}"


def _record(cfg, batch) -> None:
    """Called with the job current: write what this job sees of Hydra's per-job state."""
    hc = HydraConfig.get()
    log.info(f"job {hc.job.num}: inside activate, batch {batch}")
    record = {"key": cfg.key, "x": cfg.x, "num_seen": hc.job.num, "output_dir": hc.runtime.output_dir,
              "out_interp": cfg.out, "batch": batch, "env": os.environ.get("TOY_ENV"), "cwd": os.getcwd()}
    Path(hc.runtime.output_dir, "result.json").write_text(json.dumps(record))


def _current_num():
    try:
        return HydraConfig.get().job.num
    except ValueError:  # HydraConfig was not set
        return "unset"


def _task(cfg):
    """One job (basic launcher, or the nst launcher without hooks)."""
    _record(cfg, [HydraConfig.get().job.num])
    if _label(cfg) in cfg.fail_on:
        raise ValueError(f"job {HydraConfig.get().job.num} asked to fail")
    return f"ok-{HydraConfig.get().job.num}"


def run_batch(jobs):
    nums = [job.idx for job in jobs]
    if jobs[0].cfg.interrupt:  # from inside a job's activate(): the launcher must restore Hydra's state
        with jobs[0].activate():
            raise KeyboardInterrupt if jobs[0].cfg.interrupt == "keyboard" else SystemExit(3)
    if jobs[0].cfg.key == jobs[0].cfg.crash_key:
        raise RuntimeError(f"batch {nums} crashed")
    for job in jobs:  # prepare each job with it current
        with job.activate():
            _record(job.cfg, nums)
    # Shared work, no job current: logs go to no job's file; env_set is not applied.
    log.info(f"outside activate: batch {nums}, HydraConfig={_current_num()}, TOY_ENV={os.environ.get('TOY_ENV')}")
    results = []
    for job in jobs:
        with job.activate():
            if len(jobs) > 1 and job is jobs[0]:  # leaving a nested activate() gives the outer job back
                with jobs[1].activate():
                    log.info(f"job {jobs[1].idx}: nested in job {job.idx}")
            log.info(f"job {job.idx}: finishing, HydraConfig={_current_num()}, TOY_ENV={os.environ.get('TOY_ENV')}")
            ok = _label(job.cfg) not in job.cfg.fail_on
            results.append(f"ok-{job.idx}" if ok else ValueError(f"job {job.idx} asked to fail"))
    return results


def batch_key(cfg):
    if cfg.key == "boom":
        raise ValueError("no key for boom")
    # this job's HydraConfig is active: its overrides agree with this cfg
    hc = HydraConfig.get()
    assert hc.job.num is not None
    assert all(o in (f"key={cfg.key}", f"x={cfg.x}") for o in hc.overrides.task if o.startswith(("key=", "x=")))
    return cfg.key


def batch_size(cfgs):
    with open("batch_size_calls.jsonl", "a") as f:
        f.write(json.dumps({"keys": [c.key for c in cfgs], "xs": [c.x for c in cfgs]}) + "\n")
    return cfgs[0].bs[cfgs[0].key]


class ToyApp(BatchApp):
    """The toy with the contract; one job per call (the basic launcher) stays `_task`."""

    def __call__(self, cfg):
        return _task(cfg)

    def run_batch(self, jobs):
        return run_batch(jobs)

    def batch_key(self, cfg):
        return batch_key(cfg)

    def batch_size(self, cfgs):
        return batch_size(cfgs)


class Recorder(Callback):
    def _write(self, config, event, **extra) -> None:
        hc = HydraConfig.get()
        row = {"event": event, "num": config.hydra.job.num, "hc_num": hc.job.num, "env": os.environ.get("TOY_ENV"),
               **extra}
        with open(Path(config.hydra.sweep.dir) / "events.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_job_start(self, config, **kwargs) -> None:
        self._write(config, "start")

    def on_job_end(self, config, job_return, **kwargs) -> None:
        self._write(config, "end", status=job_return.status.name, value=repr(job_return._return_value))


task = _task if os.environ.get("TOY_NO_HOOKS") == "1" else ToyApp()
app = hydra.main(version_base=os.environ.get("TOY_VERSION_BASE", "1.3"), config_path="conf",
                 config_name="config")(task)

if __name__ == "__main__":
    app()
