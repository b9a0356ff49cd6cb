"""The engine from Python, without the command line, for scripts and notebooks.

    from nst import stylize, stylize_batch
    result = stylize("tubingen", "starry_night", size=256, steps=150)
    result                      # shows the picture in a notebook (it is a PIL image)
    result.final, result.metrics, result.wall_time, result.losses   # what the run measured

Inputs are bundled example names (`"tubingen"`, `"starry_night"`), image paths, PIL images or
tensors ([3,H,W] or [1,3,H,W] in [0, 1]). Keyword overrides are the command line's keys: `size=256`,
`style_weight=1e4`, `optimizer="adam"` (a config group), and a nested key with a dot,
`**{"optimizer.lr": 0.5}`, or with a double underscore, `optimizer__lr=0.5`. The settings are composed
from the same config files and checked by the same rules as a command, and the trials run through the
same runner: `stylize_batch` runs compatible settings as one batch, as a sweep does. Values passed
from Python are data: a `${...}` in them is kept as written, never read as an interpolation.

Nothing is written unless `out_dir` is given. Then `out_dir` is a sweep folder, as a command's
`hydra.sweep.dir` is: one folder per trial (final.png, summary.json, metrics.jsonl, frames/), the
report (results.csv, grid.png, report.html), the images given in memory (`inputs/`), and its identity
and owner in `.nst/`. Calling again with the same settings resumes it (completed trials are read back,
not run again); other values of the same swept keys extend it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import numbers
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from PIL import Image, ImageOps

from nst.errors import InputError, TrialFailed
from nst.images import cropped_size
from nst.summary import Summary

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from nst.settings import Settings

log = logging.getLogger("nst")

ImageInput = Union[str, "os.PathLike[str]", Image.Image, "torch.Tensor"]
INPUTS = "inputs"  # where images given in memory are written, inside the run's own folder


@dataclasses.dataclass(frozen=True)
class TrialStep:
    """What a callback gets for each counted evaluation (one forward and backward pass) of a trial.

    Attributes:
        trial: which entry of `variants` it belongs to (0 for `stylize`).
        evaluation: the trial's count of evaluations so far, from 1.
        values: every loss term: total (weighted), content, style, tv, and per layer (`style/conv1_1`).
        image: the image evaluated, a tensor [1,3,H,W] in [0, 1]; copy it to keep it.
        wall_time: seconds since the optimisation started.
        level: the pyramid level (coarse to fine, from 0) when there are several, else None.
    """

    trial: int
    evaluation: int
    values: dict[str, float]
    image: Any  # torch.Tensor
    wall_time: float
    level: int | None


class Stylized(Image.Image):
    """A finished transfer: the picture itself (a PIL image, so a notebook shows it and `.save()`,
    `.resize()` and `numpy.asarray()` work) together with what the run measured.

    Attributes:
        summary: everything the trial recorded (what its summary.json holds), as a dict.
        settings: the validated settings the trial ran with (nst.settings.Settings).
        run_dir: the trial's folder inside `out_dir`, or None when nothing was written.
        resumed: True when `out_dir` already held this trial, completed with the same settings, and
            it was read back rather than run again.
    """

    settings: Settings
    run_dir: Path | None
    resumed: bool
    _rows: list[dict]
    _summary: Summary

    @property
    def summary(self) -> dict:
        return self._summary.to_dict()

    @property
    def final(self) -> dict[str, float]:
        """The loss terms of the returned image: total, content, style, tv, and per layer."""
        return dict(self._summary.final)

    @property
    def metrics(self) -> dict[str, float | None]:
        """The standardised quality metrics (the same for every recipe, so trials can be compared):
        psnr and gmsd against the photograph, style_swd against the painting, ..."""
        return dict(self._summary.metrics)

    @property
    def wall_time(self) -> float:
        """Seconds the trial took, setting up its images and targets included."""
        return self._summary.wall_time or 0.0

    @property
    def evaluations(self) -> int:
        """Objective evaluations spent (forward and backward passes: the unit of cost)."""
        return self._summary.evaluations or 0

    @property
    def losses(self) -> pd.DataFrame:
        """The loss curve, one row per evaluation (indexed by it): wall_time, total, content, style,
        tv and per layer. A resumed trial's curve is its metrics.jsonl (every `log_every` evaluations)."""
        import pandas as pd

        return pd.DataFrame(self._rows).set_index("evaluation") if self._rows else pd.DataFrame()

    def _repr_jpeg_(self) -> None:
        return None  # a notebook keeps the lossless PNG only (PIL would add a JPEG copy beside it)

    def __repr__(self) -> str:
        total = self.final.get("total")
        loss = f" total loss {total:.4g}" if total is not None else ""
        return f"<nst.Stylized {self.width}x{self.height}{loss} after {self.evaluations} evaluations>"


