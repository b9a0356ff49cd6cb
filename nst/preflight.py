"""Before Hydra runs anything: every trial the command line asks for goes through the command's
stage (nst.stage: its Settings validated, its images decoded), and the folders it will write are
checked and claimed. Every bad input (syntax, an unknown key or choice, a bad value or image file)
becomes one line naming the key, exit code 2, before a network is built or any trial starts.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from omegaconf import OmegaConf

from nst import sweep_folder
from nst.compose import PATH_KEYS, config, expand, first_line, key_of, resolved, split_argv
from nst.errors import InputError
from nst.search import check as check_objective


@dataclass(frozen=True)
class Checked:
    settings: list  # every trial's Settings (for a search, the part every trial shares); [] when left to Hydra
    runs_here: bool  # the trials run on this machine (not on SLURM nodes)
    search: bool = False  # a sweeper that proposes its trials as it goes (their number is its own)
    outputs: tuple[str, ...] = ()  # the folder the command writes into (its run or sweep folder), resolved
    # The trials of the sweep folder this command names (by the folder's resolved path): a grid's trial
    # numbers, None for a search's (those it runs). A folder missing here is read whole. Earlier
    # commands' trials in the same folder are not this command's: they neither fail it nor count as resumed.
    owned: dict[str, set[int] | None] = field(default_factory=dict)


def check(argv: list[str]) -> int:
    """Validate every trial the command line asks for; returns how many (0 when left to Hydra)."""
    from nst.stage import Stage

    return len(checked(argv, Stage()).settings)


def checked(argv: list[str], stage) -> Checked:
    """Validate every trial the command line asks for, before anything is written: the command's
    stage (nst.stage.Stage) run early, so that its trials later find their Settings and images made."""
    multirun, overrides, leave = split_argv(argv)
    if leave:
        return Checked([], True)
    from nst.device import check_cuda_here  # torch: not for --help or completion

    trials, grid = expand(overrides, multirun)
    seen_files: set[tuple] = set()
    out = []
    owned: dict[str, set[int] | None] = {}
    single = grid is None and not multirun
    run_cfg = None
    for trial in trials:
        if grid is not None and trial == grid.get("first"):
            cfg = _without_hydra(grid["cfg"])  # the sweep's own composition is its first trial's: not composed again
        elif single:
            run_cfg = config(trial, hydra_config=True)  # hydra.run.dir is checked below from the same composition
            cfg = _without_hydra(run_cfg)
        else:
            cfg = config(trial)
        try:
            plain = resolved(cfg)
        except Exception as e:  # noqa: BLE001 - any error of resolving it (a bad interpolation, a missing value)
            raise InputError(key_of(e), first_line(e)) from None
        settings = stage.settings(plain)
        check_objective(plain.get("objective"), plain.get("target_psnr"))
        files = (settings.content, settings.style if settings.objective.style_layers else None, settings.init_path)
        if files not in seen_files:  # decode each distinct set of inputs once
            try:
                stage.inputs(settings)
            except InputError as e:
                raise _comma_in_path(e, overrides) from None
            seen_files.add(files)
        out.append(settings)
    here = grid is None or _runs_here(grid["cfg"])
    for device in sorted({s.device for s in out if s.device.startswith("cuda")} if here else ()):
        check_cuda_here(device)
    run_dir = None
    if single and run_cfg is not None:
        run_dir = _check_run_dir(run_cfg, out)
        if run_dir is not None:
            sweep_folder.claim_run(run_dir, argv)
    if grid is not None:
        _check_chdir(grid["cfg"], out)
        _check_subdirs(grid, trials)
        sweep_folder.check_folder(Path(grid["sweep_dir"]), "hydra.sweep.dir")
        journal = _journal(grid) if grid.get("search") else None
        if journal is not None:
            from hydra_plugins.nst_sweeper.optuna_sweeper import JournalError, read_journal

            try:
                read_journal(journal)
            except JournalError as e:
                raise InputError("hydra.sweeper.storage", str(e)) from None
        if _launcher_accepts(grid["cfg"]):
            # Last, once every trial and the launcher's settings are known to be valid: nothing is written
            # into a folder for a command that is refused.
            owned[str(Path(grid["sweep_dir"]).resolve())] = sweep_folder.claim(Path(grid["sweep_dir"]), grid["identity"],
                                                                                trials, argv)
            if journal is not None:
                from hydra_plugins.nst_sweeper.optuna_sweeper import repair_journal

                repaired = repair_journal(journal)
                if repaired:
                    print(f"nst: {repaired}", file=sys.stderr)
    outputs = (str(Path(grid["sweep_dir"]).resolve()),) if grid is not None else (str(run_dir.resolve()),) if run_dir else ()
    return Checked(out, here, search=multirun and (grid is None or bool(grid.get("search"))), outputs=outputs,
                   owned=owned)


def _comma_in_path(e: InputError, overrides: list[str]) -> InputError:
    """A missing file whose name came from a value with a comma: Hydra split it into several values."""
    key = e.key.split("[", 1)[0]
    if key not in PATH_KEYS or "no such file" not in str(e):
        return e
    for o in overrides:
        k, _, value = o.lstrip("+").partition("=")
        if k == key and "," in value and not value.startswith(("[", "'", '"')):
            return InputError(e.key, f"{str(e)[len(e.key) + 2:]}; if the comma is part of the file name, quote it for Hydra: "
                                     f"""'{k}="{value}"'""")
    return e


def _runs_here(cfg) -> bool:
    """Whether a multirun's trials run on this machine (the nst launcher's own process or its worker
    processes), not on SLURM nodes, whose GPUs the submitting machine may lack; `cfg` is the sweep's
    config with Hydra's, as expand composed it (no second composition)."""
    return OmegaConf.select(cfg, "hydra.launcher.cluster") != "slurm"


