"""Before Hydra runs anything: expand the command line into its trials and validate each one.

Hydra's own composition errors are several lines and exit 1; here every bad input (syntax, an
unknown key or choice, a bad value or image file) becomes one line naming the key, exit code 2,
before a network is built or any trial starts.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import uuid
from datetime import datetime
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from nst import schema, sweep_folder
from nst.errors import InputError
from nst.search import OBJECTIVES
from nst.search import check as check_objective

# The configs ship inside the package (nst/conf; the ready sweeps are its sweep/ group, also reached as
# sweeps/ from a clone), so that an installed wheel runs from any folder.
CONF_DIR = Path(__file__).resolve().parent / "conf"
VERSION_BASE = "1.3"
_UID = uuid.uuid4().hex[:6]
# The command's start, fixed once per process: the folder the up-front check claims for a sweep
# (nst.sweep_folder) is then the very folder Hydra writes into (Hydra's ${now:} is read again later).
_STARTED = datetime.now()
# Flags after which we leave everything to Hydra (help, printing configs, other config sources).
_HYDRA_ONLY_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-p", "--package",
                     "--resolve", "-sc", "--shell-completion", "-cp", "--config-path", "-cn", "--config-name",
                     "-cd", "--config-dir", "--experimental-rerun"}


def quick_help(argv: list[str]) -> str | None:
    """`nst --help` as Hydra prints it, or None to leave it to Hydra. Hydra lists every config group
    through its config repository, copying the whole config store once per group (2-5 s on a 2-core
    CPU, more than the rest of the command); the groups are the config folder's, read from it here.
    Anything beyond the bare flag (an override, another config) is left to Hydra."""
    if argv not in (["--help"], ["-h"]):
        return None
    import string

    from hydra_plugins.nst_launcher._hydra_private import flags_help

    template = str(OmegaConf.load(CONF_DIR / "config.yaml").hydra.help.template)
    groups = sorted(d for d in CONF_DIR.iterdir() if d.is_dir() and any(d.glob("*.yaml")))
    if "$HYDRA_CONFIG_GROUPS" in template or "$CONFIG" in template or any(p.is_dir() for d in groups for p in d.iterdir()):
        return None
    listed = "".join(f"{d.name}: {', '.join(sorted(p.stem for p in d.glob('*.yaml')))}\n" for d in groups)
    return string.Template(template).substitute(FLAGS_HELP=flags_help(), APP_CONFIG_GROUPS=listed)


def register_resolvers() -> None:
    # One suffix per process, so every folder of one sweep shares it and two sweeps never collide.
    OmegaConf.register_new_resolver("nst_uid", lambda: _UID, replace=True)
    OmegaConf.register_new_resolver("nst_now", lambda pattern: _STARTED.strftime(pattern), replace=True)
    # a trial's folder in its sweep: its registered number and its overrides (nst.sweep_folder)
    OmegaConf.register_new_resolver("nst_trial_dir", sweep_folder.trial_dir, replace=True)
    # a whole number times a factor, rounded: a recipe's budgets in proportion to `steps` (nst/conf/recipe)
    OmegaConf.register_new_resolver("nst_times", lambda n, factor: max(1, round(n * factor)), replace=True)


def split_argv(argv: list[str]) -> tuple[bool, list[str], bool]:
    """(multirun, overrides, leave_to_hydra)"""
    multirun, overrides = False, []
    for a in argv:
        if a in ("-m", "--multirun"):
            multirun = True
        elif a.split("=", 1)[0] == "hydra.mode" and a.split("=", 1)[-1].strip().upper() == "MULTIRUN":
            multirun = True  # what -m does: the up-front checks must see it as a sweep
            overrides.append(a)
        elif a.split("=", 1)[0] in _HYDRA_ONLY_FLAGS or a.startswith("-"):
            return multirun, overrides, True
        else:
            overrides.append(a)
    return multirun, overrides, False


def expand_trials(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every trial, exactly as Hydra's basic sweeper will build them; for a
    search, whose trials are proposed as it goes, the part of the command that every trial shares."""
    return _expand(overrides, multirun)[0]


