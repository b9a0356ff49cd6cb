"""report.html: what went in (the content and style images, embedded as thumbnails: they live outside
the sweep folder) and what came out: the results table (the swept values, status, the fair metrics and
time first; the other columns folded away), a search's best trial, people's judgements, the trade-off
scatter, the grid, the loss curves and each trial's animation. It links only to files in the sweep
folder, so the folder is the whole report, offline."""
from __future__ import annotations

import base64
import html
import io
import math
import shlex
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf
from PIL import Image, ImageOps

from nst import search
from nst.judging import judging_html
from nst.metrics import BETTER
from nst.records import write_bytes_atomic
from nst.report.tables import LEGACY, TIE, floor_of, human, label, tied_with_best, value_text
from nst.trial_records import TrialRecord, objective_value

# The table's first columns: what was swept (inserted after "num"), how it went, the fair judges
# (nst.metrics: not any recipe's objective) and the time; the rest are folded away.
FIRST = ("num", "status", "error", "problem", "style_swd", "gmsd", "self_sim_dist", "psnr", "ssim", "objective", "wall_time")
ALWAYS = ("num", "trial", "status")  # shown even when empty
THUMB = 320  # long side of an input's embedded thumbnail, px


def sweep_command(sweep_dir: Path) -> str:
    f = sweep_dir / "multirun.yaml"
    try:
        if not f.exists():
            return ""
        task = OmegaConf.select(OmegaConf.load(f), "hydra.overrides.task") or []
    except Exception:  # noqa: BLE001 - a damaged multirun.yaml costs the report its command line only
        return ""
    return "python -m nst.run -m " + " ".join(shlex.quote(str(o)) for o in task)


# --------------------------------------------------------------------------------------- inputs


def inputs_of(trials: list[TrialRecord]) -> list[tuple[str, str]]:
    """(role, image) of every distinct input, in trial order: content first, then style(s)."""
    seen: dict[tuple[str, str], None] = {}
    for role in ("content", "style"):
        for t in trials:
            value = t.summary.settings.get(role) or t.summary.config.get(role)
            for v in ([value] if isinstance(value, str) else value if isinstance(value, list) else []):
                if isinstance(v, str) and v:
                    seen.setdefault((role, v), None)
    return list(seen)


def _thumbnail_uri(role: str, value: str) -> tuple[str | None, str]:
    """A data: URI of the image's thumbnail (JPEG), or (None, why not)."""
    from nst import images

    try:
        img = images.load_image(role, value)
    except Exception as e:  # noqa: BLE001 - a missing or damaged input costs the page its thumbnail only
        return None, (str(e).strip() or type(e).__name__).splitlines()[0]
    thumb = ImageOps.contain(img, (THUMB, THUMB), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), ""


def _inputs_section(trials: list[TrialRecord]) -> str:
    e = html.escape
    found = inputs_of(trials)
    if not found:
        return ""
    figures = []
    for role, value in found[:12]:
        uri, why = _thumbnail_uri(role, value)
        name = Path(value).name if ("/" in value or "\\" in value) else value
        img = f"<img src='{uri}' alt='{e(role)}: {e(name)}'>" if uri else f"<div class='missing'>{e(why)}</div>"
        figures.append(f"<figure class='input'>{img}<figcaption>{e(role)}: <code title='{e(value)}'>{e(name)}</code>"
                       f"</figcaption></figure>")
    more = f"<p>and {len(found) - 12} more inputs (results.csv names them).</p>" if len(found) > 12 else ""
    return f"<h2>Inputs</h2>\n<div class='inputs'>{''.join(figures)}</div>{more}\n"


# ---------------------------------------------------------------------------------------- table


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return human(v)
    if isinstance(v, int):
        return human(float(v)) if abs(v) >= 10_000 else str(v)
    return str(v)


def _empty(column: pd.Series) -> bool:
    return all(_fmt(v) == "" for v in column)


def split_columns(table: pd.DataFrame, keys: list[str]) -> tuple[list[str], list[str]]:
    """(the first columns, the folded ones); columns empty in every row are left out of both."""
    shown = [c for c in table.columns if c in ALWAYS or c in keys or not _empty(table[c])]
    first = [c for c in ("num", *keys, *FIRST[1:]) if c in shown]
    return first, [c for c in shown if c not in first]


def _head(column: str) -> str:
    better = BETTER.get(LEGACY.get(column, column))
    arrow = {"min": " \u2193", "max": " \u2191"}.get(better or "", "")
    tip = {"min": "lower is better", "max": "higher is better"}.get(better or "", "")
    text = {"num": "#", "wall_time": "time (s)"}.get(column, column)
    return f"<th title='{html.escape(tip or column)}'>{html.escape(text)}{arrow}</th>"


