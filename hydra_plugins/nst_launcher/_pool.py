"""Worker processes for the nst launcher: one per GPU (or a number of them on the CPU).

Each worker is its own one-process pool, started with `spawn` (CUDA does not survive a fork) and
with CUDA_VISIBLE_DEVICES set to its GPU before the process starts: it sees that GPU as cuda:0 and
nothing else, so no two workers share a GPU unless more workers than GPUs were asked for. Batches
are dealt to workers as they come free. A worker that dies (killed, out of host memory, a crash in
native code) takes only its own batch down: that batch's jobs are ended here, as lost, and the
worker is replaced for the batches still to come.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

from hydra.core.singleton import Singleton
from hydra.core.utils import setup_globals
from hydra.types import HydraContext, TaskFunction

from ._core import BatchLost, Item, dump_batch, end_lost_batch, load_returns, run_payload

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 30  # after Ctrl-C, how long workers get to record their interrupted trials


class _Worker:
    def __init__(self, number: int, gpu: str, threads: Optional[int]) -> None:
        self.number = number
        self.gpu = gpu  # its CUDA_VISIBLE_DEVICES ("": none)
        self.threads = threads
        self.pool: Optional[ProcessPoolExecutor] = None
        self.process: Any = None

    @property
    def label(self) -> str:
        return f"worker {self.number} ({f'GPU {self.gpu}' if self.gpu else 'CPU'})"

    def submit(self, fn: Callable, *args: Any) -> Future:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), initializer=_init_worker)
        env = {"CUDA_VISIBLE_DEVICES": self.gpu}
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        # The pool starts its process inside submit(), in this thread: it inherits this environment.
        with _environment(env):
            future = self.pool.submit(fn, *args)
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
        return f"worker process died (exit code {code})"

    def replace(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self, grace: Optional[float] = None) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        if grace is None:
            pool.shutdown(wait=True)
            return
        processes = list(pool._processes.values())  # the pool's own list; there is no public one
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()


@contextmanager
def _environment(values: Dict[str, str]) -> Iterator[None]:
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


def _init_worker() -> None:
    # Ctrl-C reaches every process of the terminal: an idle worker ignores it (the launcher shuts the
    # pool down); a busy one lets its batch see it (see _run), which records its interrupted trials.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(payload: bytes) -> bytes:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_payload(payload)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _size(payload: bytes) -> Optional[int]:
    import cloudpickle

    batch_size, cfgs, state = cloudpickle.loads(payload)
    Singleton.set_state(state)
    setup_globals()
    return batch_size(cfgs)


class PoolRunner:
    def __init__(self, gpus: List[str], hydra_context: HydraContext, task_function: TaskFunction) -> None:
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

    def batch_size(self, hook: Callable[[list], Optional[int]], cfgs: list) -> Optional[int]:
        """max_batch=auto is measured where the batches run: in a worker, on its GPU."""
        import cloudpickle

        worker = self.workers[0]
        try:
            return worker.submit(_size, cloudpickle.dumps((hook, cfgs, Singleton.get_state()))).result()
        except BrokenProcessPool:
            worker.replace()
            raise

    def run(self, batches: List[List[Item]]) -> Iterator[Tuple[List[Item], list]]:
        """Deal the batches to the workers as they come free; yields (batch, its JobReturns) as each ends."""
        pending: Deque[Tuple[int, List[Item]]] = deque(enumerate(batches, 1))
        idle: Deque[_Worker] = deque(self.workers)
        running: Dict[Future, Tuple[_Worker, List[Item], float]] = {}
        try:
            while pending or running:
                while pending and idle:
                    worker, (number, batch) = idle.popleft(), pending.popleft()
                    log.info(f"batch {number}/{len(batches)}: jobs {[idx for idx, _ in batch]} -> {worker.label}")
                    since = time.time()
                    payload = dump_batch(self.hydra_context, self.task_function, batch)
                    running[worker.submit(_run, payload)] = (worker, batch, since)
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    worker, batch, since = running.pop(future)
                    try:
                        returns = load_returns(future.result())
                    except BrokenProcessPool:
                        error = BatchLost(f"{worker.death()} while running this batch on {worker.label}")
                        worker.replace()
                        returns = end_lost_batch(self.hydra_context, self.task_function, batch, error, since)
                    except Exception as e:  # the batch or its results could not travel
                        error = BatchLost(f"{worker.label} could not run this batch: {type(e).__name__}: {e}")
                        returns = end_lost_batch(self.hydra_context, self.task_function, batch, error, since)
                    idle.append(worker)
                    yield batch, returns
        except BaseException:
            self.close(grace=SHUTDOWN_GRACE_S)
            raise

    def close(self, grace: Optional[float] = None) -> None:
        for worker in self.workers:
            worker.close(grace)
