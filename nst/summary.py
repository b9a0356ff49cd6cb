"""A trial's summary.json: what it was (label, overrides, config, settings), where and how it ran, what
it came to (status, final loss terms, metrics, times, memory) and, in a search, its objective.

It is the contract between the runner that writes it and everything that reads it (the sweep report,
resume, W&B, searches, judging, the Python API, the benchmarks): it is written and read only here,
as a `Summary`. The JSON keys are those nst has always written, plus `schema_version`; a summary
written before the version existed reads as version 0. Reading never fails on what a person or a
damaged disk left in the file: a value of the wrong type reads as absent and is kept, as it was, in
`extra` with the keys nst does not know, so a summary read and written again loses nothing.

Also here, because they are read from summaries alone: the objective a search minimises (one place:
the app returns it to the sweeper and records it, the W&B sink logs it), a failure recorded over an
earlier attempt, and what a command's trials came to (its exit status and resume count).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nst import records, search

SCHEMA_VERSION = 1
FILE = "summary.json"
# A trial folder whose trial was stopped and proposed again under another number (a search): its
# summary.json says so, and it is neither a failure nor a result.
SUPERSEDED = "superseded"


@dataclass
class Batch:
    """The batch a trial ran in: trials of one batch shared every forward/backward pass."""

    id: str
    size: int
    position: int


@dataclass
class Level:
    """One pyramid level (coarse to fine); a run without a pyramid has one."""

    size: list[int]  # [W, H]
    evaluations: int
    stop_reason: str
    optimizer_state: str | None = None  # pyramid.carry_optimizer: "fresh", "carried", or why L-BFGS restarts


@dataclass
class Score:
    """What a search minimises (`objective` in the config), as recorded for one completed trial."""

    name: str
    value: float


@dataclass
class Summary:
    schema_version: int = SCHEMA_VERSION  # 0: written before summaries had a version
    status: str | None = None  # running | completed | failed | interrupted | retried | superseded
    started_at: str | None = None  # ISO 8601, UTC
    label: str | None = None  # the trial's overrides, joined: how the logs and W&B name it
    overrides: list[str] | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the resolved Hydra config (a command's trials)
    inputs: dict[str, Any] = field(default_factory=dict)  # what the Python API was given (nst.api)
    job_num: int | None = None
    process: dict[str, Any] = field(default_factory=dict)  # host, pid (and GPU, SLURM job) that ran it
    settings: dict[str, Any] = field(default_factory=dict)  # the validated settings (nst.settings.Settings)
    batch: Batch | None = None
    device: str | None = None
    precision: str | None = None
    cpu_threads: int | None = None
    device_name: str | None = None
    compile: str | None = None
    levels: list[Level] = field(default_factory=list)
    optimizer_state_mb: float | None = None
    optimizer_history_mb: float | None = None
    optimisation_time: float | None = None  # seconds in the optimiser, every level
    image_size: list[int] | None = None  # [W, H] of final.png
    metrics: dict[str, float | None] = field(default_factory=dict)  # nst.metrics: the standardised judges
    final: dict[str, float] = field(default_factory=dict)  # the saved image's loss terms (total, per layer)
    evaluations: int | None = None  # objective evaluations over every level: the unit of cost
    stop_reason: str | None = None
    evals_per_second: float | None = None
    error: str | None = None  # a failed trial's one line
    wall_time: float | None = None  # seconds for the whole trial, setting up its images included
    finished_at: str | None = None
    finished_unix: float | None = None  # tells a later command's resume what it did not run itself
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    sink_errors: list[str] = field(default_factory=list)  # a sink that failed to close (the trial's result stands)
    objective: Score | None = None
    superseded: str | None = None  # why a search's trial was stopped and proposed again (status superseded)
    # keys nst does not know (a newer nst's, a person's) and values of the wrong type, as they were
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        """summary.json's object: unset fields (None, empty) are left out, as nst always wrote them."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is None or v == [] or v == {}:
                if f.name in self.extra:  # a value of the wrong type, read and kept as it was
                    out[f.name] = self.extra[f.name]
                continue
            out[f.name] = dataclasses.asdict(v) if isinstance(v, (Batch, Score)) else \
                [_level_dict(x) for x in v] if f.name == "levels" else v
        out.update({k: v for k, v in self.extra.items() if k not in _FIELDS})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        """A summary from summary.json's object (or a record being built). Never raises: a value of
        the wrong type reads as absent (kept in `extra`), an unknown key is kept in `extra`."""
        s = cls()
        for key, raw in data.items():
            kind = _KINDS.get(key)
            value = _MISSING if kind is None or raw is None else kind(raw)
            if value is _MISSING:
                if raw is not None or key not in _FIELDS:
                    s.extra[key] = raw
            else:
                setattr(s, key, value)
        return s


