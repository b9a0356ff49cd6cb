"""Entry point: `python -m nst.run [key=value ...]` runs one transfer; `-m` runs a sweep.

Orchestration only: compose (Hydra), validate, hand the trials to the batched runner (`nst.engine`),
report. The app (`NstApp`) implements the launcher's contract (hydra_plugins/nst_launcher/contract.py):
a sweep goes through the project's launcher (`hydra/launcher=nst`), which hands the compatible trials
of a sweep to `run_jobs` together; a single run, or a job of a launcher that runs one job at a time
(`hydra/launcher=basic`), is a batch of one through the same runner.
The launcher may run a batch in a worker process or a SLURM task; everything the submitting
process reports (exit status, resume count, the sweep report) is read from the trials' files.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.nst_launcher._hydra_private import raised
from hydra_plugins.nst_launcher.contract import BatchApp, BatchJob, reads_results
from nst import compose, interrupt, preflight, sweep_folder
from nst.errors import InputError, TrialFailed
from nst.records import WriteError
from nst.stage import Stage
from nst.summary import Summary, outcome
from nst.summary import read as read_summary

log = logging.getLogger("nst")
compose.register_resolvers()


def trial_overrides() -> list[str]:
    """The overrides that define this trial (what it is labelled by), without the sweep selector."""
    return [o for o in HydraConfig.get().overrides.task
            if not o.lstrip("+~").startswith(sweep_folder.SELECTORS)]


def run_jobs(jobs: list[BatchJob], stage: Stage, outputs: set[str]) -> list:
    """Several trials as one unit of work. Each is prepared with its own Hydra job active (resume
    check, validation, sinks), then they run together, then each reports into its own log.

    A trial records its result, or its failure, in its files. Returns one value per job: its
    objective (None when no `objective` is set); for a failed trial None in a grid (so that Hydra's
    basic sweeper never stops a sweep before its report) and a TrialFailed in a search (so that the
    sweeper counts it as failed)."""
    from nst.engine import run_together

    _teardown_at_exit()
    values: list = [None] * len(jobs)
    prepared = []
    for n, job in enumerate(jobs):
        with job.activate():
            trial, summary = _prepare(job.cfg, stage, outputs)
            if trial is None:
                values[n] = _result(summary)
            else:
                prepared.append((n, job, trial))
    _bf16_hint([t.settings for _, _, t in prepared])
    # The launcher grouped these jobs (batch_key: equal group_key) and sized the batch: they run as
    # one batch, not grouped again.
    summaries = run_together([t for _, _, t in prepared]) if prepared else []
    for (n, job, trial), summary in zip(prepared, summaries, strict=True):
        with job.activate():
            _report(trial, summary)
            values[n] = _result(Summary.from_dict(summary))
    return values


def _bf16_hint(settings: list) -> None:
    """On a CPU with AMX-BF16 units precision=auto stays fp32 (nst.device.resolve_precision); say once
    what precision=bf16 would offer there."""
    from nst.device import cpu_bf16_units, resolve_device

    try:
        on_cpu = any(s.precision == "auto" and resolve_device(s.device).type == "cpu" for s in settings)
    except InputError:
        return  # the trial reports its own bad device
    if on_cpu and cpu_bf16_units() == "amx_bf16":
        log.info("this CPU has AMX-BF16 units: precision=bf16 evaluates about 2x faster than the fp32 that "
                 "auto picks, with results a little beyond fp32's float noise (docs/speed.md)")


def lost_batch(jobs: list[BatchJob], error: BaseException, since: float) -> list:
    """The launcher lost these trials' batch (a worker process died, a SLURM task failed): each
    that has no result from it is recorded as failed with the error, so that resume runs it again.
    Returns what run_jobs would have."""
    values = []
    for job in jobs:
        with job.activate():
            run_dir, record = _record(job.cfg)
            previous = read_summary(run_dir / "summary.json")
            same = previous.config == record["config"]
            # A result this batch wrote before it was lost stands (a minute's slack for the clocks of
            # other machines), and so does a completed one with this config, as for resume.
            ours = same and (previous.finished_unix or 0) >= since - 60
            if (previous.completed and same) or (previous.status == "failed" and ours):
                values.append(_result(previous))
                continue
            summary = Summary.from_dict({**record, "status": "failed", "error": str(error), "finished_unix": time.time()})
            log.error(f"{record['label']}: failed: {error}{_record_failure(run_dir, summary)}")
            values.append(_result(summary))
    return values


def _record_failure(run_dir: Path, summary: Summary) -> str:
    """A trial that failed outside the runner: its summary replaces an earlier attempt's files as a unit
    (nst.summary.record_failure). Returns what to add to the trial's one line: on a full disk, why it
    could not be recorded (as the runner says it)."""
    from nst.summary import record_failure

    try:
        record_failure(run_dir, summary)
    except OSError as e:
        return f" (not recorded: {e})"
    return ""


def _result(summary: Summary):
    """What run_jobs returns for the active job's trial, from its summary (see run_jobs). A completed
    trial's objective is also written into its summary.json, for the sweep report."""
    from nst.summary import score, write

    if not summary.completed:
        error = summary.error if summary.error is not None else "unknown error"
        return TrialFailed(f"{summary.label or 'trial'}: {error}") if _searching() else None
    scored = score(summary)
    if scored is None:
        return None
    if summary.objective != scored:
        summary.objective = scored
        write(Path(HydraConfig.get().runtime.output_dir) / "summary.json", summary)
    return scored.value