def stylize(content: ImageInput = "tubingen", style: ImageInput | Sequence[ImageInput] = "starry_night", *,
            callback: Callable[[TrialStep], None] | None = None, out_dir: str | os.PathLike | None = None,
            progress: bool | None = None, **overrides: Any) -> Stylized:
    """Paint `content` in the manner of `style`.

    Args:
        content: the photograph: a bundled name, a path, a PIL image or a tensor ([3,H,W] or
            [1,3,H,W], values in [0, 1]).
        style: the painting, as `content`; several in a list are blended (`style_blend` weighs them).
        callback: called with a TrialStep at every evaluation, e.g. to plot the loss as it falls.
        out_dir: a sweep folder to write the run into (see the module's notes); None writes nothing.
        progress: a progress bar (a widget in a notebook, text on a terminal). On unless False, or
            unless the environment sets NST_PROGRESS=0.
        **overrides: config keys and their values, as on the command line (`size=256`, `steps=150`,
            `style_weight=1e4`, `optimizer="adam"`, `optimizer__lr=0.5`).

    Returns:
        The result image, which also carries its summary, settings and loss curve (Stylized).

    Raises:
        nst.errors.InputError: a bad key, value, image or out_dir, in one line naming it, before
            anything runs or is written.
        nst.errors.TrialFailed: the transfer did not complete (its one-line reason).
    """
    return stylize_batch(content, style, [{}], callback=callback, out_dir=out_dir, progress=progress, **overrides)[0]


