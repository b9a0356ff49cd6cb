"""The command line composed: its trials' overrides as Hydra's sweeper will expand them, each
trial's config, and a composition error turned into one line that names the key (Hydra's own are
several lines). The up-front check (nst.preflight) and the Python API (nst.api) compose through here.
"""

from __future__ import annotations

import difflib
import re
import uuid
from dataclasses import fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from nst import schema, sweep_folder
from nst.errors import InputError
from nst.search import OBJECTIVES

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
    return expand(overrides, multirun)[0]


def expand(overrides: list[str], multirun: bool) -> tuple[list[list[str]], dict | None]:
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
        raise InputError("command line", first_line(e) + hint) from None
    for o in parsed:
        if o.key_or_group in _SELECTORS and o.get_key_element() == o.key_or_group and not o.is_delete():
            # sweep/search are absent from the defaults list: Hydra's own message would be "not a config key"
            raise InputError(o.key_or_group, f"a ready {o.key_or_group} is chosen with a leading '+': "
                                             f"-m +{o.key_or_group}={o.value()}")
    sweeps = [o for o in parsed if o.is_sweep_override()]
    if not multirun:
        # (an unknown one is left to the composition, whose message lists the ones there are)
        chosen = [o for o in parsed
                  if o.key_or_group in _SELECTORS and (CONF_DIR / o.key_or_group / f"{o.value()}.yaml").exists()]
        if chosen:
            # without -m Hydra would run one default transfer and exit 0: never what was meant
            kind = "search" if chosen[0].key_or_group == "search" else "sweep"
            raise InputError(chosen[0].get_key_element(), f"selects a {kind}, "
                                                          f"which runs as a multirun: add -m (nst -m {' '.join(overrides)})")
        if sweeps:
            key = sweeps[0].get_key_element()
            hint = (f"; or, if the comma is part of a file name, quote it for Hydra: {_quoted(sweeps[0])}"
                    if key in PATH_KEYS else "")
            raise InputError(key, f"has several values: add -m to run one trial per value{hint}")
        return [overrides], None
    # Compose once with each sweep at its first value, to read hydra.sweeper (from sweeps/).
    first = [o.input_line if not o.is_sweep_override() else
             f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_discrete_sweep() else None
             for o in parsed]
    first_trial = [o for o in first if o is not None]
    cfg = config(first_trial, hydra_config=True)
    _check_launcher(cfg)
    try:
        sweep_dir = str(cfg.hydra.sweep.dir)
    except Exception as e:  # noqa: BLE001 - a folder that cannot be resolved
        raise InputError("hydra.sweep.dir", first_line(e)) from None
    if reads_results(cfg.hydra.sweeper):
        # A sweeper that proposes trials as it goes (Optuna) has no grid to expand: what the command
        # fixes is checked here, and each trial again when it is proposed (nst.run._prepare).
        check_search(cfg)
        fixed = [str(o.input_line) for o in parsed if not o.is_sweep_override()]
        space = {str(k): str(v) for k, v in (cfg.hydra.sweeper.get("params") or {}).items()}
        space.update({o.get_key_element(): str(o.input_line).split("=", 1)[-1] for o in sweeps})  # the command line wins
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
    fixed = [str(o.input_line) for o in parsed if not o.is_sweep_override()]
    return trials, {"sweep_dir": sweep_dir, "identity": sweep_folder.identity(fixed, swept), "cfg": cfg, "first": first_trial}


_SELECTORS = ("sweep", "search")  # config groups that choose a sweep or a search, not a trial's setting
PATH_KEYS = ("content", "style", "init.path")  # keys whose values are file names, which may hold a comma


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
            import optuna  # noqa: F401 -- imported only to learn whether it is installed
        except ImportError:
            raise InputError("hydra/sweeper", "optuna needs Optuna: pip install '.[search]' in a clone") from None
        from hydra_plugins.nst_sweeper.optuna_sweeper import SAMPLERS

        sampler = (sweeper.get("sampler") or {}).get("name", "tpe")
        if sampler not in SAMPLERS:
            raise InputError("hydra.sweeper.sampler.name", f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")


def _check_launcher(cfg) -> None:
    from hydra_plugins.nst_launcher.nst_launcher import NstLauncherConfigError, check_target

    try:
        check_target(cfg.hydra.launcher.get("_target_"))
    except NstLauncherConfigError as e:
        raise InputError("hydra.launcher._target_", str(e)) from None


def settings_for(overrides: list[str]):
    """The validated settings of one trial from its overrides, as a script or test wants them."""
    from nst.settings import settings_from_dict

    return settings_from_dict(resolved(config(list(overrides))))


def resolved(cfg) -> dict[str, Any]:
    """A composed config as the plain dict that Settings are made from (interpolations resolved, choices as strings)."""
    return cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def config(overrides: list[str], hydra_config: bool = False):
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
        of = " of " + prefix[:-1] if prefix else ""
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; keys{of}: {', '.join(siblings)}"
        return InputError(key, f"is not a config key{hint} (manual: docs/configuration.md)")
    m = re.search(r"An item is already at '([^']+)'", msg)
    if m:
        return InputError(m.group(1), "already exists: set it without the leading '+'")
    m = re.search(r"Could not load '([^']+)'", msg)
    if m:
        return InputError(m.group(1), first_line(e))
    return InputError(key_of(e), first_line(e))


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


def key_of(e: Exception) -> str:
    key = getattr(e, "full_key", None)
    return str(key) if key else "config"


def first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0].strip()
