"""hydra/sweeper=optuna: an Optuna search through Optuna's ask-and-tell interface, its study kept in a
journal file inside the sweep folder.

Each round asks Optuna for `n_jobs` trials and hands them to the launcher together (the project's
launcher runs them as one batch); each trial's objective (nst.search, returned by the app) is told
back. The study lives in `<sweep dir>/optuna.journal` (Optuna's JournalStorage, file backend, with a
lock that works on network file systems), or in the database a `storage` URL names. So:
- the same command run again into the same sweep folder (hydra.sweep.dir) continues the search:
  `n_trials` is the total, finished trials are not run again, and a trial that a killed command left
  running on this machine is marked failed and proposed again (its parameters re-enqueued);
- several commands (several SLURM jobs) can share one study: each asks under the journal's lock,
  so together they run `n_trials` trials, none twice;
- `optuna-dashboard <sweep dir>/optuna.journal` shows it.

The journal is read before it is appended to: a last line cut short (a full disk, a command killed
mid-write) is removed, saying so once, for an append onto it would corrupt every later line; a journal
Optuna cannot read (a line that is not a record, a binary file) is refused in one line naming it. A
trial that a command asked for and could not start (a search space the study cannot take) is failed
at once; one left stopped (Ctrl-C, a dead command) has its folder marked superseded in its
summary.json (`status: superseded`), its parameters proposed again under a new number.

The search space keeps the syntax of Hydra's Optuna sweeper: `interval(a, b)` (floats),
`tag(log, interval(a, b))`, `tag(int, interval(a, b))`, `choice(a, b, ...)`, `range(a, b[, step])`, from
`hydra.sweeper.params` or sweep overrides on the command line; plain values are fixed.
"""


import contextlib
import json
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.nst_launcher._processes import pid_alive
from hydra_plugins.nst_launcher.contract import ReadsResults

log = logging.getLogger(__name__)

JOURNAL = "optuna.journal"
SAMPLERS = ("tpe", "random", "cmaes")
# Who ran a trial: a RUNNING trial whose owner is a dead process of this machine was lost.
OWNER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random | cmaes
    seed: int | None = 0


@dataclass
class NstOptunaSweeperConf:
    _target_: str = "hydra_plugins.nst_sweeper.optuna_sweeper.NstOptunaSweeper"
    direction: str = "minimize"  # minimize | maximize
    n_trials: int = 16  # the study's total, across every command that shares it
    n_jobs: int = 4  # trials asked together, run as one batch
    # a round fails the search when more than this fraction of its trials failed
    max_failure_rate: float = 0.5
    sampler: SamplerConf = field(default_factory=SamplerConf)
    # null: the journal file <sweep dir>/optuna.journal; a path to another journal file; or a
    # database URL (sqlite:///..., postgresql://...)
    storage: str | None = None
    study_name: str | None = None  # null: the sweep_name
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=NstOptunaSweeperConf, provider="nst")


class SearchConfigError(CompactHydraException, ValueError):
    """A bad search setting: one line (Hydra prints a compact exception's message alone)."""


class JournalError(ValueError):
    """A journal file Optuna cannot read: one line naming it."""


