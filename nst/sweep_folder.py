"""A folder's identity and its one owner, kept in `<folder>/.nst/`. nst writes only into a new or empty
folder, or one of its own (one with `.nst/`): a folder it did not make is refused, whatever is in it.

- `sweep.json`: the sweep the folder belongs to (the settings every trial shares, the `+sweep=`
  selection among them, and the keys it sweeps; a search also its objective and search space), and the
  history of the commands run into it. A command into a folder of another sweep, of a search, or of a
  single run is refused before anything is written; the same grid with other values of its swept keys
  extends it, and the same search continues its study.
- `run.json`: a single run's folder (its history); a single run goes only into a new, empty or its own
  run folder, never into a sweep's.
- `trials.json`: each grid trial's number, by its overrides (values compared as values: `1` and `1.0`
  are one trial). A trial keeps its folder (`<number>_<swept values>`) whichever command runs it, so
  extending a sweep runs only the new values and a resume finds every trial where it left it.
- `lock`: held (`flock`) by the command that runs into the folder, for its whole life, and released by
  the operating system when that process ends however it ends; a second command fails at once, naming
  the holder. A grid or a single run holds it alone; searches share it (several commands on one study,
  as several SLURM jobs do), and a grid cannot start beside them nor they beside a grid. Worker
  processes and SLURM tasks of a command take no lock (they write their own trials).
- `multirun.<n>.yaml`: Hydra rewrites `multirun.yaml` for every command; the earlier ones are kept here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import time
from pathlib import Path

from nst.errors import InputError
from nst.records import ATTEMPT_FILES, STAGING, write_bytes_atomic

STATE = ".nst"
SELECTORS = ("sweep=", "sweep_name=", "search=")  # choose a sweep, not a trial
# What nst writes into a single run's folder: a folder that holds nothing else, with a .hydra/ (a run
# made before run folders had an identity), is taken as nst's own.
RUN_FILES = {".hydra", STATE, "nst.log", "summary.json", "wandb", STAGING, *ATTEMPT_FILES}
# The trial subdir of nst/conf/config.yaml: unique by its number, not worth composing every trial to check.
DEFAULT_SUBDIR = "${nst_trial_dir:${hydra.job.num},${hydra.job.override_dirname}}"
_held: list = []  # the open lock files of this process (held until it exits)
_parser = None


def _parse(override: str):
    global _parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if _parser is None:
        _parser = OverridesParser.create()
    return _parser.parse_overrides([override])[0]


def _canonical(override: str) -> str:
    """One override as a value, not a spelling: `style_weight=1`, `=1.0` and `=1e0` read the same."""
    key, sep, text = override.partition("=")
    if not sep:
        return override
    try:
        value = _parse(override).value()
    except Exception:  # noqa: BLE001 - not a plain override: compared as written
        return override
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{key.lstrip('+~')}={float(value)!r}"
    return f"{key.lstrip('+~')}={text}"


def _own(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.lstrip("+~").startswith(SELECTORS) and not o.lstrip("+~").startswith("hydra.")]


def trial_key(overrides: list[str]) -> str:
    """What names a trial within its sweep: its own overrides as values, sorted, without Hydra's and the
    selectors (equal values spelled differently are one trial)."""
    return ",".join(sorted(_canonical(o) for o in _own(overrides)))


def _legacy_key(overrides: list[str]) -> str:
    """trial_key as folders made before values were compared wrote it (their trials.json)."""
    return ",".join(sorted(_own(overrides)))


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


def _short(text: str) -> str:
    """A value as a person writes it in a folder name: `1e3` for 1000.0, `0.01235` for a sampled
    0.012345678, a path by its file name."""
    try:
        value = _parse(f"k={text}").value()
    except Exception:  # noqa: BLE001 - text the override parser refuses: shown as written
        value = text
    if isinstance(value, float) and math.isfinite(value):
        def plain(c: str) -> str:  # 1e+03 -> 1e3, 1.5e-05 -> 1.5e-5
            m = re.fullmatch(r"(-?[\d.]+)e([+-])0*(\d+)", c)
            return f"{m.group(1)}e{'-' if m.group(2) == '-' else ''}{m.group(3)}" if m else c

        candidates = [plain(f"{value:.{p}g}") for p in range(1, 7)] + [plain(f"{value:.{p}e}") for p in range(0, 6)]
        exact = [c for c in candidates if float(c) == value]
        return min(exact or [plain(f"{value:.4g}")], key=len)  # the first of the shortest: plain before 1e2
    text = str(text).strip("'\"")
    return text.rstrip("/").rsplit("/", 1)[-1] if "/" in text else text


def swept_name(overrides: list[str], swept: list[str]) -> str:
    """A trial's swept keys and values, `style_weight=1e3,tv_weight=0`: what its folder is named by
    (the fixed overrides stay in .hydra/overrides.yaml and summary.json)."""
    keys = {k.lstrip("+~") for k in swept}
    parts = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key.lstrip("+~") in keys:
            parts.append(f"{key.lstrip('+~')}={_short(value)}")
    return ",".join(sorted(parts))


def _existing(sweep_dir: Path, number: int) -> str | None:
    """The folder trial `number` already has (named before, perhaps the older way: all its overrides)."""
    try:
        names = sorted(d.name for d in sweep_dir.iterdir() if d.name.startswith(f"{number}_") and d.is_dir())
    except OSError:
        return None
    return names[0] if names else None


def trial_dir(num, override_dirname, *, _root_) -> str:
    """The resolver behind `hydra.sweep.subdir`: the trial's registered number (trials.json), else
    Hydra's job number (a search: its trial number), and its swept values (else its overrides). A
    trial that has a folder keeps it, so a sweep made when folders were named otherwise still resumes."""
    sweep_dir = Path(str(_root_.hydra.sweep.dir))
    overrides = list(_root_.hydra.overrides.task)
    number = int(number_of(_read(sweep_dir / STATE / "trials.json", {}), overrides, num))
    existing = _existing(sweep_dir, number)
    if existing is not None:
        return existing
    swept = _read(sweep_dir / STATE / "sweep.json", {})
    swept = swept.get("swept") if isinstance(swept, dict) else None
    name = swept_name(overrides, swept) if isinstance(swept, list) else ""
    if not name and isinstance(swept, list):  # nothing swept (one value each): the trial's own overrides
        name = swept_name(_own(overrides), [o.partition("=")[0] for o in _own(overrides)])
    return folder_name(number, name or str(override_dirname))


def number_of(registry, overrides: list[str], default):
    """A trial's number in `.nst/trials.json`, under its key or the key older folders were written with."""
    if not isinstance(registry, dict):
        return default
    found = registry.get(trial_key(overrides), registry.get(_legacy_key(overrides)))
    return found if isinstance(found, int) and not isinstance(found, bool) else default


