"""Aggregate a sweep folder into results.csv, grid.png, curves.png, per-trial animations and report.html
(and, for a search, objective.png).

Reads only files (each trial's summary.json, metrics.jsonl, frames/ and .hydra/), so a sweep can be
re-aggregated, compared and published without W&B and without re-running anything. A file that cannot
be read (a summary.json cut short, a cut metrics.jsonl line, a corrupt image) is that trial's problem:
its row and its grid cell are marked, one warning names the file, and the rest of the report is written.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageFont, ImageOps

from nst import search
from nst.images import save_animation, save_atomic
from nst.metrics import BETTER, NOISE_FLOOR, SWD_SCALES
from nst.records import WriteError, load_summary, write_bytes_atomic

log = logging.getLogger("nst")

# results.csv's metric columns: the fair judges first, then the per-scale style distances, then the
# two that are close to the default objective (nst.metrics says which is which)
METRICS = ("style_swd", "gmsd", "psnr", "ssim", *(f"style_swd_{f}x" for f in SWD_SCALES), "gram_distance", "content_distance")
# Older sweep folders' summary.json hold `style_distance` (the Gram distance against the painting
# stretched to the photograph's shape): shown as it is, in its own column, where any trial has it,
# and ranked as the Gram distance is (lower is better, its floor).
LEGACY = {"style_distance": "gram_distance"}
CELL = 192  # long side of a grid cell, px


@dataclass
class Trial:
    path: Path
    num: int
    overrides: dict[str, str]
    summary: dict
    status: str  # the summary's, "unfinished" without one, "unreadable" when it cannot be read
    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "<file>: what is wrong with it", one per unreadable file

    @property
    def final(self) -> Path:
        return self.path / "final.png"


_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _mapping(v) -> dict:
    return v if isinstance(v, dict) else {}


def _num(v) -> float | None:
    """A finite number from a record, or None (a hand-edited or damaged file may hold anything)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _value(v) -> int | float | None:
    """A number from a record as it is (an int stays an int in results.csv), or None."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _reason(e: BaseException) -> str:
    return (str(e).strip() or type(e).__name__).splitlines()[0]


def _overrides(path: Path, summary: dict, problems: list[str]) -> dict[str, str]:
    """The trial's overrides: its summary's (written with its files, as a unit), else Hydra's record."""
    items = summary.get("overrides")
    if not isinstance(items, list):
        f = path / ".hydra" / "overrides.yaml"
        items = []
        if f.exists():
            try:
                items = list(OmegaConf.load(f))
            except Exception as e:  # noqa: BLE001 - a damaged file is the trial's problem, not the report's
                problems.append(f".hydra/overrides.yaml: unreadable ({_reason(e)})")
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
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as e:
        problems.append(f"metrics.jsonl: unreadable ({_reason(e)})")
        return []
    rows, bad = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and _num(row.get("evaluation")) is not None:
            rows.append(row)
        else:
            bad.append(n)
    if bad:
        which = f"line {bad[0]} is" if len(bad) == 1 else f"{len(bad)} lines are (first: line {bad[0]})"
        cut = " (cut short?)" if bad == [len(lines)] else ""
        problems.append(f"metrics.jsonl: {which} not a JSON row{cut}; left out")
    return rows


def _check_final(t: "Trial") -> None:
    """A completed trial's final.png must be there and decode."""
    if t.status != "completed":
        return
    if not t.final.exists():
        t.problems.append("final.png: missing")
        return
    try:
        with Image.open(t.final) as im:
            im.load()
    except _IMAGE_ERRORS as e:
        t.problems.append(f"final.png: unreadable ({_reason(e)})")


def load_trials(sweep_dir: Path, warn: Callable[[str], None] | None = None) -> list[Trial]:
    """Every trial folder of the sweep. A file that cannot be read is recorded in the trial's
    `problems`, and `warn` (default: the log) gets one line naming it."""
    warn = warn or log.warning
    trials = []
    for d in sorted(Path(sweep_dir).iterdir()):
        if not d.is_dir() or not (d / ".hydra").is_dir() and not (d / "summary.json").exists():
            continue
        head = d.name.split("_", 1)[0]
        num = int(head) if head.isdigit() else len(trials)
        problems: list[str] = []
        summary, unreadable = load_summary(d)
        if unreadable is not None:
            problems.append(f"summary.json: {unreadable}")
        status = "unreadable" if unreadable is not None else str(summary.get("status") or "unfinished")
        rows = _metrics_rows(d / "metrics.jsonl", problems)
        t = Trial(d, num, _overrides(d, summary, problems), summary, status, rows, problems)
        _check_final(t)
        for problem in t.problems:
            warn(_warning(t, problem))
        trials.append(t)
    return sorted(trials, key=lambda t: t.num)