def stylize_batch(content: ImageInput = "tubingen", style: ImageInput | Sequence[ImageInput] = "starry_night",
                  variants: Sequence[dict[str, Any]] = ({},), *, callback: Callable[[TrialStep], None] | None = None,
                  out_dir: str | os.PathLike | None = None, progress: bool | None = None,
                  max_batch: int | None = None, **common: Any) -> list[Stylized]:
    """Several settings at once, e.g. a row of style weights: one trial per entry of `variants` (its
    overrides on top of `common`), run as batches of compatible trials, as a sweep runs them.

    Args:
        content: as for `stylize`.
        style: as for `stylize`.
        variants: one dict of overrides per trial, e.g. `[{"style_weight": w} for w in (1e3, 1e5)]`.
        callback: as for `stylize`; its `TrialStep.trial` says which variant an evaluation belongs to.
        out_dir: a sweep folder, as for `stylize`; its report (results.csv, grid.png, report.html)
            is written once the trials end.
        progress: as for `stylize`: one bar per trial.
        max_batch: at most this many trials share a pass (None: as many as fit, as `max_batch=auto`).
        **common: overrides every trial shares.

    Returns:
        One Stylized per variant, in order.

    Raises:
        nst.errors.InputError: as for `stylize`; every variant is checked before any runs.
        nst.errors.TrialFailed: a trial did not complete (the others' files are kept in out_dir).
    """
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    given: dict[str, Any] = {}  # role -> what the caller passed, described
    memory: dict[str, Image.Image] = {}  # the file it will be written to -> an image given in memory
    root = _root(out_dir)
    work = root or Path(tempfile.mkdtemp(prefix="nst_"))  # nothing outside the run's own folder
    try:
        content_arg = _input("content", content, work, given, memory)
        style_arg = [_input("style" if len(styles) == 1 else f"style[{i}]", s, work, given, memory) for i, s in enumerate(styles)]
        base = {"content": content_arg, "style": style_arg[0] if len(style_arg) == 1 else style_arg}
        swept = sorted({k for v in variants for k in _keys(v)})
        fixed = overrides_of({**base, **{k: v for k, v in _keys(common).items() if k not in swept}})
        own = [overrides_of(dict(v)) for v in variants]  # each trial's own overrides (what names it)
        settings = [_settings(["logger=none", *overrides_of({**base, **_keys(common), **_keys(v)})]) for v in variants]
        inputs = [_decode(s, memory) for s in settings]  # every image checked before anything is written
        # an image given in memory has no file yet to read its size from: the decoded image gives it
        settings = [s if s.content_size is not None
                    else dataclasses.replace(s, content_size=cropped_size(inp["content"].size, s.crop))
                    for s, inp in zip(settings, inputs, strict=True)]
        with _claimed(root, fixed, swept, own) as numbers_:
            for path, img in memory.items():
                if not Path(path).exists():  # named by its content: the same image, the same file
                    from nst.images import save_atomic

                    save_atomic(img, Path(path))
            return _run(settings, inputs, own, fixed, numbers_, work, root is not None, given,
                        callback=callback, progress=progress, max_batch=max_batch)
    finally:
        if root is None:
            shutil.rmtree(work, ignore_errors=True)


def _settings(overrides: list[str]):
    from nst.compose import describe, settings_for

    try:
        return settings_for(overrides)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a value the schema refuses when it is resolved (a string for a number)
        raise describe(e) from None


def _run(settings: list, inputs: list[dict], own: list[list[str]], fixed: list[str], numbers_: list[int],
         work: Path, keep: bool, given: dict, *, callback, progress, max_batch) -> list[Stylized]:
    from nst.engine import Trial, run_trials
    from nst.sinks import FileSink, ProgressSink
    from nst.summary import read as read_summary

    curves: dict[int, list[dict]] = {}
    trials: list[Trial] = []
    results: list[Stylized | None] = [None] * len(settings)
    on = progress is not False
    for i, (s, inp, o) in enumerate(zip(settings, inputs, own, strict=True)):
        label = ",".join(o) or "nst"
        run_dir = work / (_trial_folder(work, numbers_[i], o) if keep else str(i))
        previous = read_summary(run_dir / "summary.json")
        if (previous.completed and previous.settings == _plain(s.to_dict())
                and (run_dir / "final.png").is_file()):
            results[i] = _result(run_dir, previous, s, _read_rows(run_dir / "metrics.jsonl"), resumed=True)
            log.info(f"{label}: already completed with these settings in {run_dir}, read back")
            continue
        run_dir.mkdir(parents=True, exist_ok=True)

        def open_sinks(position: int, i=i, s=s, run_dir=run_dir, label=label) -> list:
            curves[i] = []  # a retried attempt starts its curve again
            sinks: list = [_CurveSink(curves[i])]
            if keep:
                sinks.append(FileSink(run_dir, log_every=s.log_every, frame_every=s.frame_every, steps=s.total_steps))
            if on:
                sinks.append(ProgressSink(s.total_steps, label, position))
            if callback is not None:
                sinks.append(_CallbackSink(i, callback))
            return sinks

        record = {"label": label, "overrides": [*fixed, *o], "settings": s.to_dict(), "inputs": given}
        trials.append(Trial(s, inp, run_dir, open_sinks, record))
    todo = [i for i, r in enumerate(results) if r is None]
    summaries = run_trials(trials, max_batch) if trials else []
    if keep and trials:
        _report(work)
    for i, trial, summary in zip(todo, trials, summaries, strict=True):
        if summary.get("status") != "completed":
            raise TrialFailed(f"{summary.get('label', 'trial')}: {summary.get('error', 'did not complete')}")
        results[i] = _result(trial.run_dir if keep else None, Summary.from_dict(summary), trial.settings, curves.get(i, []),
                             resumed=False, image_dir=trial.run_dir)
    return results  # type: ignore[return-value]