def identity(fixed: list[str], swept_keys: list[str]) -> dict:
    return {"fixed": sorted(o for o in fixed if not o.lstrip("+~").startswith("hydra.")),
            "swept": sorted(k for k in swept_keys if not k.lstrip("+~").startswith("hydra."))}


def search_identity(fixed: list[str], space: dict, objective) -> dict:
    """A search's identity: what it minimises, what it samples from, and what every trial shares."""
    return {**identity(fixed, list(space)), "kind": "search", "objective": objective,
            "space": {k: str(v) for k, v in sorted(space.items())}}


def _describe(recorded: dict) -> str:
    first = (recorded.get("history") or [{}])[0]
    command = first.get("command", "?") if isinstance(first, dict) else "?"
    fixed = ", ".join(recorded.get("fixed") or []) or "nothing"
    if recorded.get("kind") == "search":
        space = ", ".join(f"{k}={v}" for k, v in (recorded.get("space") or {}).items())
        return (f"holds a search (`{command}`: objective {recorded.get('objective')}, it samples {space} "
                f"and fixes {fixed})")
    return f"holds another sweep (`{command}`: it fixes {fixed} and sweeps {', '.join(recorded.get('swept') or [])})"


def _nst_made(folder: Path, key: str) -> bool:
    """Whether nst may write into `folder`: it does not exist, is empty, or is nst's own (it has .nst/,
    or is a folder made by an earlier nst: a search's journal beside its multirun.yaml, a run's files
    alone). Anything else is refused: a folder nst did not make is never written into."""
    if not folder.exists() and not folder.is_symlink():
        return False
    if not folder.is_dir():
        raise InputError(key, f"{folder} exists and is not a folder")
    if (folder / STATE).is_dir():
        return True
    try:
        entries = {p.name for p in folder.iterdir()}
    except OSError as e:
        raise InputError(key, f"cannot read {folder}: {e.strerror or e}") from None
    if not entries:
        return False
    journal = {"optuna.journal", "optuna.journal.lock", "optuna.journal.ask"}
    if key == "hydra.sweep.dir" and "optuna.journal" in entries and ("multirun.yaml" in entries or entries <= journal):
        return True  # a search made before folders had an identity, or a study begun with Optuna alone
    if key == "hydra.run.dir" and ".hydra" in entries and entries <= RUN_FILES and not (folder.parent / STATE).is_dir():
        return True  # a run made before run folders had an identity (a sweep's trial folder is the sweep's)
    raise InputError(key, f"{folder} is not empty and was not made by nst (it has no {STATE}/); nst writes only into "
                          f"a new or empty folder or one of its own: give another {key}, or leave it unset")