def _expand(overrides: list[str], multirun: bool) -> tuple[list[list[str]], dict | None]:
    """expand_trials, and for a grid its sweep folder and identity (nst.sweep_folder)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.nst_launcher._hydra_private import split_arguments
    from hydra_plugins.nst_launcher.contract import reads_results

    _split_by_the_shell(overrides)
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception as e:  # noqa: BLE001 - Hydra's parse errors carry the offending text
        odd = [o for o in overrides if "~" in o or not o.isascii()]
        hint = (f"; a value with '~' or non-ASCII characters must be quoted for Hydra, e.g. "
                f"{odd[0].split('=', 1)[0]}='{odd[0].split('=', 1)[-1]}' (and '~' is not expanded: give the full path)"
                if odd else "")
        raise InputError("command line", _first_line(e) + hint) from None
    for o in parsed:
        if o.key_or_group in _SELECTORS and o.get_key_element() == o.key_or_group and not o.is_delete():
            # sweep/search are absent from the defaults list: Hydra's own message would be "not a config key"
            raise InputError(o.key_or_group, f"a ready {o.key_or_group} is chosen with a leading '+': "
                                             f"-m +{o.key_or_group}={o.value()}")
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if not multirun:
        # (an unknown one is left to the composition, whose message lists the ones there are)
        chosen = [o for o in parsed if o.key_or_group in _SELECTORS and (CONF_DIR / o.key_or_group / f"{o.value()}.yaml").exists()]
        if chosen:
            # without -m Hydra would run one default transfer and exit 0: never what was meant
            raise InputError(chosen[0].get_key_element(), f"selects a {'search' if chosen[0].key_or_group == 'search' else 'sweep'}, "
                                                          f"which runs as a multirun: add -m (nst -m {' '.join(overrides)})")
        if sweeps:
            key = sweeps[0].get_key_element()
            hint = f"; or, if the comma is part of a file name, quote it for Hydra: {_quoted(sweeps[0])}" if key in _PATH_KEYS else ""
            raise InputError(key, f"has several values: add -m to run one trial per value{hint}")
        return [overrides], None
    # Compose once with each sweep at its first value, to read hydra.sweeper (from sweeps/).
    first = [o.input_line if not o.is_sweep_override() else
             f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_discrete_sweep() else None
             for o in parsed]
    cfg = _compose([o for o in first if o is not None], hydra_config=True)
    _check_launcher(cfg)
    try:
        sweep_dir = str(cfg.hydra.sweep.dir)
    except Exception as e:  # noqa: BLE001 - a folder that cannot be resolved
        raise InputError("hydra.sweep.dir", _first_line(e)) from None
    if reads_results(cfg.hydra.sweeper):
        # A sweeper that proposes trials as it goes (Optuna) has no grid to expand: what the command
        # fixes is checked here, and each trial again when it is proposed (nst.run._prepare).
        check_search(cfg)
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        space = {str(k): str(v) for k, v in (cfg.hydra.sweeper.get("params") or {}).items()}
        space.update({o.get_key_element(): o.input_line.split("=", 1)[-1] for o in sweeps})  # the command line wins
        return [fixed], {"sweep_dir": sweep_dir, "cfg": cfg, "search": True,
                         "identity": sweep_folder.search_identity(fixed, space, cfg.get("objective"))}
    if None in first:
        o = parsed[first.index(None)]
        raise InputError(o.get_key_element(), "a range to sample from needs a sweeper that samples (hydra/sweeper=optuna); "
                                              "the basic sweeper takes lists of values: a,b,c")
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.get("params") or {}).items()]
    # Later keys win, as in BasicSweeper.sweep (config params first, then the command line).
    trials = split_arguments(parser.parse_overrides(params + overrides), None)[0]
    swept = [o.get_key_element() for o in sweeps] + [str(k) for k in (cfg.hydra.sweeper.get("params") or {})]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    return trials, {"sweep_dir": sweep_dir, "identity": sweep_folder.identity(fixed, swept), "cfg": cfg}


_SELECTORS = ("sweep", "search")  # config groups that choose a sweep or a search, not a trial's setting
_PATH_KEYS = ("content", "style", "init.path")  # keys whose values are file names, which may hold a comma


def _quoted(o) -> str:
    """An override whose value Hydra split at commas, written so that Hydra reads the value whole
    (double quotes for Hydra, single quotes around the argument for the shell)."""
    key, value = o.input_line.split("=", 1)
    return f"""'{key}="{value}"'"""


def _split_by_the_shell(overrides: list[str]) -> None:
    """The shell splits an argument at a space: `style_weight=1e3, 1e4` reaches us as `style_weight=1e3,`
    and `1e4`, which Hydra's parser reports without naming either. Say what happened instead."""
    for n, o in enumerate(overrides):
        if o.endswith(",") and "=" in o:
            key = o.split("=", 1)[0].lstrip("+~")
            if n + 1 < len(overrides):
                raise InputError(key, f"'{o} {overrides[n + 1]}': a space after a comma splits the argument in the shell; "
                                      f"write the values without spaces: {o}{overrides[n + 1]}")
            raise InputError(key, f"'{o}' ends with a comma; give the next value after it, without a space")
        if "=" not in o and not o.startswith("~") and n > 0 and "=" in overrides[n - 1]:
            prev = overrides[n - 1]
            raise InputError(prev.split("=", 1)[0].lstrip("+~"), f"'{o}' follows '{prev}' as an argument of its own (the shell "
                                                              f"splits at a space); if it belongs to that value, quote the "
                                                              f"whole argument: '{prev} {o}'")