def _searching() -> bool:
    """A sweeper that reads the trials' results (the project's Optuna sweeper declares it), rather
    than Hydra's basic grid sweeper."""
    return reads_results()


_registered = False


def _teardown_at_exit() -> None:
    # A worker process or a SLURM task ends without main(): stop its W&B service when it exits.
    global _registered
    if not _registered:
        from nst.wandb_sink import teardown

        atexit.register(teardown)
        _registered = True


def batch_key(cfg: DictConfig, stage: Stage) -> tuple:
    """The launcher's grouping: trials with equal keys can share a pass (raises InputError on bad input)."""
    from nst.engine import group_key

    return group_key(stage.settings(compose.resolved(cfg)))


def batch_size(cfgs: list[DictConfig], stage: Stage) -> int:
    """hydra.launcher.max_batch=auto: from the device's free memory and what one trial costs."""
    from nst.engine import auto_batch_size

    try:
        return auto_batch_size([stage.settings(compose.resolved(c)) for c in cfgs])
    except InputError:
        return 1  # each trial then reports its own error


class NstApp(BatchApp):
    """The task function Hydra runs: the launcher's contract (BatchApp), each hook one function above.

    Called for one job (a single run, `hydra/launcher=basic`) it runs it as a batch of one, and a
    failed trial of a search raises (BatchApp.__call__).

    It holds the command's stage (nst.stage): each trial's Settings and input images, made once
    whether the up-front check, the launcher's grouping and sizing or the trial asks first."""

    def __init__(self) -> None:
        self.stage = Stage()
        # the folders this process's trials write into (with the command's own, nst.preflight: what
        # main() reports and reads the exit status from)
        self.outputs: set[str] = set()

    def __getstate__(self) -> dict:
        return {"stage": self.stage, "outputs": set()}

    def run_batch(self, jobs: list[BatchJob]) -> list:
        return run_jobs(jobs, self.stage, self.outputs)

    def batch_key(self, cfg: DictConfig) -> tuple:
        return batch_key(cfg, self.stage)

    def batch_size(self, cfgs: list[DictConfig]) -> int:
        return batch_size(cfgs, self.stage)

    def lost_batch(self, jobs: list[BatchJob], error: BaseException, since: float) -> list:
        return lost_batch(jobs, error, since)

    def check_stop(self) -> None:
        interrupt.check()


