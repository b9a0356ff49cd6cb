"""Whether a process of this machine is still running: a local SLURM task watches its command with it, and
the Optuna sweeper tells a trial whose command has died from one still running. Standard library only."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    try:  # a zombie has ended too, though its parent has not collected it yet (Linux)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")
