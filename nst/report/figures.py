"""The report's figures, drawn from the trials' files alone: grid.png (one cell per trial, annotated),
curves.png (the loss curves), objective.png (a search's objective), scatter.png (the trade-off between
closeness to the photograph and to the painting) and each trial's animation. A trial whose file cannot
be read gets a marked cell, never an error.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from nst.images import save_animation
from nst.metrics import SWD_SCALES
from nst.records import WriteError, write_bytes_atomic
from nst.report.tables import human, label, tied_with_best, value_text
from nst.trial_records import IMAGE_ERRORS, TrialRecord, number, objective_name, objective_value, reason, warning

log = logging.getLogger("nst")

CELL = 192  # long side of a grid cell, px


# ------------------------------------------------------------------------------------------- grid


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


_BREAK = re.compile(r"[^,\s/=_-]*[,\s/=_-]*")


def _wrap(text: str, font, width: float) -> list[str]:
    """Greedy lines of at most `width` px, broken after a comma, space, slash, '=', '_' or '-' where
    one is near, else anywhere."""
    lines, line = [], ""
    for token in (t for t in _BREAK.findall(text) if t):
        while token:
            if font.getlength(line + token) <= width:
                line, token = line + token, ""
            elif line:
                lines.append(line.rstrip())
                line = ""
            else:  # one token wider than the cell: as many characters as fit
                n = max(1, max(i for i in range(1, len(token) + 1) if i == 1 or font.getlength(token[:i]) <= width))
                lines.append(token[:n])
                token = token[n:]
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


def fit_text(text: str, width: float, size: int = 13, smallest: int = 9, max_lines: int = 3):
    """(font, lines): `text` in the largest font from `size` down to `smallest` that fits `width` px in at
    most `max_lines` lines; what still does not fit ends in "..." on the last line."""
    width = max(8.0, width)
    for px in range(size, smallest - 1, -1):
        font = _font(px)
        lines = _wrap(text, font, width)
        if len(lines) <= max_lines:
            return font, lines
    lines = lines[:max_lines]
    last = lines[-1]
    while last and font.getlength(last + "...") > width:
        last = last[:-1]
    return font, [*lines[:-1], last + "..."]


def _line_height(font) -> int:
    box = font.getbbox("Ag")
    return int(box[3] - min(0, box[1])) + 3


def draw_lines(d: ImageDraw.ImageDraw, xy: tuple[float, float], font, lines: list[str], fill="black") -> None:
    x, y = xy
    for line in lines:
        d.text((x, y), line, fill=fill, font=font)
        y += _line_height(font)


SHORT = {"style_swd": "SWD", "gmsd": "GMSD", "self_sim_dist": "SelfSim", "psnr": "PSNR", "ssim": "SSIM", "gram_distance": "Gram",
         "content_distance": "content", "style_distance": "style (old)", **{f"style_swd_{f}x": f"SWD{f}x" for f in SWD_SCALES}}
TIE_GRID = "~"  # the same in grid.png (Pillow's default font has no "≈")


def _cell_box(trials: list[TrialRecord]) -> tuple[int, int]:
    """Cell size: CELL px wide, with the aspect ratio of the first saved result."""
    for t in trials:
        if t.status == "completed" and t.final.exists() and not any(p.startswith("final.png") for p in t.problems):
            try:
                with Image.open(t.final) as im:
                    w, h = im.size
            except IMAGE_ERRORS:
                continue
            return (CELL, max(1, round(CELL * h / w))) if w >= h else (max(1, round(CELL * w / h)), CELL)
    return CELL, CELL * 3 // 4


PROBLEM = (230, 120, 0)  # the mark of a trial with an unreadable file


def _cell(trial: TrialRecord | None, annotate: list[str], box: tuple[int, int], ties: dict[str, set[str]]) -> Image.Image:
    w, h = box
    pad = 18 if annotate else 0
    img = None
    if trial is not None and trial.status == "completed" and not any(p.startswith("final.png") for p in trial.problems):
        try:
            with Image.open(trial.final) as im:
                img = ImageOps.contain(im.convert("RGB"), box, Image.Resampling.LANCZOS)
        except IMAGE_ERRORS:
            img = None
    if trial is not None and img is not None:
        cell = Image.new("RGB", (w, h + pad), "white")
        cell.paste(img, ((w - img.width) // 2, (h - img.height) // 2))
        shown = {m: v for m in annotate if (v := number(trial.summary.metrics.get(m))) is not None}
        text = "  ".join(f"{SHORT[m]} {human(v)}{TIE_GRID if trial.path.name in ties.get(m, ()) else ''}"
                         for m, v in shown.items())
        font, lines = fit_text(text, w - 4, size=12, max_lines=1)
        draw_lines(ImageDraw.Draw(cell), (2, h + 3), font, lines)
        return _mark_problem(cell, trial)
    # A failed, unfinished, unreadable or missing trial is a marked empty cell, never a missing one.
    cell = Image.new("RGB", (w, h + pad), (235, 235, 235))
    d = ImageDraw.Draw(cell)
    d.line((8, 8, w - 8, h - 8), fill=(200, 40, 40), width=3)
    d.line((8, h - 8, w - 8, 8), fill=(200, 40, 40), width=3)
    status = ("missing" if trial is None else trial.status).upper()
    d.text((max(2, (w - d.textlength(status, font=_font(14))) // 2), h // 2 - 8), status, fill=(200, 40, 40), font=_font(14))
    return _mark_problem(cell, trial)


def _mark_problem(cell: Image.Image, trial: TrialRecord | None) -> Image.Image:
    """A trial with an unreadable file: an orange frame, and the file named on an orange band."""
    if trial is None or not trial.problems:
        return cell
    d = ImageDraw.Draw(cell)
    d.rectangle((0, 0, cell.width - 1, cell.height - 1), outline=PROBLEM, width=4)
    d.rectangle((0, 0, cell.width - 1, 17), fill=PROBLEM)
    files = ", ".join(dict.fromkeys(p.split(":", 1)[0].replace(".", "folder") if p.startswith(".:") else p.split(":", 1)[0]
                                    for p in trial.problems))
    font, lines = fit_text(f"! {files}", cell.width - 8, size=12, max_lines=1)
    draw_lines(d, (4, 2), font, lines, fill="white")
    return cell


def _table_image(rows: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], title: str) -> Image.Image:
    """The cells in rows and columns, every label fitted to its cell (wrapped, then smaller, then cut)."""
    cw, ch = rows[0][0].size
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # row labels: as wide as the widest needs, at most a cell's width
    widest = max([probe.textlength(s, font=_font(13)) for s in row_labels] + [0])
    left = int(min(widest, cw)) + 12 if any(row_labels) else 4
    width = left + len(rows[0]) * (cw + 4) + 4
    cols = [fit_text(s, cw - 4) for s in col_labels]
    label_h = 18 + max([(len(lines) - 1) * _line_height(font) for font, lines in cols] + [0])  # 18: one line
    titled = fit_text(title, width - 8, size=15, max_lines=2) if title else None
    top = 4 + (len(titled[1]) * _line_height(titled[0]) + 2 if titled else 0) + label_h
    img = Image.new("RGB", (width, top + len(rows) * (ch + 4) + 4), "white")
    d = ImageDraw.Draw(img)
    if titled:
        draw_lines(d, (4, 2), *titled)
    for j, (font, lines) in enumerate(cols):
        draw_lines(d, (left + j * (cw + 4) + 2, top - label_h), font, lines)
    for i, row in enumerate(rows):
        y = top + i * (ch + 4)
        if row_labels[i]:
            font, lines = fit_text(row_labels[i], left - 8, max_lines=max(1, ch // 16))
            draw_lines(d, (4, y + (ch - len(lines) * _line_height(font)) // 2), font, lines)
        for j, cell in enumerate(row):
            img.paste(cell, (left + j * (cw + 4), y))
    return img


def make_grid(trials: list[TrialRecord], axes, annotate: list[str], sort_by: str | None = None) -> Image.Image:
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
        labels = [f"{key}={value_text(t.overrides.get(key))}" if t else "" for t in ordered]
        return _table_image([[_cell(t, annotate, box, ties) for t in ordered]], [""], labels, "")
    (rkey, rvals), (ckey, cvals), extra = axes[0], axes[1], axes[2:]
    combos: list[dict[str, str]] = [{}]
    for k, vals in extra:
        combos = [{**c, k: v} for c in combos for v in vals]
    panels = []
    for combo in combos:
        def find(rv, cv, combo=combo):  # bound now: called in this iteration only, but said so
            for t in trials:
                o = t.overrides
                if o.get(rkey) == rv and o.get(ckey) == cv and all(o.get(k) == v for k, v in combo.items()):
                    return t
            return None

        rows = [[_cell(find(rv, cv), annotate, box, ties) for cv in cvals] for rv in rvals]
        title = ", ".join(f"{k}={value_text(v)}" for k, v in combo.items())
        panels.append(_table_image(rows, [f"{rkey}={value_text(v)}" for v in rvals], [f"{ckey}={value_text(v)}" for v in cvals],
                                   title))
    if len(panels) == 1:
        return panels[0]
    out = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        out.paste(p, (0, y))
        y += p.height
    return out


def _sort_key(t: TrialRecord | None, key: str) -> float:
    v = number(t.summary.metrics.get(key)) if t else None
    return math.inf if v is None else v


# ----------------------------------------------------------------------------------------- curves


def _cache_dir() -> Path:
    """Where matplotlib keeps its font cache: the user's cache folder ($XDG_CACHE_HOME or ~/.cache,
    under nst/matplotlib), else the temporary folder; never a sweep folder (it is not the sweep's)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    user = getattr(os, "getuid", lambda: 0)()  # no uid on Windows
    for d in (Path(base) / "nst" / "matplotlib", Path(tempfile.gettempdir()) / f"nst-matplotlib-{user}"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK | os.X_OK):
                return d
        except OSError:
            continue
    return Path(tempfile.mkdtemp(prefix="nst-matplotlib-"))


def _pyplot():
    """matplotlib's pyplot, drawing to files only, its cache where _cache_dir says (a MPLCONFIGDIR the
    user set is kept), and quiet: its first run builds a font cache and says so on the log."""
    if not os.environ.get("MPLCONFIGDIR"):
        os.environ["MPLCONFIGDIR"] = str(_cache_dir())
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def make_curves(trials: list[TrialRecord], axes, path: Path) -> None:
    plt = _pyplot()

    keys = [k for k, _ in axes]
    terms = ["total", "content", "style"] + (["tv"] if any(number(r.get("tv")) for t in trials for r in t.rows) else [])
    fig, axs = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.6), squeeze=False)
    for ax, term in zip(axs[0], terms, strict=True):
        for t in trials:
            pts = [(r["evaluation"], v) for r in t.rows if (v := number(r.get(term))) is not None and v > 0]
            if pts:
                x, y = zip(*pts, strict=True)
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
    plt = _pyplot()

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