def _warning(t: Trial, problem: str) -> str:
    name, _, what = problem.partition(": ")
    return f"{t.path / name}: {what} (the trial is marked in the report)"


def swept_axes(trials: list[Trial]) -> list[tuple[str, list[str]]]:
    """The override keys whose values differ between trials, each with its values in sweep order."""
    axes: dict[str, list[str]] = {}
    for t in trials:
        for k, v in t.overrides.items():
            values = axes.setdefault(k, [])
            if v not in values:
                values.append(v)
    return [(k, v) for k, v in axes.items() if len(v) > 1]


def label(trial: Trial, keys: list[str]) -> str:
    return ", ".join(f"{k}={trial.overrides.get(k, '')}" for k in keys) or trial.path.name


# ------------------------------------------------------------------------------------------ table


def results_table(trials: list[Trial], axes) -> pd.DataFrame:
    records = []
    for t in trials:
        s = t.summary
        rec = {"trial": t.path.name, "num": t.num}
        rec.update({k: t.overrides.get(k) for k, _ in axes})
        rec["status"] = t.status
        rec["error"] = s.get("error", "")
        rec["problem"] = "; ".join(t.problems)  # files of the trial that could not be read
        for term in ("total", "content", "style", "tv"):
            rec[f"final_{term}"] = _value(_mapping(s.get("final")).get(term))
        for m in METRICS + tuple(k for k in LEGACY if any(k in _mapping(x.summary.get("metrics")) for x in trials)):
            rec[m] = _value(_mapping(s.get("metrics")).get(m))
        for key in ("evaluations", "wall_time", "evals_per_second", "peak_memory_mb"):
            rec[key] = _value(s.get(key))
        rec["device"] = s.get("device")
        if any(x.summary.get("objective") for x in trials):
            rec["objective"] = _value(_mapping(s.get("objective")).get("value"))
        records.append(rec)
    return pd.DataFrame.from_records(records)


# ------------------------------------------------------------------------------------------- grid


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


SHORT = {"style_swd": "SWD", "gmsd": "GMSD", "psnr": "PSNR", "ssim": "SSIM", "gram_distance": "Gram",
         "content_distance": "content", "style_distance": "style (old)", **{f"style_swd_{f}x": f"SWD{f}x" for f in SWD_SCALES}}
TIE = "\u2248"  # "≈" in report.html: within the float-noise floor of the best
TIE_GRID = "~"  # the same in grid.png (Pillow's default font has no "≈")


def floor_of(metric: str) -> float:
    return NOISE_FLOOR[LEGACY.get(metric, metric)]


def tied_with_best(trials: list[Trial], metric: str) -> set[str]:
    """The completed trials whose `metric` is within its float-noise floor (nst.metrics.NOISE_FLOOR,
    relative) of the best one's (lowest distance, highest PSNR or SSIM), when there are two or more:
    they tie, their order says nothing that float noise could not change; empty when the best stands
    alone beyond the floor."""
    values = {t.path.name: v for t in trials if t.status == "completed"
              and (v := _num(_mapping(t.summary.get("metrics")).get(metric))) is not None}
    if len(values) < 2:
        return set()
    best = (min if BETTER[LEGACY.get(metric, metric)] == "min" else max)(values.values())
    band = {name for name, v in values.items() if abs(v - best) <= floor_of(metric) * abs(best)}
    return band if len(band) > 1 else set()


def _cell_box(trials: list[Trial]) -> tuple[int, int]:
    """Cell size: CELL px wide, with the aspect ratio of the first saved result."""
    for t in trials:
        if t.final.exists() and not any(p.startswith("final.png") for p in t.problems):
            try:
                with Image.open(t.final) as im:
                    w, h = im.size
            except _IMAGE_ERRORS:
                continue
            return (CELL, max(1, round(CELL * h / w))) if w >= h else (max(1, round(CELL * w / h)), CELL)
    return CELL, CELL * 3 // 4