def check_search(cfg) -> None:
    """A search needs an objective to report to its sweeper, and storage that works here."""
    if cfg.get("objective") is None:
        raise InputError("objective", f"a search ({cfg.hydra.sweeper._target_.rsplit('.', 1)[-1]}) minimises the trials' "
                                      f"objective, and none is set: objective={' | '.join(OBJECTIVES)}, "
                                      "or a ready search: +search=adam_lr (manual: docs/scaling-out.md)")
    sweeper = cfg.hydra.sweeper
    if sweeper._target_.endswith("NstOptunaSweeper"):
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise InputError("hydra/sweeper", "optuna needs Optuna: pip install '.[search]' in a clone") from None
        from hydra_plugins.nst_sweeper.optuna_sweeper import SAMPLERS

        sampler = (sweeper.get("sampler") or {}).get("name", "tpe")
        if sampler not in SAMPLERS:
            raise InputError("hydra.sweeper.sampler.name", f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")


@dataclass(frozen=True)
class Checked:
    settings: list  # every trial's Settings (for a search, the part every trial shares); [] when left to Hydra
    runs_here: bool  # the trials run on this machine (not on SLURM nodes)
    search: bool = False  # a sweeper that proposes its trials as it goes (their number is its own)


def check(argv: list[str]) -> int:
    """Validate every trial the command line asks for; returns how many (0 when left to Hydra)."""
    return len(checked(argv).settings)


def checked(argv: list[str]) -> Checked:
    """Validate every trial the command line asks for, before anything is written."""
    multirun, overrides, leave = split_argv(argv)
    if leave:
        return Checked([], True)
    from nst.settings import check_cuda_here, load_inputs, settings_from_dict  # torch: not for --help or completion

    trials, grid = _expand(overrides, multirun)
    seen_files: set[tuple] = set()
    out = []
    for trial in trials:
        cfg = _compose(trial)
        try:
            resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        except Exception as e:  # noqa: BLE001
            raise InputError(_key_of(e), _first_line(e)) from None
        settings = settings_from_dict(resolved)
        check_objective(resolved.get("objective"), resolved.get("target_psnr"))
        files = (settings.content, settings.style if settings.objective.style_layers else None, settings.init_path)
        if files not in seen_files:  # decode each distinct set of inputs once
            try:
                load_inputs(settings)
            except InputError as e:
                raise _comma_in_path(e, overrides) from None
            seen_files.add(files)
        out.append(settings)
    here = grid is None or _runs_here(grid["cfg"])
    for device in sorted({s.device for s in out if s.device.startswith("cuda")} if here else ()):
        check_cuda_here(device)
    if grid is None and not multirun and trials:
        run_dir = _check_run_dir(trials[0], out)
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
            sweep_folder.claim(Path(grid["sweep_dir"]), grid["identity"], trials, argv)
            if journal is not None:
                from hydra_plugins.nst_sweeper.optuna_sweeper import repair_journal

                repaired = repair_journal(journal)
                if repaired:
                    print(f"nst: {repaired}", file=sys.stderr)
    return Checked(out, here, search=multirun and (grid is None or bool(grid.get("search"))))


def _comma_in_path(e: InputError, overrides: list[str]) -> InputError:
    """A missing file whose name came from a value with a comma: Hydra split it into several values."""
    key = e.key.split("[", 1)[0]
    if key not in _PATH_KEYS or "no such file" not in str(e):
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
    config with Hydra's, as _expand composed it (no second composition)."""
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
        for key, value in (("content", s.content), *((("style", v) for v in s.style)), ("init.path", s.init_path)):
            if value and str(value) not in bundled and not os.path.isabs(str(value)):
                raise InputError(key, f"{value!r} is a relative path, and hydra.job.chdir=true runs each trial in its "
                                      f"own folder, where it names nothing: give {os.path.abspath(str(value))}, or "
                                      "leave hydra.job.chdir unset")


def _check_subdirs(grid: dict, trials: list[list[str]]) -> None:
    """hydra.sweep.subdir must give every trial a folder of its own (nst's own pattern does: its number)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    raw = OmegaConf.to_container(grid["cfg"].hydra.sweep, resolve=False).get("subdir")
    if raw == sweep_folder.DEFAULT_SUBDIR:
        return
    search = bool(grid.get("search"))
    jobs = [(trials[0], 0), (trials[0], 1)] if search else [(t, n) for n, t in enumerate(trials)]
    subdirs = []
    for overrides, num in jobs:
        cfg = _compose(overrides, hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.job.num = num
            cfg.hydra.job.id = num
        HydraConfig.instance().set_config(cfg)
        try:
            subdirs.append(str(OmegaConf.select(cfg, "hydra.sweep.subdir")))
        except Exception as e:  # noqa: BLE001 - a pattern that cannot be resolved
            raise InputError("hydra.sweep.subdir", _first_line(e)) from None
    sweep_folder.check_trial_dirs(grid["sweep_dir"], subdirs, search)


def _check_launcher(cfg) -> None:
    from hydra_plugins.nst_launcher.nst_launcher import NstLauncherConfigError, check_target

    try:
        check_target(cfg.hydra.launcher.get("_target_"))
    except NstLauncherConfigError as e:
        raise InputError("hydra.launcher._target_", str(e)) from None


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


def _check_run_dir(overrides: list[str], checked: list = ()) -> Path | None:
    """A single run's folder (hydra.run.dir) must be a folder this process can create and write, and
    nst's to write into (nst.sweep_folder: new, empty or its own run folder)."""
    try:
        cfg = _compose(overrides, hydra_config=True)
        run_dir = Path(str(cfg.hydra.run.dir))
    except InputError:
        return None  # composition errors were reported above; nothing more to say here
    _check_chdir(cfg, list(checked))
    parent = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError("hydra.run.dir", f"{run_dir} exists and is not a folder")
    if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK)):
        raise InputError("hydra.run.dir", f"cannot create or write {run_dir}: {parent} is not a folder this user can write")
    sweep_folder.check_folder(run_dir, "hydra.run.dir")
    return run_dir


