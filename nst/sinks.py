"""Sinks receive the optimisation's step records: local files and the progress bar (W&B lives in wandb_sink).

The runner knows nothing of files, W&B or progress bars: every counted evaluation of a trial becomes a
StepRecord handed to each of that trial's sinks (`on_step`), and `close(summary)` ends them."""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from nst import records
from nst.images import pil_of, save_atomic, to_bytes


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


_writer: ThreadPoolExecutor | None = None  # the process's file writer (_background)


def _background() -> ThreadPoolExecutor:
    """One thread per process that writes every FileSink's rows and frames, in the order they were handed
    over (started on first use; a forked worker process starts its own)."""
    global _writer
    if _writer is None:
        _writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nst-files")
    return _writer


def _forget_writer() -> None:
    global _writer
    _writer = None  # the parent's thread does not exist in a forked child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writer)


class FileSink:
    """metrics.jsonl (every `log_every` evaluations, and the first) and frames/ (every `frame_every`),
    written into the attempt's folder (nst.records.attempt_dir: the trial's folder, or its staging
    folder while an earlier attempt's files are kept). A file that cannot be written raises
    nst.records.WriteError naming it; a metrics row is written whole or not at all.

    The rows and frames are written by a background thread (_background), so the optimisation loop does
    not wait for JSON, PNG encoding or the disk: on_step hands over the row and the frame's 8-bit copy
    (made on the image's device, without waiting for it) and returns. A write that failed is raised at
    the trial's next step, or by flush(): the runner flushes before it reads the frames (the animation)
    and before the trial's files are moved into place; after a failed write nothing more is written."""

    # writes queued per trial before on_step waits for the oldest: bounded memory (a frame is an image)
    _MAX_FRAMES, _MAX_ROWS = 4, 1024

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
        self._pending: deque[tuple[Future, bool]] = deque()  # writes not yet known to have succeeded, (it, a frame?)
        self._frames = 0  # frames among them
        self._failed = False  # set by the writer thread: a write failed, write nothing more

    def on_step(self, rec: StepRecord) -> None:
        while self._pending and self._pending[0][0].done():
            self._wait_oldest()  # an earlier write's error fails the trial now
        n = rec.evaluation
        if due(n, self.log_every, self.steps):
            row = {"evaluation": n, "wall_time": round(rec.wall_time, 4)}
            if rec.level is not None:
                row["level"] = rec.level
            row.update(rec.values)
            self._submit(False, self._write_row, row)
        if due(n, self.frame_every, self.steps):
            # a copy of this evaluation's image: the optimiser may change rec.image in place later
            self._submit(True, self._write_frame, to_bytes(rec.image), self.frames_dir / f"{n:0{self.width}d}.png")

    def _submit(self, frame: bool, write: Callable, *args) -> None:
        while len(self._pending) >= self._MAX_ROWS or (frame and self._frames >= self._MAX_FRAMES):
            self._wait_oldest()
        self._pending.append((_background().submit(self._guarded, write, *args), frame))
        self._frames += frame

    def _wait_oldest(self) -> None:
        """Wait for the oldest write; raise its error. Interrupted (Ctrl-C), the write stays pending."""
        future, frame = self._pending[0]
        try:
            future.result()
        finally:
            if future.done():
                self._pending.popleft()
                self._frames -= frame

    def _guarded(self, write: Callable, *args) -> None:
        if self._failed:
            return
        try:
            write(*args)
        except BaseException:
            self._failed = True
            raise

    def _write_row(self, row: dict) -> None:
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

    def _write_frame(self, image: torch.Tensor, path: Path) -> None:
        save_atomic(pil_of(image), path)  # host synchronisation for a GPU image: in this thread, not the loop's

    def flush(self) -> None:
        """Wait until every row and frame handed over is written; raise the first write that failed.
        Interrupted (Ctrl-C), the writes still queued are dropped and the one under way is waited for,
        as the attempt's folder is about to be discarded."""
        error: Exception | None = None
        while self._pending:
            try:
                self._wait_oldest()
            except Exception as e:  # noqa: BLE001 - raised below, after waiting for the rest
                error = error or e
            except BaseException:
                self.settle()
                raise
        if error is not None:
            raise error

    def settle(self) -> None:
        """Drop the writes still queued and wait for the one under way: after this nothing writes into the
        attempt's folder, which may then be moved or deleted."""
        for future, _ in self._pending:
            future.cancel()
        wait([future for future, _ in self._pending])
        self._pending.clear()
        self._frames = 0

    def close(self, summary: dict) -> None:
        """A completed or failed trial's files are kept: every write is waited for. Any other end (Ctrl-C, an
        attempt retried after running out of GPU memory) drops the writes still queued."""
        try:
            if summary.get("status") in ("completed", "failed"):
                self.flush()
        finally:
            self.settle()
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