def check_folder(folder: Path, key: str) -> None:
    """Refuse, in one line, a folder nst may not write into (see _nst_made), writing nothing."""
    _nst_made(Path(folder), key)


def claim(sweep_dir: Path, ident: dict, trials: list[list[str]], argv: list[str]) -> set[int] | None:
    """Before a grid or a search writes anything into `sweep_dir`: refuse a folder nst did not make and
    another sweep's, search's or run's folder; take the folder's lock (held until this process exits:
    alone for a grid, shared between the commands of one search); number a grid's new trials; record
    the command. Returns the trial numbers this command names (a grid's), or None for a search (its
    trials are those it runs, told by when they finish): what the command's outcome reads."""
    sweep_dir = Path(sweep_dir)
    search = ident.get("kind") == "search"
    state = sweep_dir / STATE
    _nst_made(sweep_dir, "hydra.sweep.dir")
    if (state / "run.json").exists():
        raise InputError("hydra.sweep.dir", f"{sweep_dir} holds a single run; leave hydra.sweep.dir unset for a new folder")
    recorded = _read(state / "sweep.json", None)
    if recorded is not None and not isinstance(recorded, dict):
        recorded = None
    if recorded is not None:
        kind = recorded.get("kind", "grid")
        same = kind == ident.get("kind", "grid") and all(recorded.get(k) == v for k, v in ident.items() if k != "kind")
        if not same:
            hint = ("leave hydra.sweep.dir unset for a new folder, or continue that search with the same objective, "
                    "search space and fixed settings" if kind == "search" else
                    "leave hydra.sweep.dir unset for a new folder, or extend that sweep with the same fixed settings "
                    "and other values of its swept keys")
            raise InputError("hydra.sweep.dir", f"{sweep_dir} {_describe(recorded)}; {hint}")
    _lock(sweep_dir, shared=search)
    owned: set[int] = set()  # a grid's trials, numbered below; a search's are all its own
    with _updating(state):
        recorded = _read(state / "sweep.json", None)
        recorded = recorded if isinstance(recorded, dict) else {}
        if not search:
            registry = _read(state / "trials.json", {})
            registry = registry if isinstance(registry, dict) else {}
            for t in trials:
                number = number_of(registry, t, None)
                if number is None:
                    number = max((v for v in registry.values() if isinstance(v, int)), default=-1) + 1
                    registry[trial_key(t)] = number
                owned.add(number)
            _write(state / "trials.json", registry)
        history: list = recorded["history"] if isinstance(recorded.get("history"), list) else []
        history.append({"command": " ".join(["nst", *argv]), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "trials": None if search else len(trials)})
        _write(state / "sweep.json", {**ident, "history": history})
        if (sweep_dir / "multirun.yaml").exists():  # Hydra rewrites it for this command: keep the earlier one
            shutil.copyfile(sweep_dir / "multirun.yaml", state / f"multirun.{len(history) - 2}.yaml")
    return None if search else owned


