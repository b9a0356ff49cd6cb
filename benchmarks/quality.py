"""Recipes against each other at equal cost, judged by the fair ruler: a Pareto front per image pair.

    python benchmarks/quality.py                                   # the demo's budget: 256 px, 150 evaluations
    python benchmarks/quality.py --size 128 --budget 60 --pairs tubingen:the_scream
    python benchmarks/quality.py --variant aspect:style_size=keep_aspect --variant relu:layers=paper_relu
    python benchmarks/quality.py --set                             # the evaluation set (45 pairs) at 128 px
    python benchmarks/quality.py --set --only 'tubingen:*,astronaut:great_wave' --size 64 --budget 40

Every recipe (`recipe=...`, docs/quality.md, "Recipes") and every --variant (named overrides on top of
nst's defaults) runs on every pair at a few style weights: the recipe's own style weight times
each --multipliers value (STROTSS and NNST, whose style terms have no weight: their content weight
over it; NNST's is a share in [0, 1], so its odds), so each recipe traces its own trade-off curve between style and content.
All trials cost the same: --budget full-size evaluations of the network's worth of arithmetic, the
losses' included (--equal work, nst.estimate.work_flops: Gram matrices, W2's matrix square roots,
STROTSS's transport costs and NNST's nearest-neighbour searches), so a recipe whose losses are
heavy gets fewer steps; --equal network counts the network alone, as `budget=` does. Each trial's
network cost (a pyramid's coarse levels counted by their FLOPs) and work are recomputed here from
its summary and printed, with its wall time.

Judged by the fair ruler (nst.metrics): --style-metric (lower is better; default the sliced-
Wasserstein style distance, which no recipe optimises) against --content-metric (default GMSD
against the photograph, lower is better: it rises steadily with the style weight, where SSIM, at
the 0.3-0.5 of stylised images, moves by about as much between neighbouring weights as between
recipes). A point is on a pair's front when no other point is
better on both by more than the float-noise floor; the floor is measured in the same run (the first
trial repeated alone, on the CPU with another thread count: the same arithmetic in another order)
unless --floor gives it. The last lines say which recipe holds which stretch of each front, and each
recipe's wall time.

With --set (benchmarks/eval_set.toml: photographs x paintings, all offline) each pair's axes are
also normalised between its two inputs (benchmarks/quality_stats.py): each recipe's front gets a
hypervolume in the pair's unit box, and the recipes are compared pair by pair (wins, ties and
losses beyond the noise floor, an exact Wilcoxon signed-rank p-value), with the wall time per trial;
summary.md and hypervolume.png say it on one page.

Writes --out (default outputs/quality/<time>): results.csv (one row per trial), front.txt (what is
printed), pareto.png (one panel per pair) and each trial's own folder (final.png, summary.json);
with --set also summary.md, hypervolume.png and inputs/ (the photographs taken from scikit-image).
Run again with the same --out, an interrupted run resumes: finished trials are read back, not re-run.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import eval_set  # benchmarks/, this script's folder
import quality_stats as qs
import torch
from precision import other_thread_count, relative_difference, runner_threads

from nst import images
from nst.api import stylize_batch
from nst.errors import InputError
from nst.features import evaluation_flops, layer_names
from nst.metrics import BETTER

RECIPES = ["nst", "gatys2016", "gatys_code", "jcjohnson", "pastiche", "strotss", "nnst", "crowsonkb"]
PAIRS = ["tubingen:starry_night", "tubingen:the_scream", "woman-with-hat-matisse:shipwreck"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=None, help="long side in px (default 256; 128 with --set)")
    p.add_argument("--budget", type=float, default=150, help="full-size evaluations per trial")
    p.add_argument("--pairs", default=",".join(PAIRS), help="content:style,... (bundled names or paths)")
    p.add_argument("--set", nargs="?", const=str(eval_set.DEFAULT), default=None, metavar="FILE",
                   help=f"run the evaluation set instead of --pairs (default file: {eval_set.DEFAULT.name})")
    p.add_argument("--only", default=None, metavar="PATTERNS",
                   help="with --set: only the pairs matching these photograph:painting patterns (fnmatch, comma-separated)")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V[,KEY=V]",
                   help="nst's defaults with these overrides, judged like a recipe (repeatable)")
    p.add_argument("--multipliers", default="0.25,1,4", help="style weights as multiples of each recipe's own")
    p.add_argument("--equal", choices=["work", "network"], default="work",
                   help="what equal cost holds equal: work (the network's and the losses' FLOPs, nst.estimate."
                        "work_flops; default) or network (the network's alone, as `budget` counts)")
    p.add_argument("--style-metric", default="style_swd", help="lower is better")
    p.add_argument("--content-metric", default="gmsd", help="closeness to the photograph: gmsd (lower is better), "
                                                            "ssim or psnr (higher); nst.metrics.BETTER says which")
    p.add_argument("--floor", type=float, default=None, help="relative noise floor; default: measured here")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    p.add_argument("--from-csv", default=None, metavar="RESULTS_CSV[,RESULTS_CSV...]",
                   help="no trials: the front, the plot and the summary of an earlier run's results.csv "
                        "(a run stopped part-way keeps the batches it finished), with --floor; several runs' "
                        "together (their recipes named recipe@budget where the budgets differ), written to --out "
                        "(default: the first one's folder)")
    args = p.parse_args(argv)
    if args.content_metric not in BETTER or BETTER.get(args.style_metric) != "min":
        p.error(f"--style-metric takes a lower-is-better metric and --content-metric one of {', '.join(BETTER)}")
    args.content_higher_better = BETTER[args.content_metric] == "max"
    if args.size is None:
        args.size = 128 if args.set else 256
    if args.only and not args.set:
        p.error("--only selects pairs of the evaluation set: add --set")
    if args.set and args.content_metric not in eval_set.CONTENT_METRICS:
        allowed = ", ".join(m for m in eval_set.CONTENT_METRICS if m in BETTER)
        p.error(f"--set normalises the content axis by the photograph's own value: --content-metric one of "
                f"{allowed} (psnr of the photograph against itself is infinite)")
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
    paths = [Path(x) for x in args.from_csv.split(",") if x]
    text = ("pair", "recipe", "device", "device_name", "precision", "resumed", "equal")
    rows = []
    for path in paths:
        if not path.is_file():
            raise InputError("--from-csv", f"no such file: {path}")
        with open(path, newline="") as f:
            rows += [{k: (float(v) if k not in text and v not in ("", None) else v) for k, v in r.items()}
                     for r in csv.DictReader(f)]
    if len({r.get("budget") for r in rows}) > 1:  # one recipe at several budgets: a front each
        for r in rows:
            r["recipe"] = f"{r['recipe']}@{r['budget']:g}"
    out = Path(args.out) if args.out else paths[0].parent
    out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    say = _printer(log)

    summarise(rows, args, args.floor, say)
    plot(rows, args, args.floor, out / "pareto.png")
    if rows and "photo_style_swd" in rows[0]:  # a run of the evaluation set: its anchors are in the rows
        set_summary(rows, args, args.floor, say, out)
    (out / "front.txt").write_text("\n".join(log) + "\n")
    return 0


def run(args) -> int:
    if args.from_csv:
        return from_csv(args)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(args.out or f"outputs/quality/{stamp}")
    # (content name, style name, content=, style=): the names label the pair, the inputs go to nst
    if args.set:
        try:
            chosen = eval_set.load(args.set, args.only)
            if eval_set.needs_skimage(chosen):
                eval_set.open_image("skimage:astronaut")  # scikit-image missing: say so before anything runs
        except eval_set.SetError as e:
            raise InputError("--set", str(e)) from None
        out.mkdir(parents=True, exist_ok=True)
        given = eval_set.materialise(chosen, out / "inputs")
        pairs = [(x.photo.name, x.painting.name, given[x.photo.name], given[x.painting.name]) for x in chosen]
    else:
        pairs = [(c, s, c, s) for c, s in (p.split(":", 1) for p in args.pairs.split(",") if p)]
    out.mkdir(parents=True, exist_ok=True)
    # nst's defaults first (the noise floor's trial), then the variants, then the other recipes in order.
    recipes = [r for r in args.recipes.split(",") if r]
    entries = [(r, [f"recipe={r}"]) for r in recipes[:1]]
    entries += [(name, ov) for name, ov in map(parse_variant, args.variant)]
    entries += [(r, [f"recipe={r}"]) for r in recipes[1:]]
    mults = [float(m) for m in args.multipliers.split(",")]
    common = {"size": args.size, "budget": args.budget, "device": args.device, "logger": "none"}
    # Every entry is composed and checked on every pair before anything runs (names, keys, image sizes):
    # a bad one fails in one line first.
    budget, trial = {}, {}
    for cname, sname, content, style in pairs:
        for name, ov in entries:
            inputs = {k: v for k, v in {**common, "content": content, "style": style}.items() if k != "budget"}
            key = (cname, sname, name)
            budget[key], trial[key] = recipe_budget([*ov, *(f"{k}={v}" for k, v in inputs.items())], args.budget, args.equal)
    rows, log = [], []
    say = _printer(log)

    say(f"quality: {len(pairs)} pair(s) x {len(entries)} recipe(s) x {len(mults)} style weights, size {args.size}, "
        f"budget {args.budget:g} full-size evaluations ({'network and losses' if args.equal == 'work' else 'network'}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    anchors_cache: dict = {}
    # The process's CPU time per batch, beside its wall time: the wall time grows with whatever else the
    # machine runs (or with the run being paused); the CPU time far less. A resumed batch keeps the one
    # its earlier run wrote.
    earlier_cpu = {}
    if (out / "results.csv").exists():
        with open(out / "results.csv", newline="") as f:
            earlier_cpu = {(r["pair"], r["recipe"]): r.get("cpu_s_batch") or "" for r in csv.DictReader(f)}
    # Pair by pair, every recipe on it (the slow W2 recipe last by default): results.csv is rewritten
    # after every batch, so an interrupted run keeps whole pairs to compare.
    for cname, sname, content, style in pairs:
        for name, ov in entries:
            settings = trial[cname, sname, name][0]
            variants = [emphasis(settings, m) for m in mults]
            t0, c0 = time.perf_counter(), time.process_time()
            images = stylize_batch(content, style, variants, out_dir=out / f"{cname}__{sname}" / name,
                                   **{**common, "budget": budget[cname, sname, name]}, **overrides_dict(ov))
            wall, cpu = time.perf_counter() - t0, round(time.process_time() - c0, 1)
            if all(img.resumed for img in images):  # read back from an earlier run: the time it took then
                wall = max(float(img.summary.get("wall_time") or 0) for img in images)
                cpu = earlier_cpu.get((f"{cname}:{sname}", name), "")
            for m, variant, img in zip(mults, variants, images, strict=True):
                fields = summary_fields(img.summary)
                row = {"pair": f"{cname}:{sname}", "recipe": name, "size": args.size, "budget": args.budget,
                       "recipe_budget": budget[cname, sname, name], "equal": args.equal, "multiplier": m,
                       "style_weight": variant.get("style_weight", settings.style_weight),
                       "content_weight": variant.get("content_weight", settings.content_weight),
                       **dict(zip(("cost", "work"), (round(v, 1) for v in trial_work(img.summary, *trial[cname, sname, name])),
                                  strict=True)),
                       "wall_s_batch": round(wall, 1), "cpu_s_batch": cpu, "wall_s": fields.pop("wall_s"),
                       "resumed": img.resumed, **fields}
                if args.set:
                    key = (cname, sname, tuple(img.size))
                    if key not in anchors_cache:
                        anchors_cache[key] = input_anchors(content, style, img.size)
                    row.update(anchors_cache[key])
                rows.append(row)
            write_csv(out / "results.csv", rows)
            say(f"  {cname} x {sname}: {name:<12} {wall:7.1f} s for {len(mults)} trials "
                f"(work {rows[-1]['work']:g} full-size evaluations each, the network's {rows[-1]['cost']:g})")
            if rows[-1]["work"] > 1.25 * args.budget:
                say(f"    note: {name}'s fewest steps (one per level) do more work than the budget at this size")

    floor = args.floor
    if floor is None:
        # rows[0]: the first pair's first entry at the first multiplier, which runs again alone
        (cname, sname, content, style), first = pairs[0], rows[0]
        key = (cname, sname, entries[0][0])
        floor, how = measure_floor((content, style), entries[0], emphasis(trial[key][0], mults[0]),
                                   {**common, "budget": budget[key]}, out, args, first)
        say(f"noise floor ({how}): {floor:.2%} (the larger of {args.style_metric}, {args.content_metric})")
    write_csv(out / "results.csv", rows)
    summarise(rows, args, floor, say)
    plot(rows, args, floor, out / "pareto.png")
    written = "results.csv, front.txt, pareto.png"
    if args.set:
        set_summary(rows, args, floor, say, out)
        written += ", summary.md, hypervolume.png"
    (out / "front.txt").write_text("\n".join(log) + "\n")
    print(f"written: {out}/{written}")
    return 0


def emphasis(s, m: float) -> dict:
    """The trial's style emphasis times m: its style_weight times m or, for the STROTSS and NNST
    engines, whose style terms have no weight of their own (nst.methods), its content_weight over m.
    NNST's content weight is a share, alpha in [0, 1] (the content's part of the features it searches):
    its odds alpha / (1 - alpha) go over m, which keeps it a share (0.75 at m = 4: 0.43; at 0.25: 0.92)."""
    if s.engine == "nnst":
        a = s.content_weight
        return {"content_weight": a if a >= 1.0 else round(a / (a + m * (1.0 - a)), 6)}
    if s.engine == "strotss":
        return {"content_weight": s.content_weight / m}
    return {"style_weight": s.style_weight * m}


def recipe_budget(overrides: list[str], target: float, equal: str) -> tuple[float, tuple]:
    """The `budget` that gives this recipe's trial `target` full-size network evaluations' worth of work
    (equal="work": its network's and its losses', nst.estimate.work_flops) or of the network alone
    (equal="network": `target` itself), and the trial's (settings, style size) at that budget; the
    settings composed and their images opened as a run would (raising InputError for a bad name, key
    or image). The work is proportional to the budget but for each level's steps being whole and at
    least one: a few rounds of rescaling settle it."""
    from nst.estimate import work_flops

    tried: list[tuple[float, float, tuple]] = []  # (how far its work is from the target, budget, trial)
    chosen = target
    for _ in range(4):
        s, style_size = composed([*overrides, f"budget={chosen:g}"])
        work = work_flops(s, style_size) / full_size_flops(s)
        tried.append((abs(work - target), chosen, (s, style_size)))
        if equal == "network" or abs(work - target) <= 0.005 * target:
            break
        chosen = round(chosen * target / work, 2)
    _, chosen, trial = min(tried, key=lambda t: t[0])  # the first of the closest: whole steps may not get closer
    return chosen, trial


def full_size_flops(s) -> float:
    """One evaluation of the trial's network at its full size: the unit of `budget`, cost and work."""
    names = layer_names(s.arch)
    return evaluation_flops(s.arch, max((*s.objective.content_layers, *s.objective.style_layers), key=names.index),
                            *s.image_size)