def make_objective_plot(trials: list[TrialRecord], axes, path: Path) -> bool:
    """A search: its objective against the trial number (with the best so far) and against each
    searched value. False when no trial recorded an objective (a grid)."""
    scored = [(t, v) for t in trials
              if t.status == "completed" and (v := objective_value(t)) is not None]
    if not scored:
        return False
    plt = _pyplot()
    import matplotlib.ticker

    name = objective_name(scored[0][0])
    searched = [k for k, _ in axes if all(_number(t.overrides.get(k)) is not None for t, _ in scored)]
    fig, axs = plt.subplots(1, 1 + len(searched), figsize=(4.4 * (1 + len(searched)), 3.6), squeeze=False)
    ys = [v for _, v in scored]
    ax = axs[0][0]
    ax.plot([t.num for t, _ in scored], ys, "o", label="trial")
    best, steps = math.inf, []
    for t, v in scored:
        best = min(best, v)
        steps.append((t.num, best))
    ax.step(*zip(*steps, strict=True), where="post", label="best so far")
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(name)
    ax.legend(fontsize=8, frameon=False)
    for ax, key in zip(axs[0][1:], searched, strict=True):
        xs = [x for t, _ in scored if (x := _number(t.overrides.get(key))) is not None]  # all of them: `searched`
        ax.plot(xs, ys, "o")
        if _log_scale(xs):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_title(f"{name} against {key}")
    for ax in axs[0]:
        if _log_scale(ys):
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    _save_figure(fig, path)
    return True