# An absolute path: Hydra resolves a relative one against the package when the entry point is not
# `python -m nst.run` (the console scripts, `python -m nst`: an import); conf/ is nst/conf.
APP = NstApp()
app = hydra.main(version_base=compose.VERSION_BASE, config_path=str(compose.CONF_DIR), config_name="config")(APP)


def _record(cfg: DictConfig) -> tuple[Path, dict]:
    """The active Hydra job's folder, and what its summary.json starts with."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = trial_overrides()
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    process = {"host": socket.gethostname(), "pid": os.getpid()}  # which worker or SLURM task ran it
    for key, var in (("cuda_visible_devices", "CUDA_VISIBLE_DEVICES"), ("slurm_job_id", "SLURM_JOB_ID")):
        if os.environ.get(var) is not None:
            process[key] = os.environ[var]
    return run_dir, {"label": ",".join(overrides) or "defaults", "overrides": overrides, "config": resolved,
                     "job_num": hc.job.num if multirun else None, "process": process}


def _prepare(cfg: DictConfig, stage: Stage, outputs: set[str]):
    """(the trial of the active Hydra job, None), or (None, its summary) when it needs no run
    (completed before: resume) or cannot run (its failure recorded)."""
    from nst.engine import Trial

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir, record = _record(cfg)
    outputs.add(str(Path(hc.sweep.dir).resolve() if multirun else run_dir.resolve()))
    label, resolved = record["label"], record["config"]

    odd = sweep_folder.odd_paths(run_dir)
    if odd:
        # Not nst's to remove, and in the way of this trial's files: one line, nothing written.
        error = f"{odd[0]} is a {'file' if odd[0].is_file() else 'folder or link'}, where nst keeps its own; move it away"
        log.error(f"{label}: failed: {error}")
        return None, Summary.from_dict({**record, "status": "failed", "error": error, "finished_unix": time.time()})
    previous = read_summary(run_dir / "summary.json")
    if previous.completed and previous.config == resolved and (run_dir / "final.png").is_file():
        # Resume: re-running a sweep into its folder skips what already completed with this config
        # (and still has its image).
        log.info(f"{label}: already completed with this config, skipped ({run_dir})")
        sweep = _SweepProgress.current() if multirun else None
        if sweep is not None:
            sweep.done(run_dir)
        return None, previous

    try:
        from nst import search

        settings = stage.settings(resolved)
        search.check(resolved.get("objective"), resolved.get("target_psnr"))
        inputs = stage.inputs(settings)
    except InputError as e:
        # Validated when the trial is proposed: a sweeper that proposes trials as it goes (Optuna)
        # meets bad input here, not up front.
        summary = Summary.from_dict({**record, "status": "failed", "error": str(e), "finished_unix": time.time()})
        log.error(f"{label}: failed: {e}{_record_failure(run_dir, summary)}")
        sweep = _SweepProgress.current() if multirun else None
        if sweep is not None:
            sweep.done(run_dir)
        return None, summary
    record["settings"] = settings.to_dict()
    sweep_dir = Path(hc.sweep.dir) if multirun else None

    def open_sinks(position: int) -> list:
        from nst.sinks import FileSink, ProgressSink

        steps = settings.total_steps  # every pyramid level's evaluations
        sweep = _SweepProgress.current() if multirun else None
        sinks = [FileSink(run_dir, log_every=settings.log_every, frame_every=settings.frame_every, steps=steps),
                 ProgressSink(steps, label if multirun else "nst", position + (sweep is not None))]
        if sweep is not None:
            sinks.append(sweep.sink(run_dir, steps))
        if resolved["logger"]["name"] == "wandb":
            from nst import wandb_sink

            effective = {"content_weight": settings.content_weight, "style_weight": settings.style_weight,
                         "tv_weight": settings.tv_weight}
            run = wandb_sink.start(resolved["wandb"], run_dir=run_dir, files_root=sweep_dir or run_dir, name=label,
                                   group=sweep_dir.name if sweep_dir else None, job_type="trial",
                                   config={**resolved, "effective": effective}, tags=wandb_tags(resolved))
            if run is not None:
                sinks.append(wandb_sink.WandbSink(run, run_dir=run_dir, log_every=settings.log_every,
                                                  frame_every=settings.frame_every, steps=steps))
        return sinks

    return Trial(settings, inputs, run_dir, open_sinks, record), None


def _report(trial, summary: dict) -> None:
    label = summary.get("label", "trial")
    if summary["status"] == "completed":
        final, batch = summary["final"], summary.get("batch") or {}
        shared = f" (batch of {batch['size']})" if batch.get("size", 1) > 1 else ""
        names = ("content", "style") if "style" in final else [k for k in final if k != "total"]  # engine=strotss, nnst: theirs
        terms = ", ".join(f"{k} {final[k]:.4g}" for k in names)
        log.info(f"{label}: done in {summary['wall_time']:.1f}s{shared}, {summary['evals_per_second']:.2f} evals/s on "
                 f"{summary['device']}; total {final['total']:.4g} ({terms}) -> {trial.run_dir / 'final.png'}")
    else:
        detail = f" (traceback: {trial.run_dir / 'error.log'})" if (trial.run_dir / "error.log").exists() else ""
        log.error(f"{label}: failed: {summary.get('error', 'unknown error')}{detail}")


def wandb_tags(resolved: dict) -> list[str]:
    return [resolved.get("sweep_name"), resolved["model"]["arch"], resolved["model"]["weights"],
            resolved["optimizer"]["name"], *list(resolved["wandb"].get("tags") or [])]


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # the command itself (`nst`, `python -m nst.run`), not a caller's function call
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["judge"]:  # `nst judge <sweep folder>`: the judging page (nst.judge)
        from nst.judge import main as judge_main
        return judge_main(argv[1:])
    text = compose.quick_help(argv)
    if text is not None:
        print(text)
        return 0
    started = time.time()
    outputs = APP.outputs  # filled in as the command's folders become known
    with _stopped_by_signals() as stop:
        try:
            try:
                checked = preflight.checked(argv, APP.stage)
            except InputError as e:
                print(f"nst: error: {e}", file=sys.stderr)
                return 2
            except OSError as e:  # a path the system refuses (a name too long, a full disk): nothing ran
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                print(f"nst: error: {_os_error(e, outputs)}", file=sys.stderr)
                return 2
            _estimate(checked)
            _SweepProgress.start(checked)
            outputs.update(checked.outputs)
            try:
                # A file the command itself cannot write (Hydra's multirun.yaml, the sweep folder's
                # records on a full disk) stops it: one line, not Hydra's traceback. A trial's own
                # files fail only that trial (nst.engine, the launcher).
                with raised((OSError,)):
                    app()
                if stop.signum is not None:  # its KeyboardInterrupt was swallowed (nst.interrupt)
                    stop.trials_ended = True
                    raise KeyboardInterrupt
            finally:
                _SweepProgress.stop()
                from nst.wandb_sink import teardown

                teardown()
        except KeyboardInterrupt:
            signum = stop.signum or signal.SIGINT
            print(_stopped_line(signum, compose.split_argv(argv)[0], outputs, stop.trials_ended), file=sys.stderr)
            if own_process:
                _leave(128 + signum)
            return 128 + signum
        except OSError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"nst: error: {_os_error(e, outputs)}; the command stopped (what it had written is kept)", file=sys.stderr)
            return 1
    result = outcome(outputs, started, checked.owned)
    if result.skipped:
        print(f"resumed: {result.skipped} trial(s) had already completed with the same config and were skipped")
    for out in sorted(outputs):
        print(f"outputs: {out}")
    from nst.wandb_sink import sync_line

    line = sync_line(sorted(outputs))  # W&B offline (the default without a login): say how to upload
    if line:
        print(line)
    if result.failed:
        print(f"nst: {len(result.failed)} trial(s) failed: {'; '.join(result.failed)}", file=sys.stderr)
        return 1
    return 0


class _SweepProgress:
    """The sweep-wide bar above the trials' bars: trials done of all, evaluations done of all, elapsed
    time and what is left at the pace so far. It lives in the command's own process and counts the
    trials that run there (the nst launcher in this process); trials in worker processes or SLURM tasks
    are counted by the launcher's own line as each batch ends. NST_PROGRESS=0 turns it off, as the
    trials' bars."""

    _current: _SweepProgress | None = None

    def __init__(self, trials: list) -> None:
        from tqdm import tqdm

        self.pid = os.getpid()
        self.trials = len(trials)
        self.per_trial: dict[Path, int] = {}  # run folder -> evaluations counted (a retried attempt starts again at 0)
        self.mean_steps = sum(s.total_steps for s in trials) / max(1, len(trials))
        self.finished: set = set()
        self.bar = tqdm(total=sum(s.total_steps for s in trials), desc=f"sweep: 0/{len(trials)} trials done", unit="eval",
                        file=sys.stderr, dynamic_ncols=True, position=0, leave=True,
                        bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} evaluations [{elapsed} elapsed, {remaining} left]")

    @classmethod
    def start(cls, checked) -> None:
        if os.environ.get("NST_PROGRESS", "") == "0" or checked.search or not checked.runs_here or len(checked.settings) < 2:
            return
        cls._current = cls(checked.settings)

    @classmethod
    def current(cls) -> _SweepProgress | None:
        me = cls._current
        return me if me is not None and me.pid == os.getpid() else None

    @classmethod
    def stop(cls) -> None:
        if cls._current is not None:
            cls._current.bar.close()
            cls._current = None

    def _describe(self) -> None:
        self.bar.set_description_str(f"sweep: {len(self.finished)}/{self.trials} trials done", refresh=True)

    def count(self, run_dir: Path, evaluations: int) -> None:
        before = self.per_trial.get(run_dir, 0)
        if evaluations > before:
            self.per_trial[run_dir] = evaluations
            self.bar.update(evaluations - before)

    def done(self, run_dir: Path, steps: int | None = None) -> None:
        if run_dir in self.finished:
            return
        self.finished.add(run_dir)
        # a trial that stopped early (a tolerance), failed, or was skipped: its remaining evaluations are done
        self.count(run_dir, round(steps if steps is not None else self.mean_steps))
        self._describe()

    def sink(self, run_dir: Path, steps: int) -> _SweepSink:
        return _SweepSink(self, run_dir, steps)


