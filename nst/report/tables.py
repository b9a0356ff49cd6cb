"""The report's tables: results.csv, values written for people, and which results tie within the
float-noise floor (the trials themselves are read by nst.trial_records)."""

from __future__ import annotations

import math
import re

import pandas as pd

from nst.metrics import BETTER, NOISE_FLOOR, SWD_SCALES
from nst.trial_records import TrialRecord, number

# results.csv's metric columns: the fair judges first, then the per-scale style distances, then the
# two that are close to the default objective (nst.metrics says which is which)
METRICS = ("style_swd", "gmsd", "self_sim_dist", "psnr", "ssim", *(f"style_swd_{f}x" for f in SWD_SCALES), "gram_distance",
           "content_distance")
# Older sweep folders' summary.json hold `style_distance` (the Gram distance against the painting
# stretched to the photograph's shape): shown as it is, in its own column, where any trial has it,
# and ranked as the Gram distance is (lower is better, its floor).
LEGACY = {"style_distance": "gram_distance"}


def _value(v) -> int | float | None:
    """A number from a record as it is (an int stays an int in results.csv), or None."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


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
