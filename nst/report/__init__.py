"""A sweep's report, and `python -m nst.report <sweep dir>`: (re)build a sweep's results.csv,
grid.png, curves.png, scatter.png (and, for a search, objective.png), animations and report.html
from its folder alone, at the end of every sweep or on demand.

It reads only files (each trial's summary.json, metrics.jsonl, frames/ and .hydra/), so a sweep can
be re-aggregated, compared and published without W&B and without re-running anything: the trials
and the tables (tables; the trials are read by nst.trial_records), the figures (figures), the page (page).

A trial file that cannot be read (a summary.json cut short, a cut metrics.jsonl line, a trial folder
that cannot be opened) is a warning naming it and a marked row and cell; the report is still written
(exit 0). Exit 2: no such sweep folder, no trial folder in it, or a bad option; exit 1: a report file
could not be written (a full disk, a read-only folder).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from nst.images import save_atomic
from nst.records import write_bytes_atomic
from nst.report.figures import make_animation, make_curves, make_grid, make_objective_plot, make_scatter
from nst.report.page import write_report
from nst.report.tables import LEGACY, METRICS, results_table
from nst.trial_records import load_trials, swept_axes

KNOWN = (*METRICS, *LEGACY)  # old sweep folders' style_distance too


def aggregate(sweep_dir: Path, annotate: list[str] | None = None, sort_by: str | None = None,
              warn: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Write the sweep's report files; returns them by name. A trial's unreadable file is marked in
    the report and warned about (`warn`, default: the log), never an error; a report file that cannot
    be written raises nst.records.WriteError naming it."""
    sweep_dir = Path(sweep_dir)
    trials = load_trials(sweep_dir, warn)
    if not trials:
        raise FileNotFoundError(f"{sweep_dir}: no trial folders (with .hydra/ or summary.json) in it")
    annotate = ["psnr", "style_swd"] if annotate is None else annotate
    axes = swept_axes(trials)
    # the animations first: a frame found unreadable there is marked in the table and the grid too
    animations = {t.path.name: a for t in trials if not t.folder_unreadable and (a := make_animation(t, warn)) is not None}
    table = results_table(trials, axes)
    out = {"results": sweep_dir / "results.csv", "grid": sweep_dir / "grid.png", "curves": sweep_dir / "curves.png"}
    write_bytes_atomic(out["results"], table.to_csv(index=False).encode("utf-8"))
    save_atomic(make_grid(trials, axes, annotate, sort_by), out["grid"])
    make_curves(trials, axes, out["curves"])
    if make_scatter(trials, axes, sweep_dir / "scatter.png"):
        out["scatter"] = sweep_dir / "scatter.png"
    if make_objective_plot(trials, axes, sweep_dir / "objective.png"):
        out["objective"] = sweep_dir / "objective.png"
    out["report"] = write_report(sweep_dir, table, trials, axes, animations, scatter="scatter" in out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nst.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path, help="a folder made by `python -m nst.run -m ...`")
    ap.add_argument("--annotate", default="psnr,style_swd",
                    help=f"metrics written under each grid cell, comma-separated, from: {', '.join(KNOWN)} ('' for none)")
    ap.add_argument("--sort", default=None, choices=KNOWN, help="order a one-axis grid by this metric (ascending)")
    args = ap.parse_args(argv)
    annotate = [m for m in args.annotate.split(",") if m]
    bad = [m for m in annotate if m not in KNOWN]
    if bad:
        print(f"nst.report: error: --annotate: unknown metric '{bad[0]}'; allowed: {', '.join(KNOWN)}", file=sys.stderr)
        return 2
    if not args.sweep_dir.is_dir():
        print(f"nst.report: error: {args.sweep_dir}: no such folder", file=sys.stderr)
        return 2

    def warn(message: str) -> None:
        print(f"nst.report: warning: {message}", file=sys.stderr)

    try:
        out = aggregate(args.sweep_dir, annotate=annotate, sort_by=args.sort, warn=warn)
    except FileNotFoundError as e:
        print(f"nst.report: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a report file that cannot be written (a full disk, a read-only folder)
        print(f"nst.report: error: {e}", file=sys.stderr)
        return 1
    for name, path in out.items():
        print(f"{name}: {path}")
    return 0