def _trial_folder(root: Path, number: int, own: list[str]) -> str:
    """The trial's folder: the one its number already has (a command may have run it, naming it its
    way), else `<number>_<its own overrides>`."""
    from nst.sweep_folder import folder_name

    existing = sorted(d.name for d in root.glob(f"{number}_*") if d.is_dir())
    return existing[0] if existing else folder_name(number, ",".join(own))


def _result(run_dir: Path | None, summary: Summary, settings, rows: list[dict], *, resumed: bool,
            image_dir: Path | None = None) -> Stylized:
    folder = image_dir or run_dir
    assert folder is not None
    with Image.open(folder / "final.png") as img:
        rgb = img.convert("RGB")
    out = Stylized.__new__(Stylized)
    out.__dict__.update(rgb.__dict__)  # the decoded picture itself, not a copy of its pixels
    out._summary, out.settings, out.run_dir, out.resumed, out._rows = summary, settings, run_dir, resumed, rows
    return out


def _report(sweep_dir: Path) -> None:
    from nst.report import aggregate

    try:
        with _backend_kept():
            out = aggregate(sweep_dir)
    except Exception as e:  # noqa: BLE001 - a report that cannot be written must not lose the results
        log.error(f"the report of {sweep_dir} could not be written: {type(e).__name__}: {e} "
                  f"(retry with: python -m nst.report {sweep_dir})")
        return
    log.info(f"sweep report: {out['report']}")


@contextmanager
def _backend_kept():
    """The report draws with matplotlib's Agg backend, which it selects for the whole process: the
    caller's (a notebook's inline backend) is put back, or later plots in a notebook show nothing."""
    import matplotlib
    import matplotlib.rcsetup

    before = matplotlib.rcParams._get_backend_or_none()  # None: not chosen yet
    try:
        yield
    finally:
        if matplotlib.rcParams._get_backend_or_none() != before:
            if before is None:
                matplotlib.rcParams["backend"] = matplotlib.rcsetup._auto_backend_sentinel
            else:
                matplotlib.use(before)


# --- inputs ----------------------------------------------------------------------------------------

