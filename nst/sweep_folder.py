"""A sweep folder's identity and its one owner, kept in `<sweep folder>/.nst/`:

- `sweep.json`: the sweep the folder belongs to (the settings every trial shares, the `+sweep=`
  selection among them, and the keys it sweeps), and the history of the commands run into it. A grid
  command into a folder of another sweep is refused before anything is written; the same sweep with
  other values of its swept keys extends it.
- `trials.json`: each trial's number, by its overrides. A trial keeps its folder (`<number>_<overrides>`)
  whichever command runs it, so extending a sweep runs only the new values and a resume finds every
  trial where it left it.
- `lock`: held (an exclusive `flock`) by the command that runs the grid, for its whole life, and
  released by the operating system when that process ends however it ends; a second command into the
  same folder fails at once, naming the holder. Worker processes and SLURM tasks of the command take
  no lock (they write their own trials). Searches share their folder by design (several commands on
  one study) and take none either.
- `multirun.<n>.yaml`: Hydra rewrites `multirun.yaml` for every command; the earlier ones are kept here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from nst.errors import InputError
from nst.records import write_bytes_atomic

STATE = ".nst"
SELECTORS = ("sweep=", "sweep_name=", "search=")  # choose a sweep, not a trial
_held: list = []  # the open lock files of this process (held until it exits)


def trial_key(overrides: list[str]) -> str:
    """What names a trial within its sweep: its own overrides, sorted, without Hydra's and the selectors."""
    own = [o for o in overrides if not o.lstrip("+~").startswith(SELECTORS) and not o.lstrip("+~").startswith("hydra.")]
    return ",".join(sorted(own))


def folder_name(number: int, override_dirname: str, limit: int = 80) -> str:
    """`<number>_<overrides>`, readable and unique: overrides longer than `limit` are cut at a comma
    (never mid-value) and get a hash of the whole, so two trials never share a folder."""
    text = re.sub(r"[^A-Za-z0-9=.,+_-]+", "-", str(override_dirname)).strip("-") or "default"
    if len(text) > limit:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        cut = text[:limit - 9]
        cut = cut[:cut.rfind(",")] if "," in cut else cut
        text = f"{cut}_{digest}"
    return f"{number}_{text}"


def trial_dir(num, override_dirname, *, _root_) -> str:
    """The resolver behind `hydra.sweep.subdir`: the trial's registered number (trials.json), else
    Hydra's job number (a search: its trial number), and its overrides."""
    registry = _read(Path(str(_root_.hydra.sweep.dir)) / STATE / "trials.json", {})
    number = registry.get(trial_key(list(_root_.hydra.overrides.task)), num)
    return folder_name(int(number), str(override_dirname))


def identity(fixed: list[str], swept_keys: list[str]) -> dict:
    return {"fixed": sorted(o for o in fixed if not o.lstrip("+~").startswith("hydra.")),
            "swept": sorted(k for k in swept_keys if not k.lstrip("+~").startswith("hydra."))}


def claim(sweep_dir: Path, ident: dict, trials: list[list[str]], argv: list[str]) -> None:
    """Before a grid command writes anything into `sweep_dir`: refuse another sweep's folder, take the
    folder's lock (held until this process exits), number the new trials, record the command."""
    sweep_dir = Path(sweep_dir)
    state = sweep_dir / STATE
    recorded = _read(state / "sweep.json", None)
    if recorded is not None and {k: recorded.get(k) for k in ("fixed", "swept")} != ident:
        first = (recorded.get("history") or [{}])[0].get("command", "?")
        raise InputError("hydra.sweep.dir", f"{sweep_dir} holds another sweep (`{first}`: it fixes "
                         f"{', '.join(recorded.get('fixed') or []) or 'nothing'} and sweeps {', '.join(recorded.get('swept') or [])}); "
                         "leave hydra.sweep.dir unset for a new folder, or extend that sweep with the same fixed "
                         "settings and other values of its swept keys")
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise InputError("hydra.sweep.dir", f"{sweep_dir} exists and is not a folder")
    try:
        state.mkdir(parents=True, exist_ok=True)
        lock = open(state / "lock", "a+", encoding="utf-8")
    except OSError as e:
        raise InputError("hydra.sweep.dir", f"cannot create or write {sweep_dir}: {e.strerror or e}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise InputError("hydra.sweep.dir", f"{sweep_dir} is being run by another command ({holder}); wait for it "
                                            "to end, or leave hydra.sweep.dir unset for a new folder") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    lock.flush()
    _held.append(lock)
    registry = _read(state / "trials.json", {})
    for t in trials:
        key = trial_key(t)
        if key not in registry:
            registry[key] = max(registry.values(), default=-1) + 1
    _write(state / "trials.json", registry)
    history = (recorded or {}).get("history") or []
    history.append({"command": " ".join(["nst", *argv]), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "trials": len(trials)})
    _write(state / "sweep.json", {**ident, "history": history})
    if (sweep_dir / "multirun.yaml").exists():  # Hydra rewrites it for this command: keep the earlier one
        shutil.copyfile(sweep_dir / "multirun.yaml", state / f"multirun.{len(history) - 2}.yaml")


def _read(path: Path, default):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
    # valid JSON of another shape: not a file nst wrote, and nothing to build on
    expected = _SHAPES.get(path.name)
    if expected is not None and not expected[0](data):
        raise InputError("hydra.sweep.dir", f"{path} is not as nst writes it (expected {expected[1]}); move it away, "
                                            "or leave hydra.sweep.dir unset for a new folder")
    return data


def _strings(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_SHAPES = {
    "trials.json": (lambda d: isinstance(d, dict) and all(type(n) is int for n in d.values()),
                    "an object mapping each trial's overrides to its number"),
    "sweep.json": (lambda d: isinstance(d, dict) and _strings(d.get("fixed", [])) and _strings(d.get("swept", []))
                   and isinstance(d.get("history", []), list) and all(isinstance(h, dict) for h in d.get("history", [])),
                   "an object with the lists `fixed`, `swept` and `history`"),
}


def _write(path: Path, data) -> None:
    # whole or not at all; a full disk raises WriteError naming the file and leaves no temporary file
    write_bytes_atomic(path, json.dumps(data, indent=2).encode("utf-8"))