def read_journal(path: Path) -> int:
    """Check that every whole line of the journal at `path` is a record Optuna can read; returns the
    size of its whole lines (less than the file's when the last line was cut). Raises JournalError."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise JournalError(f"{path} cannot be read ({e.strerror or e})") from None
    whole = data.rfind(b"\n") + 1
    for number, line in enumerate(data[:whole].splitlines(), start=1):
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            record = None
        if not isinstance(record, dict) or "op_code" not in record:
            raise JournalError(f"{path} is not an Optuna journal that can be read (line {number} is not a journal "
                               "record); move it away, or give another hydra.sweep.dir") from None
    return whole


def repair_journal(path: Path) -> str | None:
    """Remove a cut last line from the journal (under its own lock, as Optuna appends): appending onto
    it would make the next record unreadable, and with it the study. Returns what was done, or None."""
    from optuna.storages.journal import JournalFileOpenLock

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = JournalFileOpenLock(str(path))
    lock.acquire()
    try:
        whole = read_journal(path)
        size = path.stat().st_size
        if whole == size:
            return None
        with open(path, "r+b") as f:
            f.truncate(whole)
            f.flush()
            os.fsync(f.fileno())
    finally:
        lock.release()
    return (f"{path}: its last line was cut short (a full disk or a stopped command); removed it ({size - whole} "
            "bytes), the records before it kept")


def distribution(override: Override):
    """An Optuna distribution for one sweep override, or None for a plain value."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key, value = override.get_key_element(), override.value()
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        assert value.start is not None and value.end is not None  # interval(a, b): the grammar wants both
        if "int" in value.tags:  # Hydra reads an interval's ends as floats
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if isinstance(start, int) and isinstance(stop, int) and isinstance(step, int) and step > 0 and "log" not in value.tags:
            # range's stop is exclusive: the last value it yields
            return IntDistribution(start, start + (stop - start - 1) // step * step, step=step)
    if isinstance(value, (RangeSweep, ChoiceSweep)):
        # Optuna takes None, bools, numbers and strings, and warns about any other choice
        choices: list[Any] = list(override.sweep_iterator())
        return CategoricalDistribution(choices)
    if override.is_sweep_override():
        raise SearchConfigError(f"{key}: a search cannot sample {value!r}; use interval(), choice() or range()")
    return None


def search_space(parser: OverridesParser, params: dict[str, str], arguments: list[str]) -> tuple[dict, list[str]]:
    """(name -> distribution, the fixed overrides every trial gets): hydra.sweeper.params first, the
    command line's overrides after (they win)."""
    space: dict = {}
    fixed: dict = {}
    for override in parser.parse_overrides([f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)):
        key = override.get_key_element()
        dist = distribution(override)
        space.pop(key, None), fixed.pop(key, None)
        if dist is None:
            fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
        else:
            space[key] = dist
    if not space:
        raise SearchConfigError("hydra.sweeper.params: a search needs at least one parameter to sample, "
                                "e.g. style_weight=tag(log,interval(1e2,1e8))")
    return space, list(fixed.values())


def make_sampler(conf: Any, offset: int = 0):
    """The sampler for one round. Its seed is offset by the trials the study already has (counted
    under the ask lock): a resumed command, or a second command on a shared study, would otherwise
    draw the same first proposals again; a new study's first round keeps the configured seed."""
    import optuna

    name, seed = conf.get("name", "tpe"), conf.get("seed")
    seed = None if seed is None else int(seed) + offset
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise SearchConfigError(f"hydra.sweeper.sampler.name: unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")


def open_storage(storage: str | None, sweep_dir: Path):
    """(Optuna storage, a lock that serialises asking between commands, where it lives)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    # Counting, recovering and asking are serialised between the commands of one sweep folder by a
    # lock file there (an open lock creates it with O_EXCL: it holds on network file systems, where
    # flock may not), whatever the storage; so one round's trial numbers are consecutive.
    # (a lock left by a killed command is broken after Optuna's 30 s grace period)
    ask_lock = JournalFileOpenLock(str(sweep_dir / (JOURNAL + ".ask")))
    if storage and "://" in storage:
        return optuna.storages.RDBStorage(storage), ask_lock, storage
    path = Path(storage).expanduser() if storage else sweep_dir / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        repaired = repair_journal(path)
    except JournalError as e:
        raise SearchConfigError(f"hydra.sweeper.storage: {e}") from None
    if repaired:
        log.warning(repaired)
    backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    return optuna.storages.JournalStorage(backend), ask_lock, str(path)


def _alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's command: it cannot be checked from here, so it is left running
    return pid_alive(int(pid))


def recover_lost(study) -> list[int]:
    """Trials left RUNNING by a command of this machine that has died: each is failed and its
    parameters enqueued again (a trial marked `retry_of`). Returns their numbers."""
    from optuna.trial import TrialState

    lost = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "owner" not in t.user_attrs:
            # asked but never started (the ask failed, or the command died between asking and naming
            # its owner): under the ask lock no command is between the two, so no one owns it. It
            # does not use up one of n_trials.
            study._storage.set_trial_user_attr(t._trial_id, "never_started", True)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            continue
        if not _alive(t.user_attrs.get("owner", "")):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            lost.append(t.number)
    return lost


def counted(study) -> int:
    """Trials that count towards n_trials: finished or running, less each lost one that a retry
    (a trial marked `retry_of`, in whatever state) replaces, and those never started."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    used = sum(t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING) for t in trials)
    return used - sum("retry_of" in t.user_attrs or "never_started" in t.user_attrs for t in trials)


class NstOptunaSweeper(Sweeper, ReadsResults):
    """ReadsResults: a failed trial must reach it as a failure (it is told FAIL and counted), not as None."""

    # Hydra calls setup() before sweep(): set there
    hydra_context: HydraContext
    config: DictConfig
    launcher: Launcher

    def __init__(self, direction: str, n_trials: int, n_jobs: int, max_failure_rate: float, sampler: Any,
                 storage: str | None, study_name: str | None, params: dict[str, str] | None) -> None:
        super().__init__()
        if direction not in ("minimize", "maximize"):
            raise SearchConfigError(f"hydra.sweeper.direction: {direction!r}; allowed: minimize, maximize")
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if type(value) is not int or value < 1:
                raise SearchConfigError(f"hydra.sweeper.{key} must be an integer >= 1, got {value!r}")
        self.direction: Literal["minimize", "maximize"] = "maximize" if direction == "maximize" else "minimize"
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.max_failure_rate, self.sampler_conf = float(max_failure_rate), sampler
        self.storage, self.study_name, self.params = storage, study_name, dict(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> Any:
        try:
            import optuna
        except ImportError as e:
            raise SearchConfigError("hydra/sweeper=optuna needs Optuna: pip install '.[search]' in a clone") from e
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space, fixed = search_space(parser, self.params, arguments)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")
        storage, ask_lock, where = open_storage(self.storage, self.sweep_dir)
        name = self.study_name or str(self.config.get("sweep_name") or "nst")
        study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(self.sampler_conf),
                                    direction=self.direction, load_if_exists=True)
        log.info(f"Optuna {optuna.__version__} study '{name}' in {where}: {counted(study)} of {self.n_trials} "
                 "trials counted")
        returns, ran, failed = [], 0, 0
        while True:
            ask_lock.acquire()
            try:
                # under the lock, each round: a command that died meanwhile (this machine) gives its
                # trials back, and no two commands recover the same one
                lost = recover_lost(study)
                for number in lost:
                    supersede(self.sweep_dir, number)
                if lost:
                    log.info(f"trial(s) {', '.join(map(str, lost))} left running by a dead command: failed, "
                             "proposed again")
                left = self.n_trials - counted(study)
                study.sampler = make_sampler(self.sampler_conf, offset=len(study.get_trials(deepcopy=False)))
                trials = []
                with _ctrl_c_deferred():
                    for _ in range(min(self.n_jobs, left)):
                        try:
                            trials.append(study.ask(space))
                        except Exception as e:  # noqa: BLE001 - a space the study cannot take: one line below
                            recover_lost(study)  # the trial it made, ownerless, is failed
                            for t in trials:
                                study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
                            text = (str(e).strip().splitlines() or [type(e).__name__])[0]
                            raise SearchConfigError(f"hydra.sweeper.params: the study '{name}' in {where} cannot "
                                                    f"sample this search space ({text}); a changed search space "
                                                    "needs a new hydra.sweep.dir") from None
                        trials[-1].set_user_attr("owner", OWNER)
            finally:
                ask_lock.release()
            if not trials:
                break
            # what was sampled first: it names the trial's folder and label
            batch = [[f"{k}={_value(v)}" for k, v in t.params.items()] + fixed for t in trials]
            try:
                results = []
                # a job's number (its folder's prefix) is its trial's number: trials asked together are
                # consecutive but for re-enqueued ones, so each consecutive run is one launch
                for start, end in _runs([t.number for t in trials]):
                    results += list(self.launcher.launch(batch[start:end], initial_job_idx=trials[start].number))
            except BaseException:
                ask_lock.acquire()  # the retries' numbers are taken under the lock too
                try:
                    state = {x.number: x.state for x in study.get_trials(deepcopy=False)}
                    for t in trials:  # interrupted: these did not finish; a later command proposes them again
                        if state[t.number] == TrialState.RUNNING:
                            study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
                            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
                            supersede(self.sweep_dir, t.number)
                finally:
                    ask_lock.release()
                raise
            for t, ret, overrides in zip(trials, results, batch, strict=True):
                # (.return_value raises a failed job's exception: read only a completed one's)
                value = ret.return_value if ret.status == JobStatus.COMPLETED else None
                ran += 1
                if ret.status == JobStatus.COMPLETED and isinstance(value, (int, float)) and math.isfinite(value):
                    study.tell(t, float(value))
                else:
                    study.tell(t, state=TrialState.FAIL)
                    failed += 1
                    log.warning(f"Failed trial {t.number}: {' '.join(overrides)}")
            returns.append(results)
            # over every trial this command ran (a round's few trials alone would judge too early)
            if failed > self.max_failure_rate * max(ran, self.n_jobs):
                self._write_results(study)
                raise SearchConfigError(f"{failed} of the {ran} trials run failed (more than "
                                        f"hydra.sweeper.max_failure_rate={self.max_failure_rate:g}); see their error.log")
        self._write_results(study)
        return returns

    def _write_results(self, study) -> None:
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        results: dict = {"name": "optuna", "study_name": study.study_name, "direction": self.direction,
                         "n_trials": self.n_trials, "complete": len(complete),
                         "failed": len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))}
        if complete:
            best = study.best_trial
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")
        if complete:
            log.info(f"Best value {results['best_value']:.6g} (trial {results['best_trial']}): {results['best_params']}")