PROBLEM = (230, 120, 0)  # the mark of a trial with an unreadable file


def _cell(trial: Trial | None, annotate: list[str], box: tuple[int, int], ties: dict[str, set[str]]) -> Image.Image:
    font = _font(12)
    w, h = box
    pad = 18 if annotate else 0
    img = None
    if trial is not None and trial.status == "completed" and not any(p.startswith("final.png") for p in trial.problems):
        try:
            with Image.open(trial.final) as im:
                img = ImageOps.contain(im.convert("RGB"), box, Image.LANCZOS)
        except _IMAGE_ERRORS:
            img = None
    if img is not None:
        cell = Image.new("RGB", (w, h + pad), "white")
        cell.paste(img, ((w - img.width) // 2, (h - img.height) // 2))
        metrics = _mapping(trial.summary.get("metrics"))
        text = "  ".join(f"{SHORT[m]} {_num(metrics.get(m)):.3g}{TIE_GRID if trial.path.name in ties.get(m, ()) else ''}"
                         for m in annotate if _num(metrics.get(m)) is not None)
        ImageDraw.Draw(cell).text((2, h + 3), text, fill="black", font=font)
        return _mark_problem(cell, trial)
    # A failed, unfinished, unreadable or missing trial is a marked empty cell, never a missing one.
    cell = Image.new("RGB", (w, h + pad), (235, 235, 235))
    d = ImageDraw.Draw(cell)
    d.line((8, 8, w - 8, h - 8), fill=(200, 40, 40), width=3)
    d.line((8, h - 8, w - 8, 8), fill=(200, 40, 40), width=3)
    status = ("missing" if trial is None else trial.status).upper()
    d.text((max(2, (w - d.textlength(status, font=_font(14))) // 2), h // 2 - 8), status, fill=(200, 40, 40), font=_font(14))
    return _mark_problem(cell, trial)


def _mark_problem(cell: Image.Image, trial: Trial | None) -> Image.Image:
    """A trial with an unreadable file: an orange frame, and the file named on an orange band."""
    if trial is None or not trial.problems:
        return cell
    d = ImageDraw.Draw(cell)
    d.rectangle((0, 0, cell.width - 1, cell.height - 1), outline=PROBLEM, width=4)
    d.rectangle((0, 0, cell.width - 1, 17), fill=PROBLEM)
    files = ", ".join(dict.fromkeys(p.split(":", 1)[0] for p in trial.problems))
    d.text((4, 2), f"! {files}", fill="white", font=_font(12))
    return cell


def _table_image(rows: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], title: str) -> Image.Image:
    font, tfont = _font(13), _font(15)
    cw, ch = rows[0][0].size
    left = max([ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(s, font=font) for s in row_labels] + [0])
    left = int(left) + 12 if any(row_labels) else 4
    top = 22 + (20 if title else 0)
    img = Image.new("RGB", (left + len(rows[0]) * (cw + 4) + 4, top + len(rows) * (ch + 4) + 4), "white")
    d = ImageDraw.Draw(img)
    if title:
        d.text((4, 2), title, fill="black", font=tfont)
    for j, s in enumerate(col_labels):
        d.text((left + j * (cw + 4) + 2, top - 18), s, fill="black", font=font)
    for i, row in enumerate(rows):
        y = top + i * (ch + 4)
        d.text((4, y + ch // 2 - 7), row_labels[i], fill="black", font=font)
        for j, cell in enumerate(row):
            img.paste(cell, (left + j * (cw + 4), y))
    return img


def make_grid(trials: list[Trial], axes, annotate: list[str], sort_by: str | None = None) -> Image.Image:
    """One axis: a row; two: rows x columns; more: one such grid per combination of the others."""
    box = _cell_box(trials)
    ties = {m: tied_with_best(trials, m) for m in annotate}
    if not axes:
        return _table_image([[_cell(t, annotate, box, ties) for t in trials]], [""], [t.path.name for t in trials], "")
    if len(axes) == 1:
        (key, values), = axes
        ordered = [next((t for t in trials if t.overrides.get(key) == v), None) for v in values]
        if sort_by:
            ordered.sort(key=lambda t: _sort_key(t, sort_by))
        labels = [f"{key}={t.overrides.get(key)}" if t else "" for t in ordered]
        return _table_image([[_cell(t, annotate, box, ties) for t in ordered]], [""], labels, "")
    (rkey, rvals), (ckey, cvals), extra = axes[0], axes[1], axes[2:]
    combos: list[dict[str, str]] = [{}]
    for k, vals in extra:
        combos = [{**c, k: v} for c in combos for v in vals]
    panels = []
    for combo in combos:
        def find(rv, cv):
            for t in trials:
                o = t.overrides
                if o.get(rkey) == rv and o.get(ckey) == cv and all(o.get(k) == v for k, v in combo.items()):
                    return t
            return None

        rows = [[_cell(find(rv, cv), annotate, box, ties) for cv in cvals] for rv in rvals]
        title = ", ".join(f"{k}={v}" for k, v in combo.items())
        panels.append(_table_image(rows, [f"{rkey}={v}" for v in rvals], [f"{ckey}={v}" for v in cvals], title))
    if len(panels) == 1:
        return panels[0]
    out = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        out.paste(p, (0, y))
        y += p.height
    return out


def _sort_key(t: Trial | None, key: str) -> float:
    v = _num(_mapping(t.summary.get("metrics")).get(key)) if t else None
    return math.inf if v is None else v


# ----------------------------------------------------------------------------------------- curves


def make_curves(trials: list[Trial], axes, path: Path) -> None:
    import os

    # matplotlib keeps a font cache under the home folder; keep it in the sweep folder instead
    os.environ.setdefault("MPLCONFIGDIR", str(path.parent / ".matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, _ in axes]
    terms = ["total", "content", "style"] + (["tv"] if any(_num(r.get("tv")) for t in trials for r in t.rows) else [])
    fig, axs = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.6), squeeze=False)
    for ax, term in zip(axs[0], terms):
        for t in trials:
            pts = [(r["evaluation"], v) for r in t.rows if (v := _num(r.get(term))) is not None and v > 0]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, label=label(t, keys), linestyle="-" if t.status == "completed" else "--", linewidth=1.3)
        ax.set_yscale("log")
        ax.set_xlabel("objective evaluations")
        ax.set_title(f"{term} loss" + (" (weighted)" if term == "total" else " (unweighted)"))
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axs[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
        fig.subplots_adjust(bottom=0.18 + 0.05 * ((len(labels) - 1) // 4))
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


# -------------------------------------------------------------------------------------- objective


def _number(text: str | None) -> float | None:
    try:
        v = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _log_scale(values: list[float]) -> bool:
    return bool(values) and min(values) > 0 and max(values) >= 100 * min(values)


def make_objective_plot(trials: list[Trial], axes, path: Path) -> bool:
    """A search: its objective against the trial number (with the best so far) and against each
    searched value. False when no trial recorded an objective (a grid)."""
    scored = [(t, v) for t in trials
              if t.status == "completed" and (v := _num(_mapping(t.summary.get("objective")).get("value"))) is not None]
    if not scored:
        return False
    import os

    os.environ.setdefault("MPLCONFIGDIR", str(path.parent / ".matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    name = str(scored[0][0].summary["objective"].get("name", "objective"))
    searched = [k for k, _ in axes if all(_number(t.overrides.get(k)) is not None for t, _ in scored)]
    fig, axs = plt.subplots(1, 1 + len(searched), figsize=(4.4 * (1 + len(searched)), 3.6), squeeze=False)
    ys = [v for _, v in scored]
    ax = axs[0][0]
    ax.plot([t.num for t, _ in scored], ys, "o", label="trial")
    best, steps = math.inf, []
    for t, v in scored:
        best = min(best, v)
        steps.append((t.num, best))
    ax.step(*zip(*steps), where="post", label="best so far")
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(name)
    ax.legend(fontsize=8, frameon=False)
    for ax, key in zip(axs[0][1:], searched):
        xs = [_number(t.overrides.get(key)) for t, _ in scored]
        ax.plot(xs, ys, "o")
        if _log_scale(xs):  # type: ignore[arg-type]
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_title(f"{name} against {key}")
    for ax in axs[0]:
        if _log_scale(ys):
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    _save_figure(fig, path)
    return True


# ------------------------------------------------------------------------------------- animations


def make_animation(trial: Trial, warn: Callable[[str], None] | None = None) -> Path | None:
    """The trial's animation.gif, made from its frames when it has none. A frame that cannot be read
    is the trial's problem; a GIF that cannot be written is warned about."""
    out = trial.path / "animation.gif"
    if out.exists():
        return out
    try:
        return out if save_animation(trial.path / "frames", out) else None
    except WriteError as e:
        (warn or log.warning)(f"no animation for trial {trial.path.name}: {e}")
    except Exception as e:  # noqa: BLE001 - a damaged frame is the trial's problem, not the report's
        trial.problems.append(f"frames: a frame is unreadable ({_reason(e)})")
        (warn or log.warning)(_warning(trial, trial.problems[-1]))
    return None


# ----------------------------------------------------------------------------------------- report


def sweep_command(sweep_dir: Path) -> str:
    f = sweep_dir / "multirun.yaml"
    if not f.exists():
        return ""
    try:
        task = OmegaConf.select(OmegaConf.load(f), "hydra.overrides.task") or []
    except Exception:  # noqa: BLE001 - a damaged multirun.yaml costs the report its command line only
        return ""
    return "python -m nst.run -m " + " ".join(shlex.quote(str(o)) for o in task)


_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, i) => th.addEventListener('click', () => {
  const tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows);
  const dir = th.dataset.dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  const val = r => { const t = r.cells[i].textContent.trim(), n = parseFloat(t); return isNaN(n) ? t : n; };
  rows.sort((a, b) => { const x = val(a), y = val(b); const c = x < y ? -1 : x > y ? 1 : 0; return dir === 'asc' ? c : -c; });
  rows.forEach(r => tb.appendChild(r));
}));
"""


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _search_section(sweep_dir: Path, trials: list[Trial]) -> str:
    def value(t: Trial) -> float | None:
        return _num(_mapping(t.summary.get("objective")).get("value"))

    scored = [t for t in trials if t.status == "completed" and value(t) is not None]
    if not scored:
        return ""
    e = html.escape
    best = min(scored, key=value)
    found = sweep_dir / "optimization_results.yaml"
    try:
        found_text = found.read_bytes().decode("utf-8", errors="replace") if found.exists() else None
    except OSError:
        found_text = None
    name = str(best.summary["objective"].get("name", ""))
    metric = search.METRIC_OF.get(name)
    tied = "" if metric is None else ", ".join(
        t.path.name for t in scored if t is not best and abs(value(t) - value(best)) <= floor_of(metric) * abs(value(best)))
    tied = f"<p>Tied with it within the float-noise floor of {metric} ({100 * floor_of(metric):.2g} %): trials {e(tied)}.</p>" \
        if tied else ""
    sweeper = f"<p>The sweeper's result (<a href='{found.name}'>{found.name}</a>):</p><pre>{e(found_text)}</pre>" \
        if found_text is not None else ""
    return f"""<h2>Search</h2>
<p>Objective <code>{e(name)}</code>, lowest in trial {e(best.path.name)}:
{value(best):.6g}. {len(scored)} of {len(trials)} trials scored.</p>
{tied}{sweeper}
<img src="objective.png" alt="objective against trial number and searched values">
"""


def _metric_cell(r, column: str, ties: dict[str, set[str]]) -> str:
    """A results cell: a metric tied with the column's best within the float-noise floor gets a
    trailing "≈" (after the number, so the table still sorts by it); a coarse style scale that a
    completed trial's image was too small for says "skipped"."""
    text = _fmt(r[column])
    if column in ties and r["trial"] in ties[column]:
        return f"<td class='tie'>{html.escape(text)} {TIE}</td>"
    if not text and column.startswith("style_swd_") and r["status"] == "completed" and "style_swd" in r and _fmt(r["style_swd"]):
        text = "skipped"
    return f"<td>{html.escape(text)}</td>"


def _floors_note(columns) -> str:
    floors = ", ".join(f"{m} {100 * floor_of(m):.2g} %" for m in columns if m in BETTER or m in LEGACY)
    return (f"<p>Values marked {TIE} are within the float-noise floor of the column's best (lowest distance, "
            f"highest PSNR or SSIM) and tie with it: the same trial on another thread count moves them that "
            f"much (<code>benchmarks/noise_floor.py</code>). Floors: {html.escape(floors)}. style_swd, gmsd, "
            f"psnr and ssim are the fair judges; gram_distance and content_distance are close to the default "
            f"objective (README \"Standardised metrics\").</p>")


def write_report(sweep_dir: Path, table: pd.DataFrame, trials: list[Trial], axes, animations: dict[str, Path]) -> Path:
    keys = [k for k, _ in axes]
    e = html.escape
    ties = {c: tied_with_best(trials, c) for c in table.columns if c in BETTER or c in LEGACY}
    head = "".join(f"<th>{e(c)}</th>" for c in table.columns)
    body = "".join(
        f"<tr class='{e(str(r['status']))}{' problem' if r['problem'] else ''}'>"
        + "".join(_metric_cell(r, c, ties) for c in table.columns) + "</tr>"
        for _, r in table.iterrows())
    damaged = [t for t in trials if t.problems]
    problems = "" if not damaged else (
        "<h2>Unreadable files</h2>\n<p>These trials' files could not be read; their rows and grid cells are marked "
        "(orange). Re-running the sweep into its folder runs the trials without a readable summary.json again.</p>\n<ul>"
        + "".join(f"<li>{e(t.path.name)}: {e(p)}</li>" for t in damaged for p in t.problems) + "</ul>\n")
    gallery = "".join(
        f"<figure><img src='{e(p.relative_to(sweep_dir).as_posix())}' alt='{e(label(t, keys))}'>"
        f"<figcaption>{e(label(t, keys))}</figcaption></figure>"
        for t in trials if (p := animations.get(t.path.name)) is not None)
    command = sweep_command(sweep_dir)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nst sweep: {e(sweep_dir.name)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
code {{ background: #f3f3f3; padding: 2px 5px; }}
img {{ max-width: 100%; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: right; }}
th {{ cursor: pointer; background: #f3f3f3; position: sticky; top: 0; }}
tr.failed td, tr.unfinished td, tr.unreadable td {{ background: #fde8e8; }}
tr.problem td:first-child {{ border-left: 4px solid #e67800; }}
tr.problem td {{ background: #fff1dc; }}
td.tie {{ background: #e6f4e6; }}
figure {{ display: inline-block; margin: 6px; text-align: center; }}
figure img {{ width: 256px; height: auto; }}
figcaption {{ font-size: 12px; }}
</style></head><body>
<h1>Sweep {e(sweep_dir.name)}</h1>
<p>{len(trials)} trials; swept: {e(", ".join(f"{k} ({len(v)})" for k, v in axes) or "nothing")}.
{sum(t.status == "completed" for t in trials)} completed, {sum(t.status != "completed" for t in trials)} failed or unfinished{
f", {len(damaged)} with unreadable files (marked)" if damaged else ""}.</p>
<p>Command: <code>{e(command)}</code></p>
{problems}{_search_section(sweep_dir, trials)}<h2>Final images</h2>
<img src="grid.png" alt="comparison grid">
<h2>Loss curves</h2>
<img src="curves.png" alt="loss curves">
<h2>Results</h2>
<p>Click a column to sort. Distances and PSNR/SSIM come from one fixed evaluator, so they compare across trials.
Also in <a href="results.csv">results.csv</a>.</p>
{_floors_note(table.columns)}
<table class="sortable" id="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>How each image forms</h2>
{gallery}
<script>{_SORT_JS}</script>
</body></html>
"""
    out = sweep_dir / "report.html"
    write_bytes_atomic(out, page.encode("utf-8"))
    return out


# ------------------------------------------------------------------------------------------- main


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
    animations = {t.path.name: a for t in trials if (a := make_animation(t, warn)) is not None}
    table = results_table(trials, axes)
    out = {"results": sweep_dir / "results.csv", "grid": sweep_dir / "grid.png", "curves": sweep_dir / "curves.png"}
    write_bytes_atomic(out["results"], table.to_csv(index=False).encode("utf-8"))
    save_atomic(make_grid(trials, axes, annotate, sort_by), out["grid"])
    make_curves(trials, axes, out["curves"])
    if make_objective_plot(trials, axes, sweep_dir / "objective.png"):
        out["objective"] = sweep_dir / "objective.png"
    out["report"] = write_report(sweep_dir, table, trials, axes, animations)
    return out
