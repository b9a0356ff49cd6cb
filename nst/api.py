"""The engine from Python, without the command line:

    from nst import stylize, stylize_batch
    image = stylize("tubingen", "starry_night", size=256, steps=150)          # a PIL image
    images = stylize_batch("tubingen", "starry_night", [{"style_weight": 1e4}, {"style_weight": 1e6}], size=128)

Keyword overrides are the command line's keys (README "Configuration"): `size=256`, `style_weight=1e4`,
`optimizer="adam"` (a config group), and a nested key with a dot, `**{"optimizer.lr": 0.5}`, or with
a double underscore, `optimizer__lr=0.5`. The settings are composed from the same config files and
checked by the same rules as a command (a bad value raises nst.errors.InputError naming the key, before
anything heavy), and the trials run through the same runner: `stylize_batch` runs compatible settings
as one batch, as a sweep does.

Nothing is written unless `out_dir` is given: then each trial writes what a run writes (final.png,
summary.json, metrics.jsonl, frames/, animation.gif) into its own numbered folder there. A
`callback(record)` sees every counted evaluation of every trial: `record.values` holds its loss terms
(total, content, style, tv and per layer), `record.evaluation` its count, `record.image` the image
evaluated ([1,3,H,W] in [0,1]; copy it to keep it), `record.trial` which trial of the batch it is.
Each returned image carries its trial's summary (what summary.json holds) in `image.info["summary"]`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from nst.errors import InputError, TrialFailed


@dataclasses.dataclass(frozen=True)
class TrialStep:
    """What a callback gets: one counted evaluation of one trial (a nst.sinks.StepRecord and the trial's index)."""

    trial: int
    evaluation: int
    values: dict[str, float]
    image: Any  # torch.Tensor [1,3,H,W]
    wall_time: float
    level: int | None


def stylize(content: str = "tubingen", style: str | Sequence[str] = "starry_night", *,
            callback: Callable[[TrialStep], None] | None = None, out_dir: str | Path | None = None,
            progress: bool = False, **overrides: Any) -> Image.Image:
    """One transfer of `style` onto `content` (bundled example names or image paths; several styles as a
    list, blended by `style_blend`). Returns the result as an RGB PIL image; raises InputError for bad
    input and TrialFailed when the trial fails."""
    return stylize_batch(content, style, [{}], callback=callback, out_dir=out_dir, progress=progress, **overrides)[0]


def stylize_batch(content: str = "tubingen", style: str | Sequence[str] = "starry_night",
                  variants: Sequence[dict[str, Any]] = ({},), *, callback: Callable[[TrialStep], None] | None = None,
                  out_dir: str | Path | None = None, progress: bool = False, max_batch: int | None = None,
                  **common: Any) -> list[Image.Image]:
    """Several settings at once: one trial per entry of `variants` (its overrides on top of `common`),
    run as batches of compatible trials (at most `max_batch` each; None: as `max_batch=auto`). Returns
    one image per variant, in order. Every variant is validated before any runs."""
    from nst.cli import settings_for
    from nst.runner import Trial, run_trials
    from nst.settings import load_inputs
    from nst.sinks import FileSink, ProgressSink

    base = {"content": content, "style": list(style) if isinstance(style, (list, tuple)) else style, **common}
    settings = [settings_for(["logger=none", *overrides_of({**base, **variant})]) for variant in variants]
    inputs = [load_inputs(s) for s in settings]
    with (nullcontext(str(out_dir)) if out_dir is not None else tempfile.TemporaryDirectory(prefix="nst_")) as root:
        trials = []
        for i, (s, inp) in enumerate(zip(settings, inputs)):
            run_dir = Path(root) / str(i)
            run_dir.mkdir(parents=True, exist_ok=True)

            def open_sinks(position: int, i=i, s=s, run_dir=run_dir) -> list:
                sinks: list = []
                if out_dir is not None:
                    sinks.append(FileSink(run_dir, log_every=s.log_every, frame_every=s.frame_every, steps=s.total_steps))
                if progress:
                    sinks.append(ProgressSink(s.total_steps, f"trial {i}" if len(settings) > 1 else "nst", position))
                if callback is not None:
                    sinks.append(_CallbackSink(i, callback))
                return sinks

            trials.append(Trial(s, inp, run_dir, open_sinks, {"label": f"trial {i}", "settings": s.to_dict()}))
        summaries = run_trials(trials, max_batch)
        results = []
        for trial, summary in zip(trials, summaries):
            if summary.get("status") != "completed":
                raise TrialFailed(f"{summary.get('label', 'trial')}: {summary.get('error', 'did not complete')}")
            with Image.open(trial.run_dir / "final.png") as img:
                image = img.convert("RGB")
            image.info["summary"] = summary
            results.append(image)
    return results


class _CallbackSink:
    def __init__(self, trial: int, callback: Callable[[TrialStep], None]):
        self.trial, self.callback = trial, callback

    def on_step(self, record) -> None:
        self.callback(TrialStep(self.trial, record.evaluation, record.values, record.image, record.wall_time, record.level))

    def close(self, summary: dict) -> None:
        pass


def overrides_of(values: dict[str, Any]) -> list[str]:
    """Keyword arguments as command-line overrides: `optimizer__lr=0.5` is `optimizer.lr=0.5`, a list is
    `[a,b]`, None is `null`, True is `true`."""
    out = []
    for key, value in values.items():
        key = key.replace("__", ".")
        if not key or key.startswith(("hydra", "+", "~")):
            raise InputError(key or "(empty)", "the Python API takes the config's own keys, not Hydra's options")
        out.append(f"{key}={_value(value)}")
    return out


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    text = str(v)
    # a plain word or path is left as it is; anything Hydra's grammar would read otherwise is quoted
    if text and all(c.isalnum() or c in "_-./:" for c in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
