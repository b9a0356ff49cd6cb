"""Worker processes for the nst launcher: one per GPU (or a number of them on the CPU).

Each worker is its own one-process pool, started with `spawn` (CUDA does not survive a fork) and
with CUDA_VISIBLE_DEVICES set to its GPU before the process starts: it sees that GPU as cuda:0 and
nothing else, so no two workers share a GPU unless more workers than GPUs were asked for. Batches
are dealt to workers as they come free. A worker that dies (killed, out of host memory, a crash in
native code) takes only its own batch down: that batch's jobs are ended here, as lost, and the
worker is replaced for the batches still to come.

No worker outlives its command. When the command stops (Ctrl-C, SIGTERM, SIGHUP: the launcher calls
`stop()`), each worker is sent SIGTERM: a worker that is running a batch stops it as Ctrl-C would (its
running trials are left unfinished, without a summary, for resume to run again) and exits; an idle one
exits at once; one still there after SHUTDOWN_GRACE_S is killed. A worker whose command is gone
without stopping it (SIGKILL, a crash) dies at once: the kernel kills it (Linux, PR_SET_PDEATHSIG),
or, elsewhere, a watchdog thread that sees its parent change.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import setup_globals
from hydra.types import HydraContext, TaskFunction

from ._contract import check_stop
from ._core import BatchLost, Item, dump_batch, end_lost_batch, load_returns, run_payload

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10  # when the command stops, how long its workers get to leave their trials re-runnable
# Signals that stop a worker's batch as Ctrl-C does (a worker of a command that ignores one, under
# nohup say, ignores it too: it inherits the command's SIG_IGN).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _Worker:
    def __init__(self, number: int, gpu: str, threads: int | None) -> None:
        self.number = number
        self.gpu = gpu  # its CUDA_VISIBLE_DEVICES ("": none)
        self.threads = threads
        self.pool: ProcessPoolExecutor | None = None
        self.process: Any = None

    @property
    def label(self) -> str:
        return f"worker {self.number} ({f'GPU {self.gpu}' if self.gpu else 'CPU'})"

    def submit(self, fn: Callable, *args: Any) -> Future:
        env = {"CUDA_VISIBLE_DEVICES": self.gpu}
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        for attempt in (1, 2):
            if self.pool is None:
                self.pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"),
                                                initializer=_init_worker, initargs=(os.getpid(),))
            try:
                # The pool starts its process inside submit(), in this thread: it inherits this
                # environment, and this thread is its parent (PR_SET_PDEATHSIG watches the thread).
                with _environment(env):
                    future = self.pool.submit(fn, *args)
                break
            except BrokenProcessPool:
                if attempt == 2:
                    raise
                self.replace()  # it died while idle (a signal to it alone): a new one takes the batch
        assert self.pool is not None  # submit() made it
        self.process = next(iter(self.pool._processes.values()), self.process)  # for its exit code
        return future

    def death(self) -> str:
        code = None
        if self.process is not None:
            # Reap it: its exit code is known only then. The pool's own thread may be reaping it at
            # the same moment (our waitpid then fails and reads as "still running"), so ask again
            # until its code is recorded.
            deadline = time.monotonic() + 5
            while True:
                self.process.join(0.05)
                code = self.process.exitcode
                if code is not None or time.monotonic() > deadline:
                    break
        if code is None:
            return "worker process died"
        if code < 0:
            try:
                return f"worker process died (killed by {signal.Signals(-code).name})"
            except ValueError:
                pass
        if code - 128 in STOP_SIGNALS:  # a signal made it exit (_on_signal)
            return f"worker process stopped by {signal.Signals(code - 128).name}"
        return f"worker process died (exit code {code})"

    def replace(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """The sweep has ended: the idle worker exits."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def stop(self) -> list:
        """The command is stopping: no new batch starts here, and the worker is told to stop (SIGTERM:
        see _on_signal); once it has given back its batch, it exits. Returns its process, for the
        caller to wait for."""
        pool, self.pool = self.pool, None
        if pool is None:
            return []
        processes = list(pool._processes.values())  # the pool's own list; there is no public one
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            if p.is_alive() and p.pid is not None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        return processes


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------ in the worker

_busy = False  # running a batch or sizing one (_run, _size)
_stopping: int | None = None  # the signal that is stopping this worker


