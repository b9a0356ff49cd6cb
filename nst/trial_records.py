"""A sweep's trial folders read back: one TrialRecord per folder (its summary, its metrics.jsonl
rows, what of its files could not be read), for the report (nst.report) and the judging page
(nst.judging) alike.

A file that cannot be read (a summary.json cut short, a cut metrics.jsonl line, a corrupt image) is
that trial's problem: recorded in its `problems`, with one warning naming the file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from PIL import Image

from nst.records import read_jsonl, trial_number
from nst.summary import Summary
from nst.summary import load as load_summary

log = logging.getLogger("nst")


@dataclass
class TrialRecord:
    """A trial folder of the sweep as read back (nst.engine.Trial is a trial to run)."""

    path: Path
    num: int
    overrides: dict[str, str]
    summary: Summary  # an empty one (no status) when it has none or it cannot be read
    status: str  # the summary's, "unfinished" without one, "unreadable" when it cannot be read
    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "<file>: what is wrong with it", one per unreadable file

    @property
    def final(self) -> Path:
        return self.path / "final.png"

    @property
    def folder_unreadable(self) -> bool:
        return any(p.startswith(".: ") for p in self.problems)


IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def number(v) -> float | None:
    """A finite number from a record, or None (a hand-edited or damaged file may hold anything)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def objective_value(t: TrialRecord) -> float | None:
    """The trial's recorded objective (a search's), when it is a finite number."""
    return number(t.summary.objective.value) if t.summary.objective else None


def objective_name(t: TrialRecord) -> str:
    return t.summary.objective.name if t.summary.objective else "objective"


def reason(e: BaseException) -> str:
    return (str(e).strip() or type(e).__name__).splitlines()[0]


def _overrides(path: Path, summary: Summary, problems: list[str]) -> dict[str, str]:
    """The trial's overrides: its summary's (written with its files, as a unit), else Hydra's record."""
    items: list | None = summary.overrides
    if items is None:
        f = path / ".hydra" / "overrides.yaml"
        items = []
        if f.exists():
            try:
                items = list(OmegaConf.load(f))
            except Exception as e:  # noqa: BLE001 - a damaged file is the trial's problem, not the report's
                problems.append(f".hydra/overrides.yaml: unreadable ({reason(e)})")
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        if key.lstrip("+~") in ("sweep", "sweep_name", "search"):
            continue
        out[key.lstrip("+~")] = value
    return out


def _metrics_rows(path: Path, problems: list[str]) -> list[dict]:
    """metrics.jsonl's rows; a line that is cut or not a row is left out and noted."""
    if not path.exists():
        return []
    try:
        parsed, count = read_jsonl(path)
    except OSError as e:
        problems.append(f"metrics.jsonl: unreadable ({reason(e)})")
        return []
    rows, bad = [], []
    for n, row in parsed:
        if isinstance(row, dict) and number(row.get("evaluation")) is not None:
            rows.append(row)
        else:
            bad.append(n)
    if bad:
        which = f"line {bad[0]} is" if len(bad) == 1 else f"{len(bad)} lines are (first: line {bad[0]})"
        cut = " (cut short?)" if bad == [count] else ""
        problems.append(f"metrics.jsonl: {which} not a JSON row{cut}; left out")
    return rows


def _check_final(t: TrialRecord) -> None:
    """A completed trial's final.png must be there and decode."""
    if t.status != "completed":
        return
    if not t.final.exists():
        t.problems.append("final.png: missing")
        return
    try:
        with Image.open(t.final) as im:
            im.load()
    except IMAGE_ERRORS as e:
        t.problems.append(f"final.png: unreadable ({reason(e)})")


def load_trials(sweep_dir: Path, warn: Callable[[str], None] | None = None) -> list[TrialRecord]:
    """Every trial folder of the sweep. A file that cannot be read is recorded in the trial's
    `problems`, and `warn` (default: the log) gets one line naming it; a trial folder that cannot be
    read at all (permissions, a damaged disk) is a trial with status "unreadable"."""
    warn = warn or log.warning
    trials: list[TrialRecord] = []
    for d in sorted(Path(sweep_dir).iterdir()):
        num = trial_number(d)
        num = len(trials) if num is None else num
        try:
            if not d.is_dir() or not (d / ".hydra").is_dir() and not (d / "summary.json").exists():
                continue
            t = _load_trial(d, num)
        except OSError as e:  # the folder itself cannot be listed or its files stat'ed
            if d.name.startswith(".") or not d.is_dir():
                continue
            problem = f".: the folder is unreadable ({reason(e)})"
            t = TrialRecord(d, num, {}, Summary(schema_version=0), "unreadable", [], [problem])
        for problem in t.problems:
            warn(warning(t, problem))
        trials.append(t)
    return sorted(trials, key=lambda t: t.num)


def _load_trial(d: Path, num: int) -> TrialRecord:
    problems: list[str] = []
    loaded, unreadable = load_summary(d / "summary.json")
    summary = loaded or Summary(schema_version=0)
    if unreadable is not None:
        problems.append(f"summary.json: {unreadable}")
    status = "unreadable" if unreadable is not None else summary.status or "unfinished"
    rows = _metrics_rows(d / "metrics.jsonl", problems)
    t = TrialRecord(d, num, _overrides(d, summary, problems), summary, status, rows, problems)
    _check_final(t)
    return t


def warning(t: TrialRecord, problem: str) -> str:
    name, _, what = problem.partition(": ")
    return f"{t.path if name == '.' else t.path / name}: {what} (the trial is marked in the report)"


def swept_axes(trials: list[TrialRecord]) -> list[tuple[str, list[str]]]:
    """The override keys whose values differ between trials, each with its values in sweep order."""
    axes: dict[str, list[str]] = {}
    for t in trials:
        for k, v in t.overrides.items():
            values = axes.setdefault(k, [])
            if v not in values:
                values.append(v)
    return [(k, v) for k, v in axes.items() if len(v) > 1]