def settings_for(overrides: list[str]):
    """The validated settings of one trial from its overrides, as a script or test wants them."""
    from nst.settings import settings_from_dict

    return settings_from_dict(OmegaConf.to_container(_compose(list(overrides)), resolve=True, enum_to_str=True))


def _compose(overrides: list[str], hydra_config: bool = False):
    from hydra import compose, initialize_config_dir

    register_resolvers()
    error = None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=VERSION_BASE, job_name="nst"):
        try:
            return compose(config_name="config", overrides=overrides, return_hydra_config=hydra_config)
        except Exception as e:  # noqa: BLE001 - turned into one line below, outside this context
            error = e
    raise describe(error) from None


def describe(e: Exception) -> InputError:
    """One line for a Hydra/OmegaConf composition error."""
    cause = e if isinstance(e, ValidationError) else e.__cause__
    if isinstance(cause, ValidationError):  # a value the schema's type or choices refuse
        return schema.input_error(cause)
    msg = str(e)
    m = re.search(r"Could not find '([^']+)/([^']+)'", msg)
    if m and m.group(1) == "hydra/sweeper" and m.group(2) == "optuna":
        return InputError("hydra/sweeper", "optuna needs the project's launcher plugins (hydra_plugins/ of this package) "
                                           "on the path: install the package")
    if m:
        group, option = m.groups()
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        return InputError(group, f"unknown choice '{option}'; allowed: {', '.join(options)}")
    m = re.search(r"Could not (?:override|append to) '([^']+)'|Key '([^']+)' (?:is not in struct|not in)", msg)
    if m and "An item is already at" not in msg:
        key = m.group(1) or m.group(2)
        prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
        owner = getattr(e.__cause__, "object_type", None)  # the schema's dataclass that lacks the key
        if is_dataclass(owner):  # the keys of the option chosen (optimizer=adam: betas, not history_size)
            siblings = sorted(f.name for f in fields(owner))
        else:
            known = _known_keys()
            siblings = sorted(k[len(prefix):] for k in known if k.startswith(prefix) and "." not in k[len(prefix):])
        close = difflib.get_close_matches(key[len(prefix):], siblings, n=1, cutoff=0.75)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; keys{' of ' + prefix[:-1] if prefix else ''}: {', '.join(siblings)}"
        return InputError(key, f"is not a config key{hint} (manual: docs/configuration.md)")
    m = re.search(r"An item is already at '([^']+)'", msg)
    if m:
        return InputError(m.group(1), "already exists: set it without the leading '+'")
    m = re.search(r"Could not load '([^']+)'", msg)
    if m:
        return InputError(m.group(1), _first_line(e))
    return InputError(_key_of(e), _first_line(e))


def _known_keys() -> list[str]:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=VERSION_BASE, job_name="nst"):
        cfg = OmegaConf.to_container(compose(config_name="config"), resolve=False)
    keys: list[str] = []

    def walk(d, prefix=""):
        for k, v in d.items():
            keys.append(prefix + k)
            if isinstance(v, dict):
                walk(v, prefix + k + ".")

    walk(cfg)
    return keys


def _key_of(e: Exception) -> str:
    key = getattr(e, "full_key", None)
    return str(key) if key else "config"


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0].strip()
