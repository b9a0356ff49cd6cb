"""Every use of Hydra's private API in this project, in one place; the rest uses public Hydra only.

The launcher cannot call Hydra's `run_job` (it calls the task once for a whole batch), so `_core.py`
repeats run_job's steps around that call, and a few of those steps need pieces of Hydra that are not
public; nst.compose expands a grid exactly as Hydra's basic sweeper will. Each piece below says why.

They were read in hydra-core's source for the versions in CHECKED, where they are identical (and so
is run_job, whose steps _core.py repeats: RUN_JOB_SHA256). tests/test_hydra_internals.py fails,
naming the piece, when one of them moves or changes signature. Under any other version of Hydra,
this module warns once, when first imported.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn

# What the rest of the project takes from here: the three Hydra helpers imported below are handed on
# as they are (the launcher's _core.py calls them), the rest are defined here.
__all__ = ["CHECKED", "PIECES", "RUN_JOB_SHA256", "UncheckedHydraVersion", "deprecation_warning", "flags_help",
           "flush_loggers", "job_value", "raised", "restore_hydra_config", "save_config", "saved_hydra_config",
           "split_arguments"]

CHECKED = ("1.3.0", "1.3.1", "1.3.2", "1.3.3", "1.3.4", "1.3.5", "1.3.8")

# The pieces, for tests/test_hydra_internals.py: dotted name -> the parameters they were checked
# with (None: an attribute, checked by how it behaves).
PIECES = {
    "hydra.core.utils._save_config": ("cfg", "filename", "output_dir"),
    "hydra.core.utils._flush_loggers": (),
    "hydra._internal.deprecation_warning.deprecation_warning": ("message", "stacklevel"),
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper.split_arguments": ("overrides", "max_batch_size"),
    "hydra.core.hydra_config.HydraConfig.cfg": None,
    "hydra.core.utils.JobReturn._return_value": None,
    "hydra._internal.utils.run_and_report": ("func",),
    "hydra._internal.hydra.Hydra.format_args_help": ("args_parser",),
    "hydra._internal.utils.get_args_parser": (),
}
# sha256 of inspect.getsource(hydra.core.utils.run_job) in the CHECKED versions: if it changes,
# re-read it against _core.Job._start/_end (1.4.0.dev, for one, resolves env_set and records a
# KeyboardInterrupt in the job's return).
RUN_JOB_SHA256 = "398b33286c017043f1461d40578429260e9130f35fb9a30ae94be718c1c14b63"


class UncheckedHydraVersion(UserWarning):
    """hydra-core is a version this module was not checked against."""


_WARNED = "NST_LAUNCHER_UNCHECKED_HYDRA"  # set once warned: worker processes and SLURM tasks inherit it


def _warn_if_unchecked() -> None:
    version = hydra.__version__
    if version in CHECKED or os.environ.get(_WARNED) == version:
        return
    os.environ[_WARNED] = version
    warnings.warn(
        f"hydra-core {version} was not checked against hydra_plugins/nst_launcher/_hydra_private.py, "
        f"which uses private parts of Hydra (checked: {', '.join(CHECKED)}); the nst launcher may misbehave. "
        "Run tests/test_hydra_internals.py, or install a checked hydra-core.",
        UncheckedHydraVersion, stacklevel=2)


_warn_if_unchecked()

try:
    # hydra.main runs the app inside run_and_report, which prints any Exception as a traceback and
    # exits 1; `raised` lets chosen kinds through, for nst.run to report in one line.
    import hydra._internal.utils as _internal_utils

    # nst.preflight validates every trial of a grid before Hydra runs: it expands the command line into
    # the very override lists Hydra's basic sweeper will launch (sweep order, later keys winning).
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper as _BasicSweeper

    # The warning run_job gives when hydra.job.chdir is unset under a version_base before 1.2; it
    # honours HYDRA_DEPRECATION_WARNINGS_AS_ERRORS like Hydra's other deprecations.
    from hydra._internal.deprecation_warning import deprecation_warning

    # Flushes every logging handler, as run_job does before on_job_end and the launcher does when a
    # job stops being current; Python offers no public way to reach all handlers
    # (logging._handlerList), so Hydra's helper is used rather than a second copy.
    from hydra.core.utils import _flush_loggers as flush_loggers

    # Writes a job's .hydra/config.yaml, hydra.yaml and overrides.yaml exactly as run_job does: the
    # launcher starts each job of a batch itself.
    from hydra.core.utils import _save_config as save_config
except ImportError as e:
    raise ImportError(f"{__name__}: hydra-core {hydra.__version__} lacks a private piece the nst launcher "
                      f"uses ({e}); checked versions: {', '.join(CHECKED)}") from e


def split_arguments(overrides: list[Any], max_batch_size: int | None = None) -> list[list[list[str]]]:
    """BasicSweeper.split_arguments: parsed overrides -> batches of jobs' override lists."""
    return _BasicSweeper.split_arguments(overrides, max_batch_size)


def saved_hydra_config() -> Any:
    """What HydraConfig holds now (None: no job is current), for restore_hydra_config.

    HydraConfig.set_config() can make a config current but cannot make "none" current again (it
    asserts a config): run_job saves and assigns HydraConfig.instance().cfg itself, and so does the
    launcher, which makes each job of a batch current in turn and must give back exactly what was
    there, None included.
    """
    return HydraConfig.instance().cfg


def restore_hydra_config(saved: Any) -> None:
    HydraConfig.instance().cfg = saved


def job_value(ret: JobReturn) -> Any:
    """A job's return value, or a failed job's exception, without raising it.

    JobReturn.return_value raises a failed job's exception (and writes to stderr); a worker process
    reads it to check that it can travel back pickled. (Setting it is public: `ret.return_value = v`.)
    """
    return ret._return_value


class _Through(BaseException):
    """Carries an exception past run_and_report, which catches Exception only."""


@contextmanager
def raised(kinds: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Within this block, an exception of `kinds` raised inside hydra.main's app reaches the caller
    as itself, not printed by Hydra. Hydra's own handling is restored on exit."""
    original = _internal_utils.run_and_report

    def run_and_report(func: Any) -> Any:
        def passing() -> Any:
            try:
                return func()
            except kinds as e:
                raise _Through(e) from None
        return original(passing)

    _internal_utils.run_and_report = run_and_report
    try:
        yield
    except _Through as t:
        raise t.args[0] from None
    finally:
        _internal_utils.run_and_report = original


def flags_help() -> str:
    """The flags part of Hydra's `--help` (Hydra.format_args_help of its own argument parser), for
    an app that answers a bare --help without composing (nst.compose.quick_help)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import get_args_parser

    return Hydra.format_args_help(get_args_parser())
