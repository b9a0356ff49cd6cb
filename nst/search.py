"""What a search minimises: one number per finished trial, read from its summary.

`objective` in the config names it (null: a grid needs none); each trial records its value in
summary.json (`objective`), the app returns it to the sweeper (Optuna), and the sweep report plots
it from the files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

from nst.errors import InputError


class Measured(Protocol):
    """What an objective reads of a trial's summary (nst.summary.Summary has both): named here as a
    protocol, so that nst.summary, which scores trials with these functions, is the only one of the
    two that imports the other."""

    @property
    def final(self) -> Mapping[str, float]: ...

    @property
    def metrics(self) -> Mapping[str, float | None]: ...

# A result that misses the PSNR target scores above every result that meets it (style distances
# are many orders of magnitude smaller), and the further it misses, the worse.
MISSED_TARGET = 1e12


def final_loss(summary: Measured, target_psnr: float) -> float:
    """The weighted total loss of the saved image (as the optimiser saw it)."""
    return float(summary.final["total"])


def style_swd_at_psnr(summary: Measured, target_psnr: float) -> float:
    """The fair style distance (nst.metrics: style_swd), for a result that keeps PSNR >= target_psnr
    against the photograph."""
    psnr, swd = summary.metrics["psnr"], summary.metrics["style_swd"]
    if psnr is None or swd is None:
        raise ValueError("style_swd_at_psnr needs the trial's psnr and style_swd (a completed trial records both)")
    short = target_psnr - psnr
    if short > 0:
        return MISSED_TARGET * (1 + short)
    return swd


OBJECTIVES = {"final_loss": final_loss, "style_swd_at_psnr": style_swd_at_psnr}
# the metric an objective is (when it meets its target), whose float-noise floor says which trials tie
METRIC_OF = {"style_swd_at_psnr": "style_swd"}


def check(name, target_psnr) -> None:
    if name is not None and name not in OBJECTIVES:
        raise InputError("objective", f"unknown objective {name!r}; allowed: null, {', '.join(OBJECTIVES)}")
    if name == "style_swd_at_psnr" and (isinstance(target_psnr, bool) or not isinstance(target_psnr, (int, float))
                                        or not math.isfinite(target_psnr)):
        raise InputError("target_psnr", f"must be a number of dB, got {target_psnr!r}")


def value(name: str, summary: Measured, target_psnr: float) -> float:
    """The objective of a completed trial (nst.summary.score: the one caller)."""
    return OBJECTIVES[name](summary, float(target_psnr))
