"""`python -m nst.report <sweep dir>`: (re)build a sweep's results.csv, grid.png, curves.png,
animations and report.html from its folder alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nst.aggregate import METRICS, aggregate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nst.report", description=__doc__)
    ap.add_argument("sweep_dir", type=Path, help="a folder made by `python -m nst.run -m ...`")
    ap.add_argument("--annotate", default="psnr,style_distance",
                    help=f"metrics written under each grid cell, comma-separated, from: {', '.join(METRICS)} ('' for none)")
    ap.add_argument("--sort", default=None, choices=METRICS, help="order a one-axis grid by this metric (ascending)")
    args = ap.parse_args(argv)
    annotate = [m for m in args.annotate.split(",") if m]
    bad = [m for m in annotate if m not in METRICS]
    if bad:
        print(f"nst.report: error: --annotate: unknown metric '{bad[0]}'; allowed: {', '.join(METRICS)}", file=sys.stderr)
        return 2
    if not args.sweep_dir.is_dir():
        print(f"nst.report: error: {args.sweep_dir}: no such folder", file=sys.stderr)
        return 2
    try:
        out = aggregate(args.sweep_dir, annotate=annotate, sort_by=args.sort)
    except FileNotFoundError as e:
        print(f"nst.report: error: {e}", file=sys.stderr)
        return 2
    for name, path in out.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
