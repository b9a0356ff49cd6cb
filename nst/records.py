"""A trial's records on disk: summary.json written atomically, and what a command's trials came to,
read from their files alone.

A launcher may run trials in this process, in worker processes or on other machines, so the exit
status and the resume count are never kept in memory: they are read from each trial's summary.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# The folders this command writes into: its run folder, or its sweep folders. Recorded as soon as
# they are known (by the app, or by the sweep callback in the submitting process).
OUTPUTS: set[str] = set()


@dataclass
class Outcome:
    failed: list[str] = field(default_factory=list)  # "label: error" per failed or unfinished trial
    skipped: int = 0  # trials that had completed before this command started (resume)
    completed: int = 0


def trial_folders(folder: Path) -> list[Path]:
    """A run folder is its own trial; a sweep folder holds one folder per trial."""
    if (folder / ".hydra").is_dir() or (folder / "summary.json").exists():
        return [folder]
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and ((d / ".hydra").is_dir() or (d / "summary.json").exists()))


def read_summary(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def outcome(folders, since: float) -> Outcome:
    """The trials in `folders`; `since`: when this command started (time.time())."""
    out = Outcome()
    for folder in sorted(set(map(str, folders))):
        for d in trial_folders(Path(folder)):
            s = read_summary(d)
            label = s.get("label") or d.name
            if s.get("status") == "completed":
                out.completed += 1
                out.skipped += s.get("finished_unix", 0) < since
            elif s.get("status") == "failed":
                out.failed.append(f"{label}: {s.get('error', 'unknown error')}")
            else:
                out.failed.append(f"{label}: did not finish (no summary.json in {d})")
    return out


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` as JSON so that a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