class _SweepSink:
    """One trial's evaluations, counted into the sweep's bar."""

    def __init__(self, progress: _SweepProgress, run_dir: Path, steps: int) -> None:
        self.progress, self.run_dir, self.steps = progress, run_dir, steps

    def on_step(self, rec) -> None:
        self.progress.count(self.run_dir, rec.evaluation)

    def close(self, summary: dict) -> None:
        if summary.get("status") in ("completed", "failed"):  # not an attempt that is retried (out of memory)
            self.progress.done(self.run_dir, self.steps)


def _estimate(checked) -> None:
    """Before a long command starts, how long it will take here, and what a CPU-sized one would."""
    if not checked.settings or checked.search:
        return
    from nst.estimate import line

    text = line(checked.settings, checked.runs_here)
    if text:
        print(text, file=sys.stderr, flush=True)


# What ends a command as Ctrl-C does: SIGTERM is what `kill`, `timeout` and SLURM send, SIGHUP what a
# closed terminal or a lost SSH session sends.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def _stopped_by_signals():
    """SIGINT, SIGTERM and SIGHUP each raise KeyboardInterrupt in the command, as Ctrl-C does: the
    trials that were running are left without a summary (nst.engine), the launcher stops its worker
    processes and tasks (hydra_plugins/nst_launcher: stop()), and main() says which signal it was. A
    repeat while the command winds down is ignored (it must not cut that short), and so is any after
    it until the process is gone: Python's shutdown takes a moment (modules, W&B's service), and a
    second Ctrl-C there would kill it by the default handler (exit -2, W&B's lines after the prompt).
    A signal the command was started ignoring (nohup, a background job) stays ignored."""
    stop = interrupt.Stop()

    def handler(signum: int, frame) -> None:
        if stop.signum is None:
            stop.signum = signum
            if not stop.deferred:
                raise KeyboardInterrupt

    installed = {}
    if threading.current_thread() is threading.main_thread():  # only it may set handlers
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if previous is not signal.SIG_IGN:
                installed[sig] = previous
                signal.signal(sig, handler)
    interrupt.current = stop if installed else None
    unraisable = sys.unraisablehook

    def swallowed(info) -> None:
        # a stop signal's KeyboardInterrupt raised where Python cannot pass it on (a __del__, a
        # weakref callback): nst.interrupt.check() raises it again, so no "Exception ignored" traceback
        if not (installed and isinstance(info.exc_value, KeyboardInterrupt)):
            unraisable(info)

    sys.unraisablehook = swallowed
    try:
        yield stop
    finally:
        interrupt.current = None
        sys.unraisablehook = unraisable
        for sig, previous in installed.items():
            if stop.signum is not None:
                previous = signal.SIG_IGN  # stopping: from here on the process only exits
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


