"""Blind side-by-side judging of a sweep's results by people.

    python -m nst.judge <sweep folder> [<folder> ...]   the judging page (also `nst judge ...`)
    python -m nst.judge --scores <sweep folder> [...]    the scores so far, also written to judgements.csv

The page shows the photograph, the painting and two results of the same pair, in random order and
without their settings; choose with a click or ←/→ (↓: can't tell). Choices are appended to
judgements.jsonl in the first folder; several sweeps of the same content/style pairs can be judged
together, and several people can judge at once (each opens the same URL).
"""

from __future__ import annotations

import argparse
import sys
import threading
import webbrowser
from pathlib import Path

from nst.errors import InputError

PROG = "nst judge"


def _scores(folders: list[Path]) -> int:
    from nst.judging import folder_scores, write_csv
    from nst.judging.scores import text

    for f in folders:
        if not f.is_dir():
            print(f"{PROG}: error: {f}: no such folder", file=sys.stderr)
            return 2
    sc = folder_scores(folders, warn=lambda m: print(f"{PROG}: warning: {m}", file=sys.stderr))
    if sc is None:
        print(f"{PROG}: error: {', '.join(map(str, folders))}: no judgements yet (judgements.jsonl); "
              f"judge first with `python -m nst.judge {folders[0]}`", file=sys.stderr)
        return 2
    print(text(sc))
    try:
        print(f"\nwritten: {write_csv(folders[0], sc)}")
    except OSError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", type=Path, nargs="+", metavar="folder", help="sweep folders (made by `python -m nst.run -m ...`)")
    ap.add_argument("--scores", action="store_true", help="print the scores and write judgements.csv; no page")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--no-browser", action="store_true", help="print the URL only")
    ap.add_argument("--seed", type=int, default=None, help="seed of the pair choice (default: a fresh one)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if args.scores:
        return _scores(args.folders)

    from nst.judging.results import load
    from nst.judging.server import App, serve

    try:
        sweeps = load(args.folders)
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for w in sweeps.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    try:
        server = serve(App(sweeps, args.seed), args.port)
    except OSError as e:
        print(f"{PROG}: error: --port {args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    pairs = len({r.pair for r in sweeps.results})
    settings = len({r.setting for r in sweeps.results})
    print(f"judging {len(sweeps.results)} results: {pairs} content/style pair(s), {settings} settings", flush=True)
    print(f"choices go to {sweeps.judgements}", flush=True)
    print(f"open {url}  (Ctrl-C stops; `python -m nst.judge --scores {args.folders[0]}` prints the scores)", flush=True)
    if not args.no_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    if sweeps.judgements.exists():  # the scores so far, for the report and a spreadsheet
        return _scores(args.folders)
    return 0


if __name__ == "__main__":
    sys.exit(main())