def trial_work(summary: dict, s, style_size) -> tuple[float, float]:
    """(cost, work) of a trial in full-size network evaluations: its network's arithmetic, and its
    network's and losses' together. engine=gatys, from the evaluations it ran at each level (summary.json;
    L-BFGS may stop early): each the network's (nst.features) and the style terms' (nst.loss); the STROTSS
    and NNST engines run their whole schedule, counted from their settings `s` (nst.estimate)."""
    from nst import loss
    from nst.estimate import trial_flops, work_flops

    full = full_size_flops(s)
    if s.engine != "gatys":
        return trial_flops(s) / full, work_flops(s, style_size) / full
    cost = trial_cost(summary)
    levels = summary.get("levels") or [{"size": summary["image_size"], "evaluations": summary.get("evaluations", 0)}]
    losses = sum(lv["evaluations"] * loss.evaluation_flops(s.objective, s.arch, *lv["size"]) for lv in levels)
    return cost, cost + losses / full


def composed(overrides: list[str]):
    """The trial's settings and its (first) style image's size as the trial takes it (nst.inputs): the
    one place this script composes settings."""
    from nst import compose
    from nst.stage import load_inputs

    s = compose.settings_for(overrides)
    styles = load_inputs(s).get("style") or []
    if not styles:
        return s, None
    base = images.style_base_size(s.style_size, images.cropped_size(styles[0].size, s.crop), s.image_size)
    return s, (max(1, round(base[0] * s.style_scale)), max(1, round(base[1] * s.style_scale)))