class WorkerStopped(Exception):
    """What a worker gives back for the batch a signal stopped (its running trials left unfinished)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"worker process stopped by {signal.Signals(self.signum).name}"


def _init_worker(parent: int) -> None:
    _die_with(parent)
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _on_signal)


def _on_signal(signum: int, frame: Any) -> None:
    """A busy worker stops its batch as Ctrl-C would (the runner leaves its running trials without a
    summary) and gives back WorkerStopped (_busily); an idle one exits. Ctrl-C reaches every process
    of the terminal: an idle worker leaves it to the launcher, which stops the pool."""
    global _stopping
    if _stopping is not None:
        return  # already stopping: let it finish leaving its trials re-runnable
    if not _busy:
        if signum == signal.SIGINT:
            return
        _stopping = signum
        sys.exit(128 + signum)  # out of the pool's loop, which waits for work: a clean exit
    _stopping = signum
    raise KeyboardInterrupt


def _die_with(parent: int) -> None:
    """This worker dies with its command, even one killed without a chance to stop it (SIGKILL): it
    must not go on writing into the sweep folder, nor hold its memory, once nobody reads its results."""
    if sys.platform.startswith("linux"):
        try:
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)
    # Wherever prctl is missing, and should the kernel's signal not come: a watchdog.
    threading.Thread(target=_watch_parent, args=(parent,), name="nst-parent-watchdog", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _busily(fn: Callable, *args: Any) -> Any:
    """fn(*args) as the worker's work: a signal stops it (_on_signal), and the worker then gives back
    WorkerStopped; the launcher replaces it (or, stopping too, shuts it down)."""
    global _busy
    try:
        if _stopping is not None:
            raise KeyboardInterrupt
        _busy = True
        try:
            return fn(*args)
        finally:
            _busy = False
    except KeyboardInterrupt:
        if _stopping is None:
            raise
    raise WorkerStopped(_stopping)


def _run(payload: bytes) -> bytes:
    return _busily(run_payload, payload)


def _size(payload: bytes) -> int | None:
    return _busily(_size_here, payload)


def _size_here(payload: bytes) -> int | None:
    import cloudpickle

    batch_size, cfgs, state = cloudpickle.loads(payload)
    Singleton.set_state(state)
    setup_globals()
    return batch_size(cfgs)


# multiprocessing's resource tracker, told to stay quiet about semaphores a dead worker left behind.
_QUIET_TRACKER = "ignore:resource_tracker:UserWarning:multiprocessing.resource_tracker"


def _start_quiet_tracker() -> None:
    """A worker killed outright (SIGKILL, the out-of-memory killer) cannot release the semaphores it
    made (a library's lock: tqdm makes one in every process that shows a bar); the resource tracker the
    workers share with this process unlinks them when the command ends, then warns of "leaked semaphore
    objects", after the launcher has said in one line that the worker died. Started here, before any
    worker, the tracker runs with that warning silenced; its cleanup still runs. (One already running,
    started by something else in this process, is left as it is.)"""
    if os.name != "posix":
        return  # no resource tracker elsewhere
    from multiprocessing import resource_tracker

    current = os.environ.get("PYTHONWARNINGS")
    with _environment({"PYTHONWARNINGS": f"{current},{_QUIET_TRACKER}" if current else _QUIET_TRACKER}):
        resource_tracker.ensure_running()


class PoolRunner:
    def __init__(self, gpus: list[str], hydra_context: HydraContext, task_function: TaskFunction) -> None:
        _start_quiet_tracker()
        self.hydra_context = hydra_context
        self.task_function = task_function
        threads = None
        if "OMP_NUM_THREADS" not in os.environ:
            # Workers share the CPU: each gets its share of threads rather than all of them.
            threads = max(1, len(os.sched_getaffinity(0)) // len(gpus))
        self.workers = [_Worker(number, gpu, threads) for number, gpu in enumerate(gpus)]

    @property
    def parallel(self) -> int:
        return len(self.workers)

    def describe(self) -> str:
        gpus = [w.gpu for w in self.workers]
        if not any(gpus):
            return f"on {len(gpus)} CPU worker processes"
        return f"on {len(gpus)} worker processes (CUDA_VISIBLE_DEVICES {', '.join(gpus)})"

    def batch_size(self, hook: Callable[[list], int | None], cfgs: list) -> int | None:
        """max_batch=auto is measured where the batches run: in a worker, on its GPU."""
        import cloudpickle

        worker = self.workers[0]
        try:
            return worker.submit(_size, cloudpickle.dumps((hook, cfgs, Singleton.get_state()))).result()
        except (BrokenProcessPool, WorkerStopped):
            worker.replace()
            raise

    def run(self, batches: list[list[Item]]) -> Iterator[tuple[list[Item], list]]:
        """Deal the batches to the workers as they come free; yields (batch, its JobReturns) as each ends."""
        pending: deque[tuple[int, list[Item]]] = deque(enumerate(batches, 1))
        idle: deque[_Worker] = deque(self.workers)
        running: dict[Future, tuple[_Worker, list[Item], float]] = {}
        while pending or running:
            check_stop(self.task_function)
            while pending and idle:
                worker, (number, batch) = idle.popleft(), pending.popleft()
                log.info(f"batch {number}/{len(batches)}: jobs {[idx for idx, _ in batch]} -> {worker.label}")
                since = time.time()
                payload = dump_batch(self.hydra_context, self.task_function, batch)
                running[worker.submit(_run, payload)] = (worker, batch, since)
            done, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
            check_stop(self.task_function)  # a stop whose KeyboardInterrupt never arrived: not a worker's death
            for future in done:
                worker, batch, since = running.pop(future)
                try:
                    returns = load_returns(future.result())
                except (BrokenProcessPool, WorkerStopped) as e:
                    # A signal to the worker alone (the command's own stop never comes here).
                    died = str(e) if isinstance(e, WorkerStopped) else worker.death()
                    error = BatchLost(f"{died} while running this batch on {worker.label}")
                    worker.replace()
                    returns = end_lost_batch(self.hydra_context, self.task_function, batch, error, since)
                except Exception as e:  # noqa: BLE001 - the batch or its results could not travel
                    error = BatchLost(f"{worker.label} could not run this batch: {type(e).__name__}: {e}")
                    returns = end_lost_batch(self.hydra_context, self.task_function, batch, error, since)
                idle.append(worker)
                yield batch, returns

    def stop(self) -> None:
        """The command is stopping: every worker stops (see the module's docstring), all at once, and
        is gone when this returns."""
        processes = [p for worker in self.workers for p in worker.stop()]
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in processes:
            if p.is_alive():
                log.warning(f"worker process {p.pid} did not stop within {SHUTDOWN_GRACE_S} s: killed")
                p.kill()
                p.join(5)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
