"""A trial's records on disk: files written atomically, each attempt's files written as a unit, the
trial folders of a run or sweep folder. What summary.json holds, and what a command's trials came to
(read from their summaries alone, as a launcher may run them in other processes), is nst.summary.

Each attempt at a trial writes its files (ATTEMPT_FILES) as a unit. A first attempt writes straight
into the trial's folder; an attempt at a folder that holds an earlier attempt's files writes into
its staging folder (STAGING) beside them, and when it ends (completed or failed) `promote_attempt`
swaps its files in: the earlier summary.json is removed first and the new one written last, so a
summary.json always describes the files beside it. An attempt that never ends (Ctrl-C, out of memory,
a dead process) leaves the earlier files as they were; its staging folder is discarded.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

# What one attempt at a trial writes (summary.json aside), and where an attempt at a folder holding
# an earlier attempt's files writes them until it ends.
ATTEMPT_FILES = ("final.png", "animation.gif", "metrics.jsonl", "error.log", "frames")
STAGING = ".staging"


class WriteError(OSError):
    """A trial's or a report's file could not be written (a full disk, a quota, permissions): one
    line naming the file, e.g. `No space left on device while writing .../frames/06.png`."""

    def __str__(self) -> str:
        return f"{self.strerror} while writing {self.filename}"


def disk_error(e: BaseException | None) -> bool:
    """A full disk, an exhausted quota, or a file size limit (`ulimit -f`)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextmanager
def writing(path: Path, tmp: Path | None = None):
    """Around the writing of `path` (through `tmp`, when given): any failure removes `tmp`, and an
    OSError becomes a WriteError naming `path`."""
    try:
        yield
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            reason = e.strerror or (os.strerror(e.errno) if e.errno else str(e) or type(e).__name__)
            raise WriteError(e.errno, reason, str(path)) from None
        raise


def _write_all(f, data: bytes) -> None:
    """Write all of `data` to the unbuffered binary file `f`: the one place a trial's files and a
    sweep's report get their bytes (tests inject a full disk here)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        view = view[n:]


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` so that a reader sees the old file or the new one, never a part; on failure
    (a WriteError naming `path`) no temporary file is left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path, tmp):
        with open(tmp, "wb", buffering=0) as f:
            _write_all(f, data)
        os.replace(tmp, path)


# ------------------------------------------------------------------------------- attempts as units


def attempt_dir(run_dir: Path) -> Path:
    """Where the attempt in progress at this trial folder writes: its staging folder when it has one."""
    staging = Path(run_dir) / STAGING
    return staging if staging.is_dir() else Path(run_dir)


def holds_attempt(run_dir: Path) -> bool:
    """Whether the folder holds an earlier attempt's files (a summary.json or any of ATTEMPT_FILES)."""
    return any((Path(run_dir) / name).exists() for name in ("summary.json", *ATTEMPT_FILES))


def begin_attempt(run_dir: Path) -> Path:
    """Start an attempt at the trial in `run_dir`; returns the folder it writes into. Nothing of an
    earlier attempt is touched: a folder holding one gets a fresh staging folder (an attempt that
    never ended left only its staging folder, which is discarded here)."""
    run_dir = Path(run_dir)
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    discard_attempt(run_dir)
    if not holds_attempt(run_dir):
        return run_dir
    staging = run_dir / STAGING
    with writing(staging):
        staging.mkdir()
    return staging


def promote_attempt(run_dir: Path, out: Path) -> None:
    """The attempt that wrote into `out` (begin_attempt's folder) ended: its files replace the
    earlier attempt's as a unit. The earlier summary.json goes first (until the caller writes this
    attempt's, the trial reads as unfinished), then each of ATTEMPT_FILES is replaced or, when this
    attempt has none, removed. Renames and removals only: it needs no free space."""
    run_dir, out = Path(run_dir), Path(out)
    if out == run_dir:
        return  # a first attempt, written in place
    with writing(run_dir / "summary.json"):
        (run_dir / "summary.json").unlink(missing_ok=True)
    for name in ATTEMPT_FILES:
        old, new = run_dir / name, out / name
        with writing(old):
            if name == "frames" and old.is_dir() and not old.is_symlink():
                _replace_frames(old, new)
                continue
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif not new.exists() or new.is_dir():
                old.unlink(missing_ok=True)
            if new.exists():
                os.replace(new, old)
    shutil.rmtree(out, ignore_errors=True)


_FRAME = re.compile(r"\d+\.png")


def _replace_frames(old: Path, new: Path) -> None:
    """The earlier attempt's frames go and this attempt's take their place; a file in frames/ that nst
    did not write (not a numbered frame) stays: nst never deletes what it did not write."""
    for f in old.iterdir():
        if _FRAME.fullmatch(f.name) and f.is_file() and not f.is_symlink():
            f.unlink()
    if new.is_dir():
        for f in new.iterdir():
            os.replace(f, old / f.name)
    if not any(old.iterdir()):
        old.rmdir()


def discard_attempt(run_dir: Path) -> None:
    """Remove the staging folder of an attempt that did not end (the earlier files stay as they were)."""
    shutil.rmtree(Path(run_dir) / STAGING, ignore_errors=True)


# ----------------------------------------------------------------------------------------- reading


def trial_folders(folder: Path) -> list[Path]:
    """A run folder is its own trial; a sweep folder holds one folder per trial."""
    if (folder / ".hydra").is_dir() or (folder / "summary.json").exists():
        return [folder]
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if _trial_folder(d))


def _trial_folder(d: Path) -> bool:
    try:
        return d.is_dir() and ((d / ".hydra").is_dir() or (d / "summary.json").exists())
    except OSError:  # a folder this user cannot look into (permissions): its trial reads as unreadable
        return True


def trial_number(d: Path) -> int | None:
    """A trial folder's number, from its name (`<number>_<swept values>`); None for another folder."""
    head = d.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def read_jsonl(path: Path) -> tuple[list[tuple[int, object]], int]:
    """A JSON-lines file nst or a person may have cut short (a stopped command, a full disk): each
    non-blank line by its number from 1, parsed, or None where it is not JSON; and the number of lines.
    Raises OSError when the file cannot be read."""
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    parsed: list[tuple[int, object]] = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                parsed.append((n, json.loads(line)))
            except ValueError:
                parsed.append((n, None))
    return parsed, len(lines)


class LogFileHandler(logging.FileHandler):
    """The trial's log file (nst.log) as logging.FileHandler writes it, but a full disk costs the file
    its lines silently instead of printing a traceback per line: the same lines still reach the console."""

    def handleError(self, record: logging.LogRecord) -> None:
        if disk_error(sys.exc_info()[1]):
            return
        super().handleError(record)