def _input(role: str, value: Any, work: Path, given: dict, memory: dict[str, Image.Image]) -> str:
    """The config value for an input: a name or path as it is; an image in memory as the path of the
    PNG it will be written to (inside the run's folder), named by its pixels."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        given[role] = text
        return text
    if isinstance(value, Image.Image):
        from nst.images import to_rgb

        img = to_rgb(ImageOps.exif_transpose(value))
        given[role] = f"a PIL image ({value.mode}, {value.width}x{value.height})"
    elif type(value).__module__.startswith("torch"):
        img = _from_tensor(role, value)
        given[role] = f"a tensor {list(value.shape)} ({str(value.dtype).replace('torch.', '')}), saved as 8-bit RGB"
    else:
        raise InputError(role, f"must be a bundled name, a path, a PIL image or a tensor [3,H,W] or [1,3,H,W] "
                               f"in [0, 1], got {type(value).__name__}")
    name = hashlib.sha1(f"{img.size}".encode() + img.tobytes()).hexdigest()[:16] + ".png"
    path = str(work / INPUTS / name)
    memory[path] = img
    given[role] += f", written to {INPUTS}/{name}"
    return path


def _from_tensor(role: str, x) -> Image.Image:
    import torch

    from nst.images import to_pil

    shape = list(x.shape)
    if not (x.dim() == 3 and shape[0] == 3 or x.dim() == 4 and shape[:2] == [1, 3]) or min(shape[-2:]) < 1:
        raise InputError(role, f"a tensor must be one RGB image, [3,H,W] or [1,3,H,W], got shape {shape}")
    if not x.is_floating_point():
        raise InputError(role, f"a tensor must hold floats in [0, 1], got {str(x.dtype).replace('torch.', '')} "
                               "(divide 8-bit values by 255)")
    x = x.detach().float().cpu()
    if not bool(torch.isfinite(x).all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise InputError(role, f"a tensor must hold values in [0, 1], got values from {float(x.min()):.4g} "
                               f"to {float(x.max()):.4g}")
    return to_pil(x)


def _decode(s, memory: dict[str, Image.Image]) -> dict:
    """The trial's input images (as nst.stage.Stage.inputs gives them), with the images given in memory
    taken as they are; their sizes checked. Nothing is written."""
    from nst.images import load_image
    from nst.settings import check_image_size

    def load(key: str, value: str) -> Image.Image:
        return memory[value] if value in memory else load_image(key, value)

    out: dict[str, Any] = {"content": load("content", s.content)}
    if s.objective.style_layers:
        out["style"] = [load("style" if len(s.style) == 1 else f"style[{i}]", v) for i, v in enumerate(s.style)]
    check_image_size(s, out["content"].size, [img.size for img in out.get("style", [])])
    if s.init == "image":
        out["init"] = load_image("init.path", s.init_path)
    return out


# --- the output folder -----------------------------------------------------------------------------

def _root(out_dir) -> Path | None:
    """out_dir as an absolute path, refused up front if it cannot be a sweep folder of nst's."""
    if out_dir is None:
        return None
    from nst.sweep_folder import STATE

    root = Path(os.path.abspath(os.path.expanduser(os.fspath(out_dir))))
    if root.exists() and not root.is_dir():
        raise InputError("out_dir", f"{root} exists and is not a folder; give a folder (new, empty, or one nst wrote)")
    if root.is_dir() and not (root / STATE).is_dir() and ((root / ".hydra").is_dir() or (root / "summary.json").exists()):
        raise InputError("out_dir", f"{root} is a single run's folder, not a sweep folder; give a new or empty folder")
    if root.is_dir() and not (root / STATE).is_dir() and any(root.iterdir()):
        raise InputError("out_dir", f"{root} is a folder nst did not make (no {STATE}/ in it) and is not empty; "
                                    "give a new or empty folder, so nothing of yours is overwritten")
    return root


@contextmanager
def _claimed(root: Path | None, fixed: list[str], swept: list[str], own: list[list[str]]):
    """For the duration of the run: out_dir's owner lock, checked against its sweep identity (as a grid
    command claims hydra.sweep.dir, nst.sweep_folder). Yields each trial's number in the folder."""
    if root is None:
        yield list(range(len(own)))
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.nst_launcher._hydra_private import split_arguments
    from nst import sweep_folder

    # A trial is known by all its overrides as Hydra's basic sweeper spells them (1e2 as 100.0), as a
    # command's trials are (nst.compose): the same trial asked either way finds its number.
    parser = OverridesParser.create()
    full = [split_arguments(parser.parse_overrides(["logger=none", *fixed, *o]), None)[0][0] for o in own]
    ident = sweep_folder.identity(["logger=none", *fixed], swept)
    try:
        sweep_folder.claim(root, ident, full, ["(Python API)", *fixed, *(f"[{','.join(o)}]" for o in own)])
    except InputError as e:
        message = str(e)[len(e.key) + 2:] if str(e).startswith(f"{e.key}: ") else str(e)
        raise InputError("out_dir", message.replace("leave hydra.sweep.dir unset for a new folder", "give another out_dir")
                         .replace("hydra.sweep.dir", "out_dir")) from None
    try:
        registry = json.loads((root / sweep_folder.STATE / "trials.json").read_text(encoding="utf-8"))
        # the folder's own lookup (it also knows the keys older folders were written with)
        yield [int(sweep_folder.number_of(registry, t, None)) for t in full]
    finally:
        # The lock is held for this call only (a notebook's kernel lives on): let the next command in.
        sweep_folder.release(root)