def summary_fields(summary: dict) -> dict:
    """What a row keeps of a trial's summary.json: the one place that reads its layout."""
    return {"wall_s": summary.get("wall_time"), "device": summary.get("device"), "device_name": summary.get("device_name"),
            "precision": summary.get("precision"), "cpu_threads": summary.get("cpu_threads"), **(summary.get("metrics") or {})}


def input_anchors(content: str, style: str, size: tuple[int, int]) -> dict:
    """The pair's two inputs judged by the same ruler at the output's size (width, height): the
    photograph resized to it, and the painting resized to it (stretched: the content axis compares
    it pixel for pixel with the photograph); the style reference, as for every trial, is the
    painting at its own aspect ratio at the output's pixel count. `photo_*`: the photograph;
    `painting_*`: the painting, its style metric against itself (the style axis' 0)."""
    from nst.metrics import standard_metrics, style_swd

    w, h = size
    # content= / style= as the trials take them: a bundled name or a path (the set's photographs materialised)
    content_img, style_img = images.load_image("content", content), images.load_image("style", style)
    cpu = torch.device("cpu")
    # what nst.inputs.prepare makes of them for a trial: the same resizing, the same conversion
    plain = images.to_tensor(images.resize(style_img, images.size_at_pixel_count(*style_img.size, w * h)), cpu)
    photo = images.to_tensor(images.resize(content_img, (w, h)), cpu)
    stretched = images.to_tensor(images.resize(style_img, (w, h)), cpu)
    of_photo = standard_metrics(photo, photo, plain)
    of_painting = standard_metrics(stretched, photo, plain)
    of_painting.update(style_swd(plain, [plain], [1.0]))  # the painting's own distribution: the style axis' 0
    keys = [k for k in ("style_swd", *eval_set.CONTENT_METRICS) if k in of_photo]
    return {**{f"photo_{k}": of_photo[k] for k in keys}, **{f"painting_{k}": of_painting[k] for k in keys}}