def supersede(sweep_dir: Path, number: int) -> None:
    """Mark the folder of a stopped trial, whose parameters are proposed again under a new number, as
    superseded in its summary.json: not a failure of the search, nor a result. A completed trial's
    summary (it finished before it could be told) and one that cannot be read are left as they are."""
    from nst import summary as trial_summary

    for d in sorted(Path(sweep_dir).glob(f"{number}_*")):
        summary = d / "summary.json"
        if not d.is_dir() or summary.is_symlink() or (summary.exists() and not summary.is_file()):
            continue
        found, unreadable = trial_summary.load(summary)
        if unreadable is not None or (found is not None and found.completed):
            continue
        marked = found or trial_summary.Summary(label=d.name.split("_", 1)[-1])
        marked.status = trial_summary.SUPERSEDED
        marked.superseded = "stopped before it finished; its parameters were proposed again as a new trial"
        try:
            trial_summary.write(summary, marked)
        except OSError as e:
            log.warning(f"{summary} could not be marked superseded ({e.strerror or e})")


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """Ctrl-C takes effect at the end of the block. Asking Optuna for a trial and naming its owner
    are two writes: a trial stopped between them is RUNNING with no owner, which no later command
    recovers (it may be another machine's). Stopped after them, the trial is recovered as lost.
    SIGTERM and SIGHUP wait likewise where the command handles them (nst.run turns them into Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals (and may set their handlers)
        return
    received: list = []
    previous = {}
    for sig in (getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)):
        if sig == signal.SIGINT or callable(signal.getsignal(sig)):
            previous[sig] = signal.signal(sig, lambda *args: received.append(args))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            handler = previous[received[0][0]]
            if handler is signal.default_int_handler:
                raise KeyboardInterrupt
            if callable(handler):
                handler(*received[0])


def _runs(numbers: list[int]) -> list[tuple]:
    """(start, end) index ranges of the consecutive runs in a list of trial numbers."""
    runs, start = [], 0
    for i in range(1, len(numbers) + 1):
        if i == len(numbers) or numbers[i] != numbers[i - 1] + 1:
            runs.append((start, i))
            start = i
    return runs


def _value(v: Any) -> str:
    """A sampled value as an override's text that Hydra reads back as the same value: floats in full
    precision, None as null, a string quoted where its bare text would read as something else."""
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        try:
            (parsed,) = OverridesParser.create().parse_overrides([f"k={v}"])
            if not parsed.is_sweep_override() and parsed.value() == v and isinstance(parsed.value(), str):
                return v
        except Exception:  # noqa: BLE001 - not valid bare: quoted below
            pass
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(v)