def _journal(grid: dict) -> Path | None:
    """The journal file a search appends to (None: a database)."""
    storage = grid["cfg"].hydra.sweeper.get("storage")
    if storage and "://" in str(storage):
        return None
    return Path(str(storage)).expanduser() if storage else Path(grid["sweep_dir"]) / "optuna.journal"


def _check_chdir(cfg, checked: list) -> None:
    """hydra.job.chdir=true runs each trial in its folder, where a relative image path names nothing."""
    from nst.images import bundled_images

    if not OmegaConf.select(cfg, "hydra.job.chdir"):
        return
    bundled = bundled_images()
    for s in checked:
        for key, value in (("content", s.content), *(("style", v) for v in s.style), ("init.path", s.init_path)):
            if value and str(value) not in bundled and not os.path.isabs(str(value)):
                raise InputError(key, f"{value!r} is a relative path, and hydra.job.chdir=true runs each trial in its "
                                      f"own folder, where it names nothing: give {os.path.abspath(str(value))}, or "
                                      "leave hydra.job.chdir unset")


def _check_subdirs(grid: dict, trials: list[list[str]]) -> None:
    """hydra.sweep.subdir must give every trial a folder of its own (nst's own pattern does: its number)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    raw = cast(dict, OmegaConf.to_container(grid["cfg"].hydra.sweep, resolve=False)).get("subdir")
    if raw == sweep_folder.DEFAULT_SUBDIR:
        return
    search = bool(grid.get("search"))
    jobs = [(trials[0], 0), (trials[0], 1)] if search else [(t, n) for n, t in enumerate(trials)]
    subdirs = []
    for overrides, num in jobs:
        cfg = config(overrides, hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.job.num = num
            cfg.hydra.job.id = num
        HydraConfig.instance().set_config(cfg)
        try:
            subdirs.append(str(OmegaConf.select(cfg, "hydra.sweep.subdir")))
        except Exception as e:  # noqa: BLE001 - a pattern that cannot be resolved
            raise InputError("hydra.sweep.subdir", first_line(e)) from None
    sweep_folder.check_trial_dirs(grid["sweep_dir"], subdirs, search)


def _launcher_accepts(cfg) -> bool:
    """Whether the launcher takes its settings (a GPU that is not there, no SLURM, ...). It says why
    itself when Hydra sets it up; until then, no sweep folder is claimed for a command it will refuse."""
    from hydra.utils import instantiate

    try:
        launcher = instantiate(cfg.hydra.launcher)
        if hasattr(launcher, "setup"):
            launcher.setup(hydra_context=None, task_function=None, config=cfg)
    except Exception:  # noqa: BLE001 - any refusal: the launcher's own message follows
        return False
    return True


def _without_hydra(cfg):
    """A trial's config from a composition that holds Hydra's node too."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def _check_run_dir(cfg, checked: list) -> Path | None:
    """A single run's folder (hydra.run.dir) must be a folder this process can create and write, and
    nst's to write into (nst.sweep_folder: new, empty or its own run folder). `cfg`: the run's
    composition with Hydra's node."""
    try:
        run_dir = Path(str(cfg.hydra.run.dir))
    except Exception as e:  # noqa: BLE001 - a folder that cannot be resolved
        raise InputError("hydra.run.dir", first_line(e)) from None
    _check_chdir(cfg, list(checked))
    parent = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError("hydra.run.dir", f"{run_dir} exists and is not a folder")
    if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK)):
        raise InputError("hydra.run.dir", f"cannot create or write {run_dir}: {parent} is not a folder this user can write")
    sweep_folder.check_folder(run_dir, "hydra.run.dir")
    return run_dir
