"""judgements.jsonl: one JSON line per choice, appended under a lock and synced to disk before the
page hears that it was recorded, so several judges (threads of one server, or several servers on one
folder) can write at once and a kill loses nothing that was acknowledged. A line cut short by a
crash mid-write is skipped on reading, with a warning naming the file and line."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

JUDGEMENTS = "judgements.jsonl"  # in the (first) sweep folder
WINNERS = ("left", "right", "none")  # "none": the judge could not tell
_lock = threading.Lock()


def append(path: Path, record: dict) -> None:
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    with _lock, open(path, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            # a line left cut short by an earlier crash would swallow this one: start on a new line
            if f.tell() > 0:
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def valid(record) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("judge"), str) and record.get("winner") in WINNERS
            and all(isinstance(record.get(k), str) for k in ("left", "right", "left_setting", "right_setting")))


def read(path: Path, warn: Callable[[str], None] | None = None) -> list[dict]:
    if not path.exists():
        return []
    from nst.records import read_jsonl

    out: list[dict] = []
    bad: list[int] = []
    for n, record in read_jsonl(path)[0]:
        if isinstance(record, dict) and valid(record):
            out.append(record)
        else:
            bad.append(n)
    if bad and warn:
        warn(f"{path}: {len(bad)} line(s) not a judgement (first: line {bad[0]}); left out")
    return out