# --------------------------------------------------------------------------------------- scatter


def _thumbnail(path: Path, side: int) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            return ImageOps.contain(im.convert("RGB"), (side, side), Image.Resampling.LANCZOS)
    except (*IMAGE_ERRORS, OSError):
        return None


def _short_label(text: str, width: int) -> str:
    import textwrap

    lines = textwrap.wrap(text, width, break_on_hyphens=False) or [""]
    if len(lines) > 2:
        lines = [lines[0], lines[1][: width - 3] + "..."]
    return "\n".join(lines)


def _spread(points, w: float, h: float, rounds: int = 200):
    """Offsets (in the points' units) that move boxes of w x h centred on `points` apart until none
    overlap (or `rounds` passes): each overlapping pair is pushed apart along the shorter way."""
    import numpy as np

    off = np.zeros_like(points, dtype=float)
    for _ in range(rounds):
        moved = False
        for i in range(len(points)):
            for j in range(i + 1, len(points)):
                d = (points[j] + off[j]) - (points[i] + off[i])
                over = np.array([w, h]) - np.abs(d)
                if (over <= 0).any():
                    continue
                axis = int(over[1] < over[0])  # push along the axis that needs less
                sign = 1.0 if d[axis] >= 0 else -1.0
                off[j, axis] += sign * (over[axis] / 2 + 1)
                off[i, axis] -= sign * (over[axis] / 2 + 1)
                moved = True
        if not moved:
            break
    return off


