"""The network's evaluation under torch.compile (the `compile` key), compiled once per process for each
network, layer set and batch shape, and reused by every trial and level of that shape.

What is compiled is the feature extractor (preprocessing, convolutions, ReLUs, poolings: nearly all
of an evaluation's arithmetic), forward and, through AOTAutograd, backward. The loss terms stay
eager: their trials differ in targets, forms and layers, and a graph per objective would compile
once per trial. Targets are taken with the same network uncompiled (other shapes, once per level).

The cache: one extractor per (network, weights, pooling, layers, device, dtype, layout), held for
the process (so a sweep's batches share its weights and its graphs), each with one compiled module
whose graphs torch keys by input shape (dynamic=False: one graph per shape, specialised). The batch
shrinks as trials finish; its rows are padded up to a power of two (at most the batch's size), so
a batch of 8 compiles for 8, 4, 2 and 1 rows at most, and padded rows cost arithmetic, not a
compile. A failed compile (an unsupported platform, a backend error) logs one line and the
extractor evaluates eagerly from then on, in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

# compile=auto on a GPU: compiled when the trials of a batch have at least this many evaluations
# each (the longest); below it, compiling (tens of seconds) costs more than it saves. A starting
# point: the break-even on a GPU has not been measured (benchmarks/gpu_check.py is to measure it).
AUTO_MIN_EVALUATIONS = 300
_CACHE_SIZE = 4  # networks held per process (a sweep uses one; an ablation of layer sets a few)


def resolve_mode(mode: str, device: torch.device, evaluations: int) -> str:
    """compile=auto as a mode for this batch: off on the CPU, where the compiled evaluation measured
    slower than eager (0.78x, 0.76x, 0.85x at 32, 64, 128 px on a 2-core AMD EPYC, one thread, torch
    2.14: benchmarks/compiled.py; the manual's "Speed"), and on a GPU for trials shorter than
    AUTO_MIN_EVALUATIONS."""
    if mode != "auto":
        return str(mode)  # the plain name torch.compile takes, not the schema's Compile member
    if device.type == "cuda" and evaluations >= AUTO_MIN_EVALUATIONS:
        return "reduce-overhead"
    return "off"


@dataclass
class _Entry:
    extractor: torch.nn.Module
    compiled: dict[str, Callable] = field(default_factory=dict)  # mode -> the compiled module
    ready: set[tuple] = field(default_factory=set)  # (mode, input shape) compiled forward and backward
    failed: set[str] = field(default_factory=set)  # modes that failed to compile here


_entries: dict[tuple, _Entry] = {}
compilations = 0  # modules handed to torch.compile in this process (tests count them)


def cached_extractor(key: tuple, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The process's extractor for `key` (built once), most recently used kept last."""
    entry = _entries.pop(key, None)
    if entry is None:
        entry = _Entry(build())
    _entries[key] = entry
    while len(_entries) > _CACHE_SIZE:
        _entries.pop(next(iter(_entries)))
    return entry.extractor


def clear() -> None:
    _entries.clear()


def bucket(k: int, batch: int) -> int:
    """The rows a compiled evaluation of k points runs: the next power of two, at most the batch's size."""
    rows = 1
    while rows < k:
        rows *= 2
    return max(k, min(rows, batch))


class Evaluator:
    """Features of a [k,3,H,W] batch: the extractor compiled in `mode`, or eager (mode "off", or after a
    failed compile). `batch`: the batch's size at its start, the most rows it will ever evaluate."""

    def __init__(self, extractor: torch.nn.Module, mode: str, batch: int):
        self.extractor, self.mode, self.batch = extractor, mode, batch
        self._entry = next((e for e in _entries.values() if e.extractor is extractor), None)
        if mode != "off" and (self._entry is None or mode in self._entry.failed):
            self.mode = "off"  # an uncached extractor is not compiled: its graphs would die with it

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.mode == "off":
            return self.extractor(x)
        entry = self._entry
        assert entry is not None  # a compiled mode only for a cached extractor (__init__)
        x0, k = x, x.shape[0]
        rows = bucket(k, self.batch)
        if rows > k:
            # padded rows repeat the last point: real pixels, so nothing non-finite; their features are
            # not used and no gradient flows to them (the slice below drops them)
            x = torch.cat([x, x[-1:].detach().expand(rows - k, -1, -1, -1)])
        try:
            fn = self._compiled(entry)
            if (self.mode, tuple(x.shape)) not in entry.ready:
                # Compile a new shape's backward here too (torch compiles it at the first backward, in the
                # runner, where a failure would fail the batch): a probe on a copy of the points.
                probe = x.detach().clone().requires_grad_(True)
                if self.mode == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()
                torch.autograd.backward([f.float().sum() for f in fn(probe).values()])
                entry.ready.add((self.mode, tuple(x.shape)))
            if self.mode == "reduce-overhead":
                # CUDA graphs reuse their output buffers at the next replay: each tick's features are
                # consumed (backward included) before the next tick begins, which this marks. (This
                # path is written for CUDA GPUs and not yet run on one: on the CPU the mode is inductor's
                # default, without graphs.)
                torch.compiler.cudagraph_mark_step_begin()
            feats = fn(x)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - a compiler's failure of any kind: evaluate eagerly
            # torch wraps a backend's error (BackendCompilerFailed): the one line names the backend's own
            cause = getattr(e, "inner_exception", None) or e.__cause__ or e
            first = (str(cause).strip().splitlines() or [""])[0][:200]
            log.warning("compile=%s failed (%s: %s); evaluating without compiling", self.mode, type(cause).__name__, first)
            entry.failed.add(self.mode)
            entry.compiled.pop(self.mode, None)
            self.mode = "off"
            return self.extractor(x0)
        return feats if rows == k else {name: f[:k] for name, f in feats.items()}

    def _compiled(self, entry: _Entry) -> Callable:
        global compilations
        fn = entry.compiled.get(self.mode)
        if fn is None:
            compilations += 1
            # Every extractor's graphs hang off the one forward's code, one per (network, shape, rows):
            # at torch's default of 8 a sweep's ninth would run eagerly, with a warning.
            import torch._dynamo

            dynamo = torch._dynamo.config
            dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
            fn = torch.compile(self.extractor, mode=None if self.mode == "default" else self.mode, dynamic=False)
            entry.compiled[self.mode] = fn
        return fn