def claim_run(run_dir: Path, argv: list[str]) -> None:
    """Before a single run writes anything into `run_dir`: refuse a sweep's folder and a folder nst did
    not make, take the folder's lock, record the command (so that running into it again works)."""
    run_dir = Path(run_dir)
    _nst_made(run_dir, "hydra.run.dir")
    if (run_dir / STATE / "sweep.json").exists():
        raise InputError("hydra.run.dir", f"{run_dir} is a sweep's folder; a single run goes into its own folder: "
                                          "leave hydra.run.dir unset, or give a new one")
    _lock(run_dir, shared=False, key="hydra.run.dir")
    state = run_dir / STATE
    with _updating(state):
        recorded = _read(state / "run.json", None)
        history: list = recorded["history"] if isinstance(recorded, dict) and isinstance(recorded.get("history"), list) else []
        history.append({"command": " ".join(["nst", *argv]), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        _write(state / "run.json", {"kind": "run", "history": history})


def _lock(folder: Path, *, shared: bool, key: str = "hydra.sweep.dir") -> None:
    state = folder / STATE
    try:
        state.mkdir(parents=True, exist_ok=True)
        lock = open(state / "lock", "a+", encoding="utf-8")
    except OSError as e:
        raise InputError(key, f"cannot create or write {folder}: {e.strerror or e}") from None
    try:
        fcntl.flock(lock, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip().splitlines()
        lock.close()
        raise InputError(key, f"{folder} is being run by another command ({holder[-1] if holder else 'another process'}); "
                              f"wait for it to end, or leave {key} unset for a new folder") from None
    line = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    if shared:
        lock.write(line)  # appended: the commands of one search name themselves in turn
    else:
        lock.seek(0)
        lock.truncate()
        lock.write(line)
    lock.flush()
    _held.append(lock)


class _updating:
    """An exclusive lock on `.nst/` for a read-modify-write of its files (the commands of one search
    share the folder's lock, and may record themselves at the same moment)."""

    def __init__(self, state: Path):
        self.path = state

    def __enter__(self):
        # the folder itself is locked: no file to create (which a full disk could refuse)
        self.fd = os.open(self.path, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def odd_paths(run_dir: Path) -> list[Path]:
    """The trial's file names that hold something of another kind (a folder named summary.json, a file
    named frames): nst did not make them and will not remove them, and the trial cannot run until they
    are moved away."""
    run_dir = Path(run_dir)
    out = []
    for name in ("summary.json", *ATTEMPT_FILES):
        p = run_dir / name
        folder = name == "frames"
        if (p.exists() or p.is_symlink()) and (p.is_symlink() or p.is_dir() != folder):
            out.append(p)
    return out


def check_trial_dirs(sweep_dir: str, subdirs: list[str], search: bool) -> None:
    """hydra.sweep.subdir must give each trial its own folder inside the sweep folder."""
    root = os.path.normpath(str(sweep_dir))
    seen: set[str] = set()
    for sub in subdirs:
        path = os.path.normpath(os.path.join(root, str(sub)))
        if path == root or not path.startswith(root + os.sep):
            raise InputError("hydra.sweep.subdir", f"{sub!r} puts a trial in {path}, not in a folder of its own inside "
                                                   "the sweep folder; leave hydra.sweep.subdir unset (or use "
                                                   "${hydra.job.num} in it)")
        if path in seen:
            what = "two trials of a search" if search else "two trials"
            raise InputError("hydra.sweep.subdir", f"{sub!r} gives {what} one folder ({path}), where they would overwrite "
                                                   "each other; leave hydra.sweep.subdir unset (or use ${hydra.job.num} in it)")
        seen.add(path)


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


def release(sweep_dir: Path) -> None:
    """Let go of this process's lock on the folder (the Python API holds it for one call, as a
    notebook's kernel outlives it); a command keeps its lock until it exits."""
    lock = Path(sweep_dir) / STATE / "lock"
    for f in [f for f in _held if Path(f.name) == lock]:
        _held.remove(f)
        f.close()
