"""A stop signal's state, shared by the command that installs the handlers (nst.run) and the loops
that must honour it (nst.engine).

The handler raises KeyboardInterrupt wherever the main thread happens to be. Python swallows an
exception raised inside a weakref callback, a __del__ or an import lock's clean-up (it prints
"Exception ignored in ..."), and a Ctrl-C landing there would be lost: the command went on, and a
second Ctrl-C was ignored as a repeat. `check()`, called at every optimisation step and when the
trials have ended, raises it again until it has reached the command."""

from __future__ import annotations


class Stop:
    signum: int | None = None  # the signal that is stopping the command
    deferred = False  # a signal now waits for the end of a write that must be whole (nst.run.report_deferred)
    trials_ended = False  # the sweep's trials have all ended: its report is being written


current: Stop | None = None  # the command's, while its handlers are installed (nst.run.main)


def check() -> None:
    """Raise KeyboardInterrupt if a stop signal has come (its own interrupt may have been swallowed),
    unless it waits for a write that must be whole. A no-op outside the command (`nst.stylize`)."""
    stop = current
    if stop is not None and stop.signum is not None and not stop.deferred:
        raise KeyboardInterrupt
