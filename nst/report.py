"""`python -m nst.report <sweep dir>`: (re)build a sweep's results.csv, grid.png, curves.png,
animations and report.html from its folder alone. A trial file that cannot be read (a summary.json
cut short, a cut metrics.jsonl line) is a warning naming it and a marked row and cell; the report is
still written (exit 0)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nst.aggregate import LEGACY, METRICS, aggregate

KNOWN = (*METRICS, *LEGACY)  # old sweep folders' style_distance too


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nst.report", description=__doc__)
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


if __name__ == "__main__":
    sys.exit(main())