_MISSING = object()


def _level_dict(level: Level) -> dict[str, Any]:
    d = dataclasses.asdict(level)
    if d["optimizer_state"] is None:
        del d["optimizer_state"]
    return d


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str(v: Any) -> Any:
    return v if isinstance(v, str) else _MISSING


def _int(v: Any) -> Any:
    return v if isinstance(v, int) and not isinstance(v, bool) else _MISSING


def _float(v: Any) -> Any:
    return float(v) if _is_number(v) else _MISSING


def _mapping(v: Any) -> Any:
    return v if isinstance(v, dict) else _MISSING


def _ints(v: Any) -> Any:
    return list(v) if isinstance(v, list) and all(_int(x) is not _MISSING for x in v) else _MISSING


def _strs(v: Any) -> Any:
    return list(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else _MISSING


def _numbers(v: Any) -> Any:
    ok = isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) for k, x in v.items())
    return {k: float(x) for k, x in v.items()} if ok else _MISSING


def _numbers_or_none(v: Any) -> Any:
    ok = isinstance(v, dict) and all(isinstance(k, str) and (x is None or _is_number(x)) for k, x in v.items())
    return {k: None if x is None else float(x) for k, x in v.items()} if ok else _MISSING


def _batch(v: Any) -> Any:
    if isinstance(v, dict) and isinstance(v.get("id"), str) and _int(v.get("size")) is not _MISSING \
            and _int(v.get("position")) is not _MISSING and set(v) == {"id", "size", "position"}:
        return Batch(v["id"], v["size"], v["position"])
    return _MISSING


def _level(v: Any) -> Level | None:
    if not isinstance(v, dict) or not set(v) <= {"size", "evaluations", "stop_reason", "optimizer_state"}:
        return None
    state = v.get("optimizer_state")
    if _ints(v.get("size")) is _MISSING or _int(v.get("evaluations")) is _MISSING \
            or not isinstance(v.get("stop_reason"), str) or not (state is None or isinstance(state, str)):
        return None
    return Level(list(v["size"]), v["evaluations"], v["stop_reason"], state)


def _levels(v: Any) -> Any:
    levels = [_level(x) for x in v] if isinstance(v, list) else [None]
    return levels if all(x is not None for x in levels) else _MISSING


def _score(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"name", "value"} and isinstance(v["name"], str) and _is_number(v["value"]):
        return Score(v["name"], float(v["value"]))
    return _MISSING


# How each key of summary.json reads: its value, or _MISSING when it is of another type.
_KINDS = {
    "schema_version": _int, "status": _str, "started_at": _str, "label": _str, "overrides": _strs,
    "config": _mapping, "inputs": _mapping, "job_num": _int, "process": _mapping, "settings": _mapping,
    "batch": _batch, "device": _str, "precision": _str, "cpu_threads": _int, "device_name": _str, "compile": _str,
    "levels": _levels, "optimizer_state_mb": _float, "optimizer_history_mb": _float, "optimisation_time": _float,
    "image_size": _ints, "metrics": _numbers_or_none, "final": _numbers, "evaluations": _int, "stop_reason": _str,
    "evals_per_second": _float, "error": _str, "wall_time": _float, "finished_at": _str, "finished_unix": _float,
    "peak_memory_mb": _float, "peak_memory_kind": _str, "sink_errors": _strs, "objective": _score,
    "superseded": _str,
}
_FIELDS = {f.name for f in dataclasses.fields(Summary)} - {"extra"}
assert set(_KINDS) == _FIELDS, "every field of Summary reads through _KINDS"


# --------------------------------------------------------------------------------------- the file