def measure_floor(pair, entry, variant: dict, common, out, args, first: dict) -> tuple[float, str]:
    """The largest relative difference of the two metrics between two runs of the first trial that
    differ only in ways that should not matter: on the CPU the trial alone at another thread count
    than its batch had (the runner sets each batch's threads from NST_CPU_THREADS, so that is what is
    changed, not torch's own setting); on a GPU the trial alone instead of in its batch (other kernels
    for another batch size). `first` is that trial's row from the main run."""
    (content, style), (_, ov) = pair, entry

    def alone(folder: str) -> dict:
        img = stylize_batch(content, style, [variant], out_dir=out / "noise_floor" / folder,
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


def hypervolumes(rows, args) -> dict[str, dict[str, float]]:
    """pair -> recipe -> the hypervolume of the recipe's points in the pair's unit box."""
    sm, cm = args.style_metric, args.content_metric
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        anchors = {"style_photo": r[f"photo_{sm}"], "style_painting": r[f"painting_{sm}"],
                   "content_photo": r[f"photo_{cm}"], "content_painting": r[f"painting_{cm}"]}
        r["_sc"] = qs.normalise(r[sm], r[cm], anchors)
    for pair in dict.fromkeys(r["pair"] for r in rows):
        out[pair] = {}
        for name in dict.fromkeys(r["recipe"] for r in rows):
            pts = [r["_sc"] for r in rows if r["pair"] == pair and r["recipe"] == name]
            if pts:
                out[pair][name] = qs.hypervolume(pts)
    return out


def set_summary(rows, args, floor, say, out: Path) -> None:
    """Across the pairs of the set: hypervolumes, paired comparisons and wall times, printed and as
    summary.md with hypervolume.png."""
    if args.style_metric != "style_swd":
        raise SystemExit("the evaluation set's anchors are measured for --style-metric style_swd only")
    hv = hypervolumes(rows, args)
    names = list(dict.fromkeys(r["recipe"] for r in rows))
    pairs = [p for p in hv if all(n in hv[p] for n in names)]  # only pairs every recipe finished
    say(f"\nevaluation set: {len(pairs)} pair(s) every recipe finished; hypervolume of each recipe's points in the pair's "
        f"unit box ({args.style_metric} from the painting (0) to the photograph (1), {args.content_metric} from the "
        f"photograph (0) to the painting (1); higher is better, 1 at most)")
    lines = ["| recipe | mean hypervolume | median | pairs | wall time per trial (s; its batch's over its trials, median) | "
             "CPU time per trial (s, likewise) | cost (full-size evaluations) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for n in names:
        vals = [hv[p][n] for p in pairs]
        # a batch's trials run together: each one's share is its batch's wall time over the trials in it
        batches = {(r["pair"], r["recipe"]): [x for x in rows if x["pair"] == r["pair"] and x["recipe"] == n]
                   for r in rows if r["recipe"] == n}
        # medians: a batch that ran beside other work (or paused) is slower, not typical
        walls = [float(b[0]["wall_s_batch"]) / len(b) for b in batches.values()]
        cpus = [float(b[0]["cpu_s_batch"]) / len(b) for b in batches.values() if b[0].get("cpu_s_batch") not in (None, "")]
        costs = [float(r["cost"]) for r in rows if r["recipe"] == n]
        mean, middle = (statistics.fmean(vals), statistics.median(vals)) if vals else (float("nan"), float("nan"))
        wall = statistics.median(walls) if walls else float("nan")
        cpu = statistics.median(cpus) if cpus else float("nan")
        say(f"  {n:<12} hypervolume mean {mean:.4f}  median {middle:.4f}  wall {wall:6.2f} s, CPU {cpu:6.2f} s per trial")
        lines.append(f"| {n} | {mean:.4f} | {middle:.4f} | {len(vals)} | {wall:.2f} | {cpu:.2f} | {max(costs, default=0):g} |")
    say(f"paired comparisons of hypervolume (ties: within the {floor:.2%} floor, relative; Wilcoxon signed-rank, "
        f"exact, two-sided, ties counted as no difference):")
    cmp_lines = ["| A | B | A wins | ties | B wins | Wilcoxon p (n untied) | A reaches B's front | B reaches A's |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    sm, cm = args.style_metric, args.content_metric
    sign = -1.0 if args.content_higher_better else 1.0

    def points(pair, name):  # raw metrics, both lower-is-better, as the fronts compare them
        return [(r[sm], sign * r[cm]) for r in rows if r["pair"] == pair and r["recipe"] == name]

    def reaches(a, b):  # pairs on which a has a point as good (within the floor) as each of b's
        return sum(qs.covers(points(p, a), points(p, b), floor) for p in pairs)

    for i, a in enumerate(names):
        for b in names[i + 1:]:
            xa, xb = [hv[p][a] for p in pairs], [hv[p][b] for p in pairs]
            w, tie, lo = qs.compare(xa, xb, floor)
            diffs = [0.0 if qs.within(x, y, floor) else x - y for x, y in zip(xa, xb, strict=True)]
            _, pval, n_untied = qs.wilcoxon(diffs)
            ab, ba = reaches(a, b), reaches(b, a)
            say(f"  {a} vs {b}: {w} wins, {tie} ties, {lo} losses; p = {pval:.3g} (n = {n_untied}); "
                f"{a} reaches {b}'s front on {ab} pair(s), {b} reaches {a}'s on {ba}")
            cmp_lines.append(f"| {a} | {b} | {w} | {tie} | {lo} | {pval:.3g} ({n_untied}) | {ab} | {ba} |")
    per_pair = ["| pair | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for p in pairs:
        best = max(hv[p][n] for n in names)
        cells = (f"**{hv[p][n]:.4f}**" if hv[p][n] == best else f"{hv[p][n]:.4f}" for n in names)
        per_pair.append(f"| {p} | " + " | ".join(cells) + " |")
    device = next((r.get("device_name") or r.get("device") for r in rows if r.get("device")), "not recorded")
    precision = ", ".join(sorted({str(r.get("precision")) for r in rows if r.get("precision")})) or "not recorded"
    # what the trials ran with, from the rows (a summary remade from a CSV has no other record of it)
    size = ", ".join(f"{float(v):g}" for v in dict.fromkeys(r.get("size", args.size) for r in rows))
    budget = ", ".join(f"{float(v):g}" for v in dict.fromkeys(r.get("budget", args.budget) for r in rows))
    mults = ",".join(f"{float(v):g}" for v in dict.fromkeys(r["multiplier"] for r in rows))
    plot_hypervolume(hv, pairs, names, f"{size} px, {budget} full-size evaluations", out / "hypervolume.png")
    page = [f"# Quality on the evaluation set: {len(pairs)} pairs, {len(names)} recipes", "",
            f"{size} px, {budget} full-size evaluations per trial, style weights x{mults} each "
            f"recipe's own; device {device}, precision {precision}, torch {torch.__version__}. Command:", "",
            "    python benchmarks/quality.py " + " ".join(sys.argv[1:]), "",
            f"Hypervolume: the area a recipe's points dominate in the pair's unit box, {args.style_metric} normalised from "
            f"the painting (0) to the photograph (1), {args.content_metric} from the photograph (0) to the painting resized "
            f"(1); the reference point is (1, 1), so neither input alone scores above 0. Ties: within the {floor:.2%} "
            "noise floor.", "", *lines, "", "## Paired comparisons", "",
            "Hypervolume pair by pair; and on how many pairs one recipe *reaches* the other's front: for each of "
            "the other's points it has one as good on both metrics, within the floor.", "", *cmp_lines, "",
            "![hypervolume per pair](hypervolume.png)", "", "## Per pair (best in bold)", "", *per_pair, ""]
    (out / "summary.md").write_text("\n".join(page))


def plot_hypervolume(hv, pairs, names, what: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(pairs, key=lambda p: sum(hv[p].values()) / len(hv[p]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(order) + 2), 4.5))
    for i, n in enumerate(names):
        ax.plot(range(len(order)), [hv[p][n] for p in order], "o", color=plt.cm.tab10(i % 10), label=n, alpha=0.85)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("hypervolume (higher is better)")
    ax.set_title(f"hypervolume per pair, {what}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(rows, args, floor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    cols = min(len(pairs), 5)  # a grid, so that the set's 45 panels make a page, not a strip
    nrows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(pairs):]:
        ax.set_visible(False)
    names = list(dict.fromkeys(r["recipe"] for r in rows))
    colours = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    for ax, pair in zip(axes.flat, pairs, strict=False):
        pts = [r for r in rows if r["pair"] == pair]
        on = {id(r) for r in front(pts, args.style_metric, args.content_metric, args.content_higher_better, floor)}
        for n in names:
            mine = sorted((r for r in pts if r["recipe"] == n), key=lambda r: r["multiplier"])
            xs, ys = [r[args.style_metric] for r in mine], [r[args.content_metric] for r in mine]
            ax.plot(xs, ys, "-", color=colours[n], alpha=0.5)
            for r in mine:
                ax.scatter(r[args.style_metric], r[args.content_metric], color=colours[n], s=60 if id(r) in on else 18,
                           edgecolors="black" if id(r) in on else "none", label=n if r is mine[0] else None, zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel(f"{args.style_metric} (lower: more style)")
        ax.set_ylabel(f"{args.content_metric} ({'higher' if args.content_higher_better else 'lower'}: more content)")
        ax.set_title(pair, fontsize=9)
    axes[0][0].legend(fontsize=7)
    size, budget = (", ".join(f"{float(v):g}" for v in dict.fromkeys(r.get(k, getattr(args, k)) for r in rows))
                    for k in ("size", "budget"))  # from the rows: a plot remade from a CSV says what ran
    fig.suptitle(f"{size} px, {budget} full-size evaluations; ringed: on the front (floor {floor:.1%})", fontsize=9)
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