def _cell(r, column: str, keys: list[str], ties: dict[str, set[str]]) -> str:
    """A results cell: a metric tied with the column's best within the float-noise floor gets a
    trailing "≈" (after the number, so the table still sorts by it); a coarse style scale that a
    completed trial's image was too small for says "skipped"."""
    e = html.escape
    if column == "num":
        return f"<td><a href='{e(str(r['trial']))}/' title='{e(str(r['trial']))}'>{e(_fmt(r['num']))}</a></td>"
    text = value_text(r[column]) if column in keys else _fmt(r[column])
    if column in ties and r["trial"] in ties[column]:
        return f"<td class='tie'>{e(text)} {TIE}</td>"
    if not text and column.startswith("style_swd_") and r["status"] == "completed" and _fmt(r.get("style_swd")):
        text = "skipped"
    kind = "text" if column in ("trial", "error", "problem", "device", *keys) else "num"
    return f"<td class='{kind}'>{e(text)}</td>"


def _table(table: pd.DataFrame, columns: list[str], keys: list[str], ties, id_: str, marked: bool = True) -> str:
    """A sortable table; `marked`: its rows coloured by status and problems (the first table's are)."""
    head = "".join(_head(c) for c in columns)
    body = "".join(
        (f"<tr class='{html.escape(str(r['status']))}{' problem' if r['problem'] else ''}'>" if marked else "<tr>")
        + "".join(_cell(r, c, keys, ties) for c in columns) + "</tr>"
        for _, r in table.iterrows())
    return (f"<div class='wide'><table class='sortable' id='{id_}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(th => th.addEventListener('click', () => {
  const i = th.cellIndex, tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows);
  const dir = th.dataset.dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  const val = r => { const t = r.cells[i].textContent.trim(), n = parseFloat(t); return isNaN(n) ? t : n; };
  rows.sort((a, b) => { const x = val(a), y = val(b); const c = x < y ? -1 : x > y ? 1 : 0; return dir === 'asc' ? c : -c; });
  rows.forEach(r => tb.appendChild(r));
}));
"""


def _floors_note(columns) -> str:
    floors = ", ".join(f"{m} {100 * floor_of(m):.2g} %" for m in columns if m in BETTER or m in LEGACY)
    return (f"<p class='note'>Values marked {TIE} are within the float-noise floor of the column's best (lowest "
            f"distance, highest PSNR or SSIM) and tie with it: the same trial on another thread count moves them that "
            f"much (<code>benchmarks/noise_floor.py</code>). Floors: {html.escape(floors)}. style_swd, gmsd, psnr and "
            f"ssim are the fair judges; gram_distance and content_distance are close to the default objective. "
            f"Columns empty in every trial are left out; <a href='results.csv'>results.csv</a> has them all.</p>")


# --------------------------------------------------------------------------------------- search


def _search_section(sweep_dir: Path, trials: list[TrialRecord]) -> str:
    scored = [t for t in trials if t.status == "completed" and objective_value(t) is not None]
    if not scored:
        return ""
    e = html.escape
    values = {t.path: v for t in scored if (v := objective_value(t)) is not None}
    best = min(scored, key=lambda t: values[t.path])
    found = sweep_dir / "optimization_results.yaml"
    try:
        found_text = found.read_bytes().decode("utf-8", errors="replace") if found.exists() else None
    except OSError:
        found_text = None
    name = best.summary.objective.name if best.summary.objective else ""
    metric = search.METRIC_OF.get(name)
    low = values[best.path]
    tied = ""
    if metric is not None:
        floor = floor_of(metric)
        names = ", ".join(t.path.name for t in scored if t is not best and abs(values[t.path] - low) <= floor * abs(low))
        tied = f"<p>Tied with it within the float-noise floor of {metric} ({100 * floor:.2g} %): trials {e(names)}.</p>" \
            if names else ""
    sweeper = f"<p>The sweeper's result (<a href='{found.name}'>{found.name}</a>):</p><pre>{e(found_text)}</pre>" \
        if found_text is not None else ""
    return f"""<h2>Search</h2>
