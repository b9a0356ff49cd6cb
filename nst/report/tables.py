"""The sweep's trials as the report reads them (one TrialRecord per trial folder: its summary, its
metrics.jsonl rows, what of its files could not be read) and the report's tables: results.csv, the
swept axes, values written for people, and which results tie within the float-noise floor.

A file that cannot be read (a summary.json cut short, a cut metrics.jsonl line, a corrupt image) is
that trial's problem: recorded in its `problems`, with one warning naming the file.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf
from PIL import Image

from nst.metrics import BETTER, NOISE_FLOOR, SWD_SCALES
from nst.records import read_jsonl, trial_number
from nst.summary import Summary
from nst.summary import load as load_summary

log = logging.getLogger("nst")

# results.csv's metric columns: the fair judges first, then the per-scale style distances, then the
# two that are close to the default objective (nst.metrics says which is which)
METRICS = ("style_swd", "gmsd", "self_sim_dist", "psnr", "ssim", *(f"style_swd_{f}x" for f in SWD_SCALES), "gram_distance",
           "content_distance")
# Older sweep folders' summary.json hold `style_distance` (the Gram distance against the painting
# stretched to the photograph's shape): shown as it is, in its own column, where any trial has it,
# and ranked as the Gram distance is (lower is better, its floor).
LEGACY = {"style_distance": "gram_distance"}


@dataclass
class TrialRecord:
    """A trial folder of the sweep as the report reads it (nst.engine.Trial is a trial to run)."""

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


def _value(v) -> int | float | None:
    """A number from a record as it is (an int stays an int in results.csv), or None."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


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


def human(v: float) -> str:
    """Three significant digits, as people write them: 1e6, 3.27e10, 0.412, 47.6, 1230, 1.5e-4."""
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    exp = math.floor(math.log10(abs(v)))
    if round(abs(v), 2 - exp) >= 10 ** (exp + 1):  # 999.7 rounds up to the next power of ten
        exp += 1
    if -3 <= exp < 4 and not (exp == 3 and round(v, 2 - exp) % 1000 == 0):  # 1e3, 2e3 as sweeps are typed
        text = f"{round(v, 2 - exp):.{max(0, 2 - exp)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa = f"{v / 10 ** exp:.2f}".rstrip("0").rstrip(".")
    return f"{mantissa}e{exp}"


def value_text(text: str | None) -> str:
    """An override's value for people: a number written as `human` does (Hydra records 1e6 as
    1000000.0), anything else as it is."""
    text = "" if text is None else str(text)
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text.strip()):
        v = float(text)
        if math.isfinite(v) and not (v.is_integer() and abs(v) < 1e4 and "." not in text and "e" not in text.lower()):
            return human(v)
    return text


def label(trial: TrialRecord, keys: list[str]) -> str:
    return ", ".join(f"{k}={value_text(trial.overrides.get(k, ''))}" for k in keys) or trial.path.name


# ------------------------------------------------------------------------------------------ table


def results_table(trials: list[TrialRecord], axes) -> pd.DataFrame:
    records = []
    for t in trials:
        s = t.summary
        rec = {"trial": t.path.name, "num": t.num}
        rec.update({k: t.overrides.get(k) for k, _ in axes})
        rec["status"] = t.status
        rec["error"] = s.error if s.error is not None else ""
        rec["problem"] = "; ".join(t.problems)  # files of the trial that could not be read
        for term in ("total", "content", "style", "tv"):
            rec[f"final_{term}"] = _value(s.final.get(term))
        for m in METRICS + tuple(k for k in LEGACY if any(k in x.summary.metrics for x in trials)):
            rec[m] = _value(s.metrics.get(m))
        for key in ("evaluations", "wall_time", "evals_per_second", "peak_memory_mb"):
            rec[key] = _value(getattr(s, key))
        rec["device"] = s.device
        if any(x.summary.objective for x in trials):
            rec["objective"] = s.objective.value if s.objective else None
        records.append(rec)
    return pd.DataFrame.from_records(records)


# ------------------------------------------------------------------------------------------- ties


TIE = "\u2248"  # "≈" in report.html: within the float-noise floor of the best


def floor_of(metric: str) -> float:
    return NOISE_FLOOR[LEGACY.get(metric, metric)]


def tied_with_best(trials: list[TrialRecord], metric: str) -> set[str]:
    """The completed trials whose `metric` is within its float-noise floor (nst.metrics.NOISE_FLOOR,
    relative) of the best one's (lowest distance, highest PSNR or SSIM), when there are two or more:
    they tie, their order says nothing that float noise could not change; empty when the best stands
    alone beyond the floor."""
    values = {t.path.name: v for t in trials if t.status == "completed"
              and (v := number(t.summary.metrics.get(metric))) is not None}
    if len(values) < 2:
        return set()
    best = (min if BETTER[LEGACY.get(metric, metric)] == "min" else max)(values.values())
    band = {name for name, v in values.items() if abs(v - best) <= floor_of(metric) * abs(best)}
    return band if len(band) > 1 else set()
