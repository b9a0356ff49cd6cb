"""Sinks receive the optimisation's step records: local files and the progress bar (W&B lives in wandb_sink).

The runner knows nothing of files, W&B or progress bars: every counted evaluation of a trial becomes a
StepRecord handed to each of that trial's sinks (`on_step`), and `close(summary)` ends them."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from nst import records
from nst.images import save_atomic, to_pil


@dataclass(frozen=True)
class StepRecord:
    evaluation: int  # 1-based count of this trial's objective evaluations (one forward + backward each)
    wall_time: float  # seconds since the optimisation started
    values: dict[str, float]  # every loss term of this trial at this evaluation (one host transfer per batch)
    image: torch.Tensor  # [1,3,H,W], the image that was evaluated (as it is saved); copy it to keep it
    level: int | None = None  # the pyramid level (coarse to fine, from 0), when there are several


def due(evaluation: int, every: int, steps: int) -> bool:
    """Whether a sink records this evaluation: the first, every `every`-th, and the last."""
    return evaluation == 1 or evaluation % every == 0 or evaluation == steps


class FileSink:
    """metrics.jsonl (every `log_every` evaluations, and the first) and frames/ (every `frame_every`),
    written into the attempt's folder (nst.records.attempt_dir: the trial's folder, or its staging
    folder while an earlier attempt's files are kept). A file that cannot be written raises
    nst.records.WriteError naming it; a metrics row is written whole or not at all."""

    def __init__(self, run_dir: Path, *, log_every: int, frame_every: int, steps: int):
        self.run_dir, self.log_every, self.frame_every, self.steps = Path(run_dir), log_every, frame_every, steps
        self.out = records.attempt_dir(self.run_dir)
        self.frames_dir = self.out / "frames"
        self.metrics_path = self.out / "metrics.jsonl"
        with records.writing(self.frames_dir):
            self.frames_dir.mkdir(parents=True, exist_ok=True)
        with records.writing(self.metrics_path):
            self._metrics = open(self.metrics_path, "wb", buffering=0)
        self.width = len(str(steps))

    def on_step(self, rec: StepRecord) -> None:
        n = rec.evaluation
        if due(n, self.log_every, self.steps):
            row = {"evaluation": n, "wall_time": round(rec.wall_time, 4)}
            if rec.level is not None:
                row["level"] = rec.level
            row.update(rec.values)
            at = self._metrics.tell()
            try:
                with records.writing(self.metrics_path):
                    records._write_all(self._metrics, (json.dumps(row) + "\n").encode("utf-8"))
            except BaseException:
                try:
                    self._metrics.truncate(at)  # no cut line (truncating needs no space)
                    self._metrics.seek(at)
                except OSError:
                    pass
                raise
        if due(n, self.frame_every, self.steps):
            save_atomic(to_pil(rec.image), self.frames_dir / f"{n:0{self.width}d}.png")

    def close(self, summary: dict) -> None:
        with records.writing(self.metrics_path):
            self._metrics.close()


class ProgressSink:
    """A progress bar of evaluations, with the current total loss: a widget in a Jupyter notebook
    (tqdm.auto; plain text where ipywidgets is missing), text on a terminal. NST_PROGRESS=0 turns it off."""

    def __init__(self, steps: int, label: str, position: int = 0):
        disable = os.environ.get("NST_PROGRESS", "") == "0"
        # tqdm.auto decides once per process: a widget in a notebook's kernel, else text (as tqdm.std)
        if disable:
            from tqdm.std import tqdm
        else:
            from tqdm.auto import tqdm
        # one bar per trial of a batch, each on its own line
        self.bar = tqdm(total=steps, desc=label, unit="eval", dynamic_ncols=True, file=sys.stderr, disable=disable,
                        leave=True, position=position)

    def on_step(self, rec: StepRecord) -> None:
        self.bar.update(rec.evaluation - self.bar.n)
        if rec.evaluation == 1 or rec.evaluation % 5 == 0:
            self.bar.set_postfix_str(f"loss {rec.values['total']:.4g}", refresh=False)

    def close(self, summary: dict) -> None:
        self.bar.close()