def _leave(code: int) -> None:
    """End the command's process now, with `code`, once its output is flushed: after a stop signal
    there is nothing left for Python's own shutdown to do (the workers are stopped, W&B's service
    torn down, the trials' files closed), and that shutdown could end it by SIGINT instead. CPython
    ends a process by SIGINT itself (SIGINT set back to its default, then sent to itself) when a
    process-wide flag says a KeyboardInterrupt went unhandled, and an exec() of source text that a
    Ctrl-C interrupts sets that flag even when the interrupt is then handled. About one interrupted
    sweep in forty exited -2 so (strace: rt_sigaction(SIGINT, SIG_DFL), kill(self, SIGINT), after
    main() had returned 130)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()  # Hydra's log files, flushed and closed
    os._exit(code)


@contextlib.contextmanager
def report_deferred():
    """Around the writing of the end-of-sweep report, once every trial has ended: a stop signal takes
    effect when the block ends, so that the report is the previous one or a whole new one, never
    part of each (its files are written one by one)."""
    stop = interrupt.current
    if stop is None or stop.signum is not None:
        yield
        return
    stop.trials_ended, stop.deferred = True, True
    try:
        yield
    finally:
        stop.deferred = False
        if stop.signum is not None:
            raise KeyboardInterrupt


def _os_error(e: OSError, outputs: set[str]) -> str:
    """A file the command itself could not write or read, in one line (a trial's own are the trial's)."""
    reason = e.strerror or str(e) or type(e).__name__
    if isinstance(e, WriteError):
        return str(e)
    if e.filename is not None:
        return f"{reason}: {e.filename}"
    # a write cut short (Hydra's multirun.yaml): the folder it was writing into
    return f"{reason} while writing into {' '.join(sorted(outputs)) or 'the output folder'}"


def _stopped_line(signum: int, multirun: bool, outputs: set[str], trials_ended: bool = False) -> str:
    name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name
    outs = " ".join(sorted(outputs))
    if trials_ended:
        return (f"nst: stopped by {name} after every trial had ended: none was left unfinished, and the sweep "
                f"report is whole (the previous one or the new one) ({outs})")
    if not outs:
        return f"nst: stopped by {name} before any trial started"
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    return (f"nst: interrupted by {name}; the trials that were running were left unfinished (no summary.json or "
            f"final.png) and run again on resume: run the same command with {key}=<its folder> ({outs})")


if __name__ == "__main__":
    # Run from the imported module, not from this `__main__` copy of it: the app (NstApp) then lives
    # in `nst.run` in every process, which is what a worker process or a SLURM task unpickles it as.
    from nst.run import main as _main

    sys.exit(_main())