def write(path: Path, summary: Summary) -> None:
    """Write summary.json so that a reader sees the old file or the new one, never a part; raises
    nst.records.WriteError naming the file."""
    records.write_bytes_atomic(Path(path), json.dumps(summary.to_dict(), indent=2, default=str).encode("utf-8"))


def load(path: Path) -> tuple[Summary | None, str | None]:
    """(the summary in the summary.json at `path`, None); (None, None) when there is none; (None, why)
    when it cannot be read (cut short, not JSON, not an object)."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        return None, "a folder, where nst keeps a file: move it away"
    except (OSError, ValueError) as e:
        text = (getattr(e, "strerror", None) or str(e) or type(e).__name__).splitlines()[0]
        return None, f"unreadable ({text})"
    if not isinstance(data, dict):
        return None, f"unreadable (a JSON {type(data).__name__}, not an object)"
    return Summary.from_dict({"schema_version": 0, **data}), None


def read(path: Path) -> Summary:
    """The summary in the summary.json at `path`; an empty one (no status) when there is none or it
    cannot be read."""
    return load(path)[0] or Summary(schema_version=0)


# ---------------------------------------------------------------------------------- the objective


def score(summary: Summary) -> Score | None:
    """The objective of a completed trial whose config names one (`objective`), or None: the one
    place it is computed (the app records it and returns it to the sweeper; the W&B sink logs it)."""
    name = summary.config.get("objective")
    if not summary.completed or not name:
        return None
    target = summary.config.get("target_psnr")  # validated with the config (nst.search.check)
    return Score(str(name), search.value(str(name), summary, math.nan if target is None else float(target)))


# ------------------------------------------------------------------------- failures and outcomes


def record_failure(run_dir: Path, summary: Summary) -> None:
    """A trial failed without the runner ending an attempt at it (its input refused when it was
    proposed, its batch lost with a worker process): record `summary` as that attempt's, replacing
    an earlier attempt's files as a unit. What a staged attempt wrote replaces them; a folder with a
    summary.json holds a finished earlier attempt, whose files go; files without one are the failed
    attempt's own (written in place) and stay. Raises WriteError when summary.json cannot be written."""
    run_dir = Path(run_dir)
    if (run_dir / records.STAGING).is_dir():
        out = run_dir / records.STAGING
    elif (run_dir / FILE).exists():
        out = records.begin_attempt(run_dir)
    else:
        out = run_dir
    records.promote_attempt(run_dir, out)
    write(run_dir / FILE, summary)


@dataclass
class Outcome:
    failed: list[str] = field(default_factory=list)  # "label: error" per failed or unfinished trial
    skipped: int = 0  # trials that had completed before this command started (resume)
    completed: int = 0


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _ran_since(d: Path, summary: Summary | None, since: float) -> bool:
    """A search's trial that this command ran: finished since it started, or unfinished and made since."""
    finished = _finite(summary.finished_unix) if summary is not None else None
    if finished is not None:
        return finished >= since
    try:
        return os.stat(d).st_mtime >= since - 1
    except OSError:
        return True


def outcome(folders, since: float, owned: dict[str, set[int] | None] | None = None) -> Outcome:
    """The trials in `folders` that this command names (`owned`, by folder: nst.preflight.Checked.owned;
    a folder not in it is read whole); `since`: when it started (time.time())."""
    out = Outcome()
    for folder in sorted(set(map(str, folders))):
        own = (owned or {}).get(str(Path(folder).resolve()), ...)
        for d in records.trial_folders(Path(folder)):
            if own is not ... and own is not None and records.trial_number(d) not in own and d != Path(folder):
                continue
            s, problem = load(d / FILE)
            if own is None and not _ran_since(d, s, since):
                continue
            label = (s.label if s is not None else None) or d.name
            if s is None and problem is not None:
                out.failed.append(f"{label}: {d / FILE} is {problem}")
            elif s is None:
                out.failed.append(f"{label}: did not finish (no summary.json in {d})")
            elif s.status == SUPERSEDED:
                continue
            elif s.completed:
                out.completed += 1
                out.skipped += (_finite(s.finished_unix) or 0) < since
            elif s.status == "failed":
                out.failed.append(f"{label}: {s.error if s.error is not None else 'unknown error'}")
            else:
                out.failed.append(f"{label}: did not finish (no summary.json in {d})")
    return out