def make_scatter(trials: list[TrialRecord], axes, path: Path) -> bool:
    """The trade-off, each completed trial's result at its point: a search's objective against its
    first searched number, else style_swd (distance to the style) against gmsd (structure lost from
    the content), both lower-is-better. False when no trial has the two numbers."""
    import numpy as np
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage, TextArea, VPacker

    keys = [k for k, _ in axes]
    done = [t for t in trials if t.status == "completed"]
    objective = [(t, v) for t in done if (v := objective_value(t)) is not None]
    if objective:
        name = objective_name(objective[0][0])
        searched = [k for k in keys if all(_number(t.overrides.get(k)) is not None for t, _ in objective)]
        xkey = searched[0] if searched else None
        # every trial has the number (`searched`)
        points = [(t, x, v) for t, v in objective if (x := _number(t.overrides.get(xkey)) if xkey else float(t.num)) is not None]
        xlabel, ylabel = (xkey or "trial number"), f"{name}  (lower is better \u2193)"
        title = f"{name} against {xkey or 'trial number'}"
    else:
        points = [(t, x, y) for t in done if (x := number(t.summary.metrics.get("gmsd"))) is not None
                  and (y := number(t.summary.metrics.get("style_swd"))) is not None]
        xlabel = "gmsd: structure lost from the content  (\u2190 lower is better)"
        ylabel = "style_swd: distance to the style  (lower is better \u2193)"
        title = "The trade-off: better results lie towards the lower left"
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    ax.plot(xs, ys, "o", color="#444", markersize=3, zorder=3)
    if objective and _log_scale(xs):
        ax.set_xscale("log")
    if _log_scale(ys):
        ax.set_yscale("log")
    ax.margins(0.22)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    import matplotlib.ticker

    for axis in (ax.xaxis, ax.yaxis):  # few ticks: close values would print on top of each other
        if axis.get_scale() == "linear":
            axis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5))
    side = 64 if len(points) <= 12 else 44 if len(points) <= 40 else 28
    texts = len(points) <= 40
    ax.set_xlim(ax.get_xlim())  # fixed now: the thumbnails are placed in screen space below
    ax.set_ylim(ax.get_ylim())
    fig.canvas.draw()
    scale = fig.dpi / 72  # OffsetImage draws one image pixel per point
    offsets = _spread(ax.transData.transform(np.array([(x, y) for _, x, y in points])),
                      (side + 8) * scale, (side + (24 if texts else 8)) * scale) / scale
    for (t, x, y), (dx, dy) in zip(points, offsets, strict=True):
        thumb = _thumbnail(t.final, side)
        if thumb is None:
            continue
        parts: list = [OffsetImage(np.asarray(thumb), zoom=1)]
        if texts:  # as wide as the thumbnail: two lines of about side / 3.4 characters at 6.5 pt
            parts.append(TextArea(_short_label(label(t, keys) if keys else t.path.name, max(8, int(side / 3.4))),
                                  textprops={"fontsize": 6.5}))
        box = VPacker(children=parts, align="center", pad=0, sep=1)
        ax.add_artist(AnnotationBbox(box, (x, y), xybox=(dx, dy), boxcoords="offset points", frameon=True, pad=0.15,
                                     zorder=2, bboxprops={"edgecolor": "#777", "linewidth": 0.6},
                                     arrowprops={"arrowstyle": "-", "color": "#777", "linewidth": 0.6}))
    ax.grid(True, which="both", alpha=0.3)
    _save_figure(fig, path)
    return True


# ------------------------------------------------------------------------------------- animations


def make_animation(trial: TrialRecord, warn: Callable[[str], None] | None = None) -> Path | None:
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
        trial.problems.append(f"frames: a frame is unreadable ({reason(e)})")
        (warn or log.warning)(warning(trial, trial.problems[-1]))
    return None