<p>Objective <code>{e(name)}</code>, lowest in trial {e(best.path.name)}:
{values[best.path]:.6g}. {len(scored)} of {len(trials)} trials scored.</p>
{tied}{sweeper}
<img src="objective.png" alt="objective against trial number and searched values">
"""


# ----------------------------------------------------------------------------------------- page

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
code { background: #f3f3f3; padding: 1px 4px; overflow-wrap: anywhere; }
img { max-width: 100%; }
.inputs { display: flex; flex-wrap: wrap; gap: 12px; }
figure { display: inline-block; margin: 6px; text-align: center; }
figure.input img { height: 160px; width: auto; border: 1px solid #ccc; }
figure.input .missing { width: 200px; height: 160px; background: #f3f3f3; font-size: 12px; overflow: hidden; }
figure.anim img { width: 256px; height: auto; }
figcaption { font-size: 12px; }
.wide { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
td.text { text-align: left; overflow-wrap: anywhere; max-width: 24em; }
th { cursor: pointer; background: #f3f3f3; position: sticky; top: 0; }
tr.failed td, tr.unfinished td, tr.unreadable td { background: #fde8e8; }
tr.superseded td { color: #777; background: #f4f4f4; }
tr.problem td:first-child { border-left: 4px solid #e67800; }
tr.problem td { background: #fff1dc; }
td.tie { background: #e6f4e6; }
details { margin: 0.8em 0; }
summary { cursor: pointer; }
.note { font-size: 12px; color: #555; max-width: 60em; }
"""


def write_report(sweep_dir: Path, table: pd.DataFrame, trials: list[TrialRecord], axes, animations: dict[str, Path],
                 scatter: bool = False) -> Path:
    keys = [k for k, _ in axes]
    e = html.escape
    ties = {c: tied_with_best(trials, c) for c in table.columns if c in BETTER or c in LEGACY}
    first, folded = split_columns(table, keys)
    more = "" if not folded else (
        f"<details><summary>{len(folded)} more columns: {e(', '.join(folded))}</summary>\n"
        f"{_table(table, ['num', *folded], keys, ties, 'more', marked=False)}</details>\n")
    damaged = [t for t in trials if t.problems]
    problems = "" if not damaged else (
        "<h2>Unreadable files</h2>\n<p>These trials' files could not be read; their rows and grid cells are marked "
        "(orange). Re-running the sweep into its folder runs the trials without a readable summary.json again.</p>\n<ul>"
        + "".join(f"<li>{e(t.path.name)}: {e(p.replace('.: ', '', 1))}</li>" for t in damaged for p in t.problems)
        + "</ul>\n")
    gallery = "".join(
        f"<figure class='anim'><img src='{e(p.relative_to(sweep_dir).as_posix())}' alt='{e(label(t, keys))}'>"
        f"<figcaption>{e(label(t, keys))}</figcaption></figure>"
        for t in trials if (p := animations.get(t.path.name)) is not None)
    tradeoff = "" if not scatter else (
        "<h2>Trade-off</h2>\n<p>Each completed trial's result at its point. For a grid: across, gmsd (how much of the "
        "content's structure is lost); up, style_swd (how far the result's features are from the style's); both lower "
        "is better, so the best results lie towards the lower left, and the points along the lower-left edge are the "
        "choices worth having. For a search: its objective against its parameter, lower is better.</p>\n"
        "<img src='scatter.png' alt='the trade-off: each trial's result at its point'>\n")
    command = sweep_command(sweep_dir)
    completed = sum(t.status == "completed" for t in trials)
    # A stopped search's trial whose parameters were proposed again: neither a result nor a failure.
    superseded = sum(t.status == "superseded" for t in trials)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>nst sweep: {e(sweep_dir.name)}</title>
<style>{_STYLE}</style></head><body>
<h1>Sweep {e(sweep_dir.name)}</h1>
<p>{len(trials)} trials; swept: {e(", ".join(f"{k} ({len(v)})" for k, v in axes) or "nothing")}.
{completed} completed, {len(trials) - completed - superseded} failed, unfinished or unreadable{
f", {superseded} superseded (stopped, proposed again)" if superseded else ""}{
f", {len(damaged)} with unreadable files (marked)" if damaged else ""}.</p>
<p>Command: <code>{e(command)}</code></p>
{_inputs_section(trials)}{problems}{_search_section(sweep_dir, trials)}{judging_html(sweep_dir)}<h2>Results</h2>
<p>Click a column to sort; &#8595; lower is better, &#8593; higher is better. The metrics come from one fixed
evaluator, so they compare across trials. Also in <a href="results.csv">results.csv</a>.</p>
{_table(table, first, keys, ties, "results")}
{more}{_floors_note(first + folded)}
{tradeoff}<h2>Final images</h2>
<img src="grid.png" alt="comparison grid">
<h2>Loss curves</h2>
<img src="curves.png" alt="loss curves">
<h2>How each image forms</h2>
{gallery}
<script>{_SORT_JS}</script>
</body></html>
"""
    out = sweep_dir / "report.html"
    write_bytes_atomic(out, page.encode("utf-8"))
    return out