# --- sinks -----------------------------------------------------------------------------------------

class _CallbackSink:
    def __init__(self, trial: int, callback: Callable[[TrialStep], None]):
        self.trial, self.callback = trial, callback

    def on_step(self, record) -> None:
        self.callback(TrialStep(self.trial, record.evaluation, record.values, record.image, record.wall_time, record.level))

    def close(self, summary: dict) -> None:
        pass


class _CurveSink:
    """Every evaluation's loss terms, kept in memory for Stylized.losses."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def on_step(self, record) -> None:
        row = {"evaluation": record.evaluation, "wall_time": record.wall_time}
        if record.level is not None:
            row["level"] = record.level
        row.update(record.values)
        self.rows.append(row)

    def close(self, summary: dict) -> None:
        pass


def _read_rows(path: Path) -> list[dict]:
    from nst.records import read_jsonl

    try:
        parsed, _ = read_jsonl(path)
    except OSError:
        return []
    # a cut line (the run was stopped while writing it) is left out
    return [row for _, row in parsed if isinstance(row, dict) and "evaluation" in row]


def _plain(d: dict) -> dict:
    """As it reads back from summary.json (tuples become lists)."""
    return json.loads(json.dumps(d))


# --- keyword arguments as overrides ----------------------------------------------------------------

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_WORD = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")


def _keys(values: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("__", "."): v for k, v in values.items()}


def overrides_of(values: dict[str, Any]) -> list[str]:
    """Keyword arguments as command-line overrides: `optimizer__lr=0.5` is `optimizer.lr=0.5`, a list is
    `[a,b]`, None is `null`, True is `true`; a string is always a string, taken literally."""
    out = []
    for key, value in values.items():
        key = key.replace("__", ".")
        if not _KEY.fullmatch(key) or key.startswith("hydra"):
            raise InputError(key or "(empty)", "the Python API takes the config's own keys (letters, digits, _ and "
                                               "dots), not Hydra's options")
        out.append(f"{key}={_value(key, value)}")
    return out


def _value(key: str, v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return _number(float(v))
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(key, x) for x in v) + "]"
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, str):
        raise InputError(key, f"takes a number, a string, a bool, None or a list of them, got {type(v).__name__} "
                              "(give nested keys with a dot or a double underscore: optimizer__lr=0.5)")
    if _WORD.fullmatch(v) and v.lower() not in ("null", "true", "false", "nan", "inf"):
        return v  # a plain word or path reads back as itself
    return _quoted(v)


def _number(x: float) -> str:
    """The shortest spelling that reads back as the same float, and as a float: 1e4, not 10000.0 (it
    names trial folders and report labels)."""
    if not math.isfinite(x):
        return repr(x)  # nan, inf, -inf: Hydra reads them back
    for digits in range(1, 18):
        text = f"{x:.{digits}g}"
        if float(text) == x:
            break
    text = re.sub(r"e([+-])0*(\d)", lambda m: "e" + ("-" if m.group(1) == "-" else "") + m.group(2), text)
    return text if ("e" in text or "." in text) else text + ".0"


def _quoted(text: str) -> str:
    """`text` quoted for Hydra's override parser, with OmegaConf's interpolation syntax escaped: it
    reaches the config as exactly `text`, so `${oc.env:...}` in a path reads no environment variable."""
    from hydra.core.override_parser.types import Quote, QuotedString

    # OmegaConf reads `\${` as a literal `${`, and `\\` before `${` as one backslash
    escaped = re.sub(r"(\\*)\$\{", lambda m: "\\" * (2 * len(m.group(1)) + 1) + "${", text)
    return QuotedString(text=escaped, quote=Quote.single).with_quotes()
