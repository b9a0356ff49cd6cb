"""The runner: compatible trials share each forward/backward pass, each keeping its own optimiser.

Every run goes through here: a single run is a batch of one. Trials are grouped by what one pass
must share (`group_key`); inside a batch they may differ in everything else: loss weights, layer
sets and their weights, loss forms, content/style images and their targets, init image, noise and
seed, optimiser hyper-parameters and evaluation budget. Each tick, the optimisers of the running
trials say where they want the loss and gradient (`nst.optimizers`: reverse communication), the
points are stacked into one [k,3,H,W] tensor, the network runs once to the deepest layer any trial
needs, and every trial gets its own loss terms and gradient. A trial that converges, spends its
budget or fails leaves the batch, and the batch shrinks.

Out of GPU memory, a batch is split in two and both halves run again from the start; a trial that
cannot run even alone fails with one line saying what to lower. Never a silent fall-back to the CPU.

Host synchronisations (the GPU waits for the host, or the host for the GPU), each marked where it is:
one per tick (`_to_host`: every trial's terms, loss scales and the optimiser's measures in one
transfer); one per group (the free memory, for max_batch=auto); and at a trial's end (its final
terms, metrics and image). A trial's loss weights and whether it has a TV term come from its
settings (host numbers), so nothing waits for them.

The loss terms of the trials that share targets (the same images and objective, as a sweep over
loss weights, seeds, init or optimiser settings has) are computed together, as one [g] batch per
group (`_Terms`), not trial by trial: the host's work per tick then grows with the number of
groups, not of trials. The network's evaluation may be compiled (`compile`, nst.compiled).
On `mps` the L-BFGS products add one per trial and new direction (nst.optimizers, small_on_host).
"""

from __future__ import annotations

import gc
import math
import os
import resource
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F

from nst import compiled, images, interrupt, methods, records
from nst.device import (
    channels_last,
    cpu_model,
    cpu_threads,
    keep_freed_memory,
    lbfgs_products_on_host,
    peak_memory,
    resolve_device,
    resolve_precision,
    set_determinism,
    set_precision,
    torch_settings,
)
from nst.errors import InputError
from nst.features import FeatureExtractor, get_weights_spec, layer_names, layer_table
from nst.inputs import prepare
from nst.loss import Loss
from nst.metrics import standard_metrics
from nst.optimizers import AdamState, BatchAdam, BatchLBFGS
from nst.settings import Settings
from nst.sinks import StepRecord
from nst.summary import Summary
from nst.summary import write as write_summary

CPU_MAX_BATCH = 8  # max_batch=auto on the CPU: batching there saves per-pass overhead, not parallelism


@dataclass
class Trial:
    settings: Settings
    inputs: dict  # PIL images, from nst.stage.Stage.inputs
    run_dir: Path
    # The trial's sinks (files, progress bar, W&B), opened at the start of each attempt: an attempt
    # that ran out of memory closes them, and its retry opens fresh ones. Called with the trial's
    # position in its batch (the progress bar's line).
    open_sinks: Callable[[int], list]
    record: dict = field(default_factory=dict)  # merged into summary.json (config, overrides, label)


def group_key(s: Settings) -> tuple:
    """What the trials of one batch must share: one network, one image shape (at every pyramid
    level), one device, one optimiser kind; for engine=strotss or nnst, one engine with the same keys,
    steps, colour post-process and frames (nst.methods: only the content weight and the seed differ)."""
    method = (s.engine, s.method, s.steps, s.color, s.frame_every) if s.method is not None else None
    return (s.arch, s.weights, s.pooling, s.image_size, s.pyramid_levels, s.pyramid_factor, s.device, s.precision,
            s.deterministic, s.optimizer.name, method)


def auto_batch_size(settings: list[Settings]) -> int:
    """max_batch=auto: on the CPU a small fixed number; on a CUDA GPU what 80 % of its free memory holds,
    up to batch_cap(), so that a group of compatible trials runs in as few passes as memory allows (a cap
    of 64 cut the ablations' 88 trials at 128 px into 64 and 24; running out of memory still splits a
    batch in two). Apple's GPU (mps) shares the machine's memory and reports no free figure: the CPU's number."""
    s = settings[0]
    device = resolve_device(s.device)
    if device.type != "cuda":
        return CPU_MAX_BATCH
    free, _ = torch.cuda.mem_get_info(device)  # host synchronisation: once per group of trials
    per_trial = max(trial_bytes(x) for x in settings)
    return max(1, min(batch_cap(), int(0.8 * free) // per_trial))


def batch_cap() -> int:
    """The most trials max_batch=auto puts in one batch: 256, and a quarter of the process's open-file limit,
    as each trial of a batch keeps files open while it runs (its metrics.jsonl, its W&B run's). With the
    usual limit of 1024 files that is 256; small images on a large GPU would otherwise fit thousands."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 256 if soft == resource.RLIM_INFINITY else max(1, min(256, soft // 4))


def trial_bytes(s: Settings) -> int:
    """Rough GPU memory one trial of a batch costs: activations kept for backward, plus optimiser state."""
    w, h = s.image_size
    n = 3 * w * h
    layers = list(s.objective.content_layers + s.objective.style_layers)
    deepest = max(layer_names(s.arch).index(name) for name in layers)
    acts, scale = 0, 1
    for _name, kind, ch in layer_table(s.arch)[: deepest + 1]:
        if kind == "pool":
            scale *= 2
        acts += ch * (w // scale) * (h // scale)
    # x2 for the gradients flowing back through them, x1.5 for the allocator's slack
    activations = int(4 * acts * 2 * 1.5)
    if s.optimizer.name == "lbfgs":
        # nst.optimizers.BatchLBFGS: the history (s, y) [m, n] each, x, d, g_x, the pending point and
        # the tick's gradient; the batch holds max history_size slots for every trial, and
        # auto_batch_size takes the largest trial's cost for each, so that is counted.
        state = (2 * s.optimizer.history_size + 5) * n * 4
    else:
        state = 4 * n * 4  # x, two moments, gradient
    return activations + state


def run_trials(trials: list[Trial], max_batch: int | None = None) -> list[dict]:
    """Run trials, batching the compatible ones (at most `max_batch` per batch, None: auto).
    Returns their summaries in order; never raises but for Ctrl-C (KeyboardInterrupt)."""
    groups: dict[tuple, list[int]] = {}
    summaries: list[dict | None] = [None] * len(trials)
    for i, t in enumerate(trials):
        try:
            key = group_key(t.settings)
        except InputError:
            key = ("alone", i)  # its own attempt reports the error
        groups.setdefault(key, []).append(i)
    for idxs in groups.values():
        try:
            limit = max_batch or auto_batch_size([trials[i].settings for i in idxs])
        except InputError:
            limit = 1
        for start in range(0, len(idxs), limit):
            chunk = idxs[start:start + limit]
            for i, summary in zip(chunk, run_together([trials[i] for i in chunk]), strict=True):
                summaries[i] = summary
    return summaries  # type: ignore[return-value]


def run_together(trials: list[Trial]) -> list[dict]:
    """Run compatible trials as one batch (see group_key); returns their summaries in order. The torch
    settings the batch needs (precision, determinism, cuDNN autotuning, CPU threads) are set for it and
    restored after it."""
    with torch_settings():
        return _run_together(trials)


def _run_together(trials: list[Trial]) -> list[dict]:
    batch_id = uuid.uuid4().hex[:8]
    summaries: list[dict | None] = [None] * len(trials)
    todo = [list(range(len(trials)))]
    while todo:
        idxs = todo.pop(0)
        retry, error = _attempt(trials, idxs, summaries, batch_id)
        if not retry:
            continue
        if len(retry) > 1:
            half = (len(retry) + 1) // 2
            todo[:0] = [retry[:half], retry[half:]]  # both halves, from the start
            continue
        (i,) = retry
        w, h = trials[i].settings.image_size
        name, total = _memory_of(resolve_device(trials[i].settings.device))
        message = (f"out of memory even alone: {w}x{h} px on {name} ({total / 2**30:.1f} GiB); "
                   f"lower `size` or `optimizer.history_size` ({error})")
        _attempt(trials, [i], summaries, batch_id, fail_with=message)
    return summaries  # type: ignore[return-value]


@dataclass
class _Live:
    """One trial during an attempt."""

    trial: Trial
    summary: dict
    sinks: list
    t0: float
    objective: Loss | None = None
    shared: Loss | None = None  # the objective whose targets this trial shares with others (see _Terms)
    tensors: dict = field(default_factory=dict)  # this level's images (nst.inputs.prepare); empty between levels
    evaluations: int = 0  # over every level
    level_evaluations: int = 0
    scale: float | None = None  # L-BFGS: 1/|total at the level's first evaluation| (see _optimise)
    carry: torch.Tensor | None = None  # a coarser level's result, the next level's start
    optimizer_state: AdamState | None = None  # pyramid.carry_optimizer: Adam's state at the end of the coarser level
    done: bool = False
    out: Path | None = None  # where this attempt writes its files (nst.records.begin_attempt)

    def present(self, x: torch.Tensor) -> torch.Tensor:
        """The image as saved: for color=luminance, the optimised luminance with the photograph's colours."""
        if self.trial.settings.color == "luminance":
            return images.with_chroma_of(x, self.tensors["photo"])
        return x


def _attempt(trials: list[Trial], idxs: list[int], summaries: list, batch_id: str, fail_with: str | None = None):
    """One try at running trials[idxs] together. Returns (trials to retry after running out of GPU
    memory, the error), or ([], None) when every trial has its summary."""
    live: dict[int, _Live] = {}
    for pos, i in enumerate(idxs):
        t = trials[i]
        summary = {"status": "running", "started_at": _now(), **t.record,
                   "batch": {"id": batch_id, "size": len(idxs), "position": pos}}
        lv = _Live(t, summary, [], time.perf_counter(), out=t.run_dir)
        live[i] = lv
        try:
            # An earlier attempt's files (resume, a retry) stay until this attempt ends (nst.records)
            lv.out = records.begin_attempt(t.run_dir)
            lv.sinks = t.open_sinks(pos)
        except Exception as e:  # noqa: BLE001 - a trial whose sinks cannot open fails alone
            _fail(lv, e)
    if fail_with:
        for lv in live.values():
            if not lv.done:
                _fail(lv, OutOfMemoryAlone(fail_with))
    device, oom = None, None
    try:
        running = [i for i in idxs if not live[i].done]
        if not running:
            return [], None
        if live[running[0]].trial.settings.method is not None:  # engine=strotss or nnst (the same in a batch)
            device = _run_method(live, running)
            return [], None
        device, extractor, evaluate = _network(live, running)
        levels = live[running[0]].trial.settings.pyramid_levels  # the same in a batch (group_key)
        for level in range(levels):
            _setup_level(live, [i for i in running if not live[i].done], extractor, device, level)
            if any(not live[i].done for i in running):
                _optimise(live, [i for i in running if not live[i].done], device, level, last=level == levels - 1,
                          evaluate=evaluate)
    except torch.OutOfMemoryError as e:
        unfinished = [i for i in idxs if not live[i].done]
        for i in unfinished:
            _close_sinks(live[i], {**live[i].summary, "status": "retried"})
            live[i].tensors = {}
            live[i].objective = live[i].carry = live[i].optimizer_state = None
        oom = (unfinished, str(e).splitlines()[0])
    except BaseException as e:  # any error: every unfinished trial records the failure, Ctrl-C included
        for i in idxs:
            if not live[i].done:
                _fail(live[i], e)
        if isinstance(e, KeyboardInterrupt):
            raise
    finally:
        for i in idxs:
            summaries[i] = live[i].summary
        if oom is not None:
            # The failed attempt's memory is held in reference cycles (CUDA's error path): without the
            # collector it outlives the attempt. On an H200 (benchmarks/gpu_check.py, oom_split) two of
            # eight 512 px trials then failed "even alone" under a cap that holds four; with it all eight
            # completed, in the same run.
            gc.collect()
        if device is not None:
            _empty_cache(device)  # hand this batch's blocks to the next one
    return oom if oom is not None else ([], None)


def _network(live: dict[int, _Live], running: list[int]) -> tuple[torch.device, FeatureExtractor, compiled.Evaluator]:
    """The device, one extractor to the deepest layer any trial of the batch needs, and the evaluation of
    a tick's batch with it (compiled or not: `compile`)."""
    s0 = live[running[0]].trial.settings
    device, precision = _batch_device(live, running)
    layers: list[str] = []
    for i in running:
        s = live[i].trial.settings
        layers += list(s.objective.content_layers + s.objective.style_layers)
    spec = get_weights_spec(s0.arch, s0.weights)
    layers = list(dict.fromkeys(layers))
    nhwc = channels_last(device, precision)
    mode = compiled.resolve_mode(s0.compile, device, max(live[i].trial.settings.total_steps for i in running))

    def build() -> FeatureExtractor:
        return FeatureExtractor(s0.arch, spec, layers, s0.pooling, device, precision, channels_last=nhwc)

    if mode == "off":
        extractor = build()
    else:  # one per process for its network and layers: its compiled graphs serve every later batch
        extractor = cast(FeatureExtractor, compiled.cached_extractor(
            (s0.arch, s0.weights, s0.pooling, tuple(layers), str(device), precision, nhwc), build))
    for i in running:
        live[i].summary["compile"] = mode
    return device, extractor, compiled.Evaluator(extractor, mode, len(running))


def _run_method(live: dict[int, _Live], running: list[int]) -> torch.device:
    """engine=strotss or nnst (nst.methods): the batch through the method's own loop, one network for it
    (trials whose style images differ in size run as consecutive sub-batches), every step a record for
    the trial's sinks, then each trial completed as a gatys trial is (_complete)."""
    device, precision = _batch_device(live, running)
    by_style: dict[tuple, list[int]] = {}
    for i in running:
        lv = live[i]
        lv.tensors = prepare(lv.trial.settings, lv.trial.inputs, device)
        lv.summary["compile"] = "off"
        by_style.setdefault(tuple(lv.tensors["styles"][0].shape), []).append(i)
    for idxs in by_style.values():
        who = [live[i] for i in idxs]
        start = time.perf_counter()

        def on_record(j: int, evaluation: int, scale: int | None, values: dict[str, float], image: torch.Tensor,
                      who: list[_Live] = who, start: float = start) -> None:
            interrupt.check()
            lv = who[j]
            if lv.done:
                return
            lv.evaluations = evaluation
            error = _send(lv, StepRecord(evaluation, time.perf_counter() - start, values, image, scale))
            if error is not None:
                _fail(lv, *error)

        contents = torch.cat([lv.tensors["content"] for lv in who])
        styles = torch.cat([lv.tensors["styles"][0] for lv in who])
        shared = all(torch.equal(styles[0], x) for x in styles[1:])  # one style for all: its features once
        outcome = methods.run([lv.trial.settings for lv in who], contents, styles[:1] if shared else styles, device,
                              precision, on_record)
        end = time.perf_counter()  # the trials end together: none counts another's saving (see _optimise)
        for j, lv in enumerate(who):
            if lv.done:
                continue
            lv.summary["optimisation_time"] = round(end - start, 3)
            _complete(lv, outcome.image[j:j + 1], "budget", device, final_terms=outcome.final[j])
    return device


def _batch_device(live: dict[int, _Live], running: list[int]) -> tuple[torch.device, str]:
    """The batch's device and precision, set up for it (precision, determinism, threads), and recorded in
    each trial's summary."""
    s0 = live[running[0]].trial.settings
    device = resolve_device(s0.device)
    precision = resolve_precision(s0.precision, device)
    set_precision(precision, device)
    set_determinism(s0.deterministic, device, len(running))
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())  # the cores idle now: threads waiting on a busy core stall the batch
        keep_freed_memory()  # each tick's tensors from memory already mapped, not fresh pages (nst.device)
    # No global seed: a trial's randomness (its start noise) comes from its own generator, seeded with
    # its own seed (nst.inputs.prepare), so it does not depend on the batch it runs in.
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in running:
        live[i].summary["device"], live[i].summary["precision"] = str(device), precision
        if device.type == "cpu":
            live[i].summary["cpu_threads"] = torch.get_num_threads()
        live[i].summary["device_name"] = _memory_of(device)[0]
    return device, precision


def _setup_level(live: dict[int, _Live], running: list[int], extractor: FeatureExtractor, device: torch.device,
                 level: int) -> None:
    """Each trial's images, start and targets at this pyramid level."""
    targets: dict[tuple, Loss] = {}
    for i in running:
        try:
            _setup_trial(live[i], targets, extractor, device, level)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - a trial whose images or targets cannot be made fails alone
            _fail(live[i], e)
    shapes = {tuple(live[i].tensors["init"].shape) for i in running if not live[i].done}
    assert len(shapes) <= 1, f"trials of different image sizes in one batch: {shapes}"


def _setup_trial(lv: _Live, targets: dict, extractor: FeatureExtractor, device: torch.device, level: int) -> None:
    """One trial's images, start and targets at this level; trials with the same images and objective share targets."""
    s = lv.trial.settings
    lv.tensors = prepare(s, lv.trial.inputs, device, s.level_long_sides()[level])
    if lv.carry is not None:
        # coarse to fine: start from the previous level's result, upsampled
        size = lv.tensors["photo"].shape[-2:]
        lv.tensors["init"] = F.interpolate(lv.carry, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        lv.carry = None
    lv.level_evaluations, lv.scale = 0, None
    key = (s.content, s.style, s.style_blend, s.style_size, s.style_scale, s.crop, s.color, s.objective)
    weights = {k: torch.tensor([getattr(s, k)], device=device, dtype=torch.float32)  # [1]: this trial's
               for k in ("content_weight", "style_weight", "tv_weight")}
    if key not in targets:
        targets[key] = Loss(extractor, s.objective, content=lv.tensors["content"], style=lv.tensors["styles"],
                                 style_blend=s.style_blend, tv_on=s.tv_weight > 0, **weights)
    lv.shared = targets[key]
    lv.objective = targets[key].reweighted(tv_on=s.tv_weight > 0, **weights)


def _optimise(live: dict[int, _Live], running: list[int], device: torch.device, level: int, last: bool,
              evaluate: compiled.Evaluator) -> None:
    """One pyramid level (the only one, by default) of every running trial of the batch: ticks until
    every trial has finished the level."""
    who_runs = [live[i] for i in running]
    opt = _optimizer(who_runs, device, level)
    clock = _Clock(time.perf_counter())
    terms = _Terms(evaluate, device)
    while opt.running:
        interrupt.check()  # a Ctrl-C whose KeyboardInterrupt was swallowed stops the batch here
        _tick(opt, who_runs, device, level, clock, terms)
        if clock.first and device.type == "cuda":
            # cuDNN autotuning tries workspace-hungry algorithms in the first evaluation; the
            # steady-state peak (what a size or batch costs) is measured from here on.
            torch.cuda.reset_peak_memory_stats(device)
        clock.first = False
        clock.state_peak = max(clock.state_peak, opt.state_bytes())
        clock.history_peak = max(clock.history_peak, opt.history_bytes())
        finished = opt.finished()
        # every trial that finished this tick ends its level now: the one saved first does not count the
        # others' saving (metrics, image, animation) as its optimisation time
        end = time.perf_counter()
        for p, final, reason in finished:
            who_runs[p].summary["compile"] = evaluate.mode  # "off" after a failed compile
            if isinstance(opt, BatchAdam) and not last:
                who_runs[p].optimizer_state = opt.final_state(p)  # None unless the trial carries it
            _end_level(who_runs[p], final, reason, device, clock, last, end)


@dataclass
class _Clock:
    """A level's running figures: its start, whether the first tick is still to come, peak optimiser memory."""

    start: float
    first: bool = True
    state_peak: int = 0
    history_peak: int = 0


def _optimizer(who_runs: list[_Live], device: torch.device, level: int):
    """The batch's optimiser at this level, from every trial's settings and start image. The
    optimiser enforces each trial's evaluation budget at the level (`steps`, a hard budget)."""
    settings = [lv.trial.settings for lv in who_runs]
    budgets = [s.level_steps[level] for s in settings]
    x0 = torch.cat([lv.tensors["init"] for lv in who_runs]).clamp_(0, 1)  # [k,3,H,W]
    decay = [s.average_decay for s in settings]  # iterate averaging, restarted at every level
    if settings[0].optimizer.name == "lbfgs":
        # One torch.optim.LBFGS step() per trial and level with max_iter = max_eval = its budget (see nst.optimizers).
        return BatchLBFGS(x0, lr=[s.optimizer.lr for s in settings], max_iter=budgets, max_eval=budgets,
                          history_size=[s.optimizer.history_size for s in settings],
                          line_search=[s.optimizer.line_search for s in settings], budget=budgets,
                          small_on_host=lbfgs_products_on_host(device), average_decay=decay)
    # pyramid.carry_optimizer: each trial's moments from the coarser level, resized to this one
    size = (int(x0.shape[-2]), int(x0.shape[-1]))
    state = [lv.optimizer_state.resized(size) if lv.optimizer_state is not None else None for lv in who_runs]
    for lv in who_runs:
        lv.optimizer_state = None
    return BatchAdam(x0, lr=[s.optimizer.lr for s in settings], betas=[s.optimizer.betas for s in settings],
                     max_iter=budgets, average_decay=decay, state=state,
                     keep_state=[s.pyramid_carry_optimizer and level < s.pyramid_levels - 1 for s in settings])


def _tick(opt, who_runs: list[_Live], device: torch.device, level: int, clock: _Clock, terms: _Terms) -> None:
    """One evaluation of every point the optimiser asks for: the network runs once for all of them,
    each trial gets its own terms and gradient, one transfer brings every number to the host, the
    optimiser is told, the sinks get their records. A non-finite loss or a failing sink fails its
    own trial only."""
    asked = opt.ask()  # [(trial's position in the batch, its point [3,H,W])]
    who = [who_runs[p] for p, _ in asked]
    x, blocks, grads, scales = _evaluate(opt, asked, who, device, terms)
    measured = opt.measure(grads)  # what the optimiser's decisions need from the gradients, [k, c] or None
    values, scale_values, measures = _to_host(blocks, scales, measured)
    now = time.perf_counter() - clock.start
    totals = [v["total"] for v in values]
    failed: dict[int, tuple[BaseException, str | None]] = {}  # the error, its traceback (None: one line)
    for j, lv in enumerate(who):
        if lv.scale is None and math.isfinite(totals[j]):
            lv.scale = scale_values[j]
        if not math.isfinite(totals[j]):
            failed[j] = (NonFiniteLoss(f"the loss became {totals[j]} at evaluation {lv.evaluations + 1}; "
                                       "lower the loss weights or the learning rate"), None)
            # A failed trial leaves the batch with its error (before its optimiser sees a NaN); the others go on.
            opt.drop(asked[j][0], "failed")
    # rows of dropped trials are ignored; an evaluation the optimiser voids is not counted (nst.optimizers)
    void = set(opt.tell([t * sc for t, sc in zip(totals, scale_values, strict=True)], grads, measures))
    for j, lv in enumerate(who):
        if asked[j][0] in void:
            continue
        lv.evaluations += 1
        lv.level_evaluations += 1
        if j not in failed:
            # with iterate averaging, the frames show the average (what the trial will save)
            average = opt.average(asked[j][0])
            shown = x[j:j + 1].detach() if average is None else average.unsqueeze(0)
            record = StepRecord(lv.evaluations, now, values[j], lv.present(shown),
                                level if lv.trial.settings.pyramid_levels > 1 else None)
            error = _send(lv, record)
            if error is not None:
                failed[j] = error
                opt.drop(asked[j][0], "failed")
    for j, (e, tb) in failed.items():
        _fail(who[j], e, tb=tb)


class _Terms:
    """A tick's network evaluation and loss terms: the network once for every point, then the terms
    once per group of trials that share targets (`_Live.shared`) and whether they have a TV term, the
    group's rows as one [g] batch of
    its objective under the trials' own loss weights ([g] tensors, made from their settings when the
    set of trials changes, not per tick)."""

    def __init__(self, evaluate: Callable, device: torch.device):
        self.evaluate, self.device = evaluate, device
        self._plans: dict[tuple, tuple] = {}  # the tick's trials -> (groups, order of their rows)

    def __call__(self, who: list[_Live], x: torch.Tensor):
        """Returns [(term names, the trials' rows, [names, g] terms)] per group and the totals [k]."""
        feats = self.evaluate(x)
        groups, order = self._plan(who)
        blocks, totals = [], []
        for objective, rows, index in groups:
            if index is None:  # consecutive rows: views, no copy
                part = {name: f[rows[0]:rows[-1] + 1] for name, f in feats.items()}
                image = x[rows[0]:rows[-1] + 1]
            else:
                part = {name: f.index_select(0, index) for name, f in feats.items()}
                image = x.index_select(0, index)
            terms = objective.terms(part, image)
            names = list(terms)
            blocks.append((names, rows, torch.stack([terms[n].detach().float() for n in names])))  # [names, g]
            totals.append(terms["total"])
        loss = torch.cat(totals)  # [k], in the groups' order
        return blocks, loss if order is None else loss.index_select(0, order)

    def _plan(self, who: list[_Live]) -> tuple:
        key = tuple(id(lv) for lv in who)
        if key not in self._plans:
            # a trial without a TV term records tv = 0, as alone: it does not share a pass with one that has it
            by_target: dict[tuple, list[int]] = {}
            for j, lv in enumerate(who):
                by_target.setdefault((id(lv.shared), lv.trial.settings.tv_weight > 0), []).append(j)
            groups = []
            for rows in by_target.values():
                ss = [who[j].trial.settings for j in rows]
                weights = {k: torch.tensor([getattr(s, k) for s in ss], dtype=torch.float32, device=self.device)
                           for k in ("content_weight", "style_weight", "tv_weight")}  # [g] each
                shared = who[rows[0]].shared
                assert shared is not None  # set for every trial of a level before its ticks (see _Terms)
                objective = shared.reweighted(tv_on=any(s.tv_weight > 0 for s in ss), **weights)
                consecutive = rows == list(range(rows[0], rows[-1] + 1))
                index = None if consecutive else torch.tensor(rows, dtype=torch.long, device=self.device)
                groups.append((objective, rows, index))
            flat = [j for _, rows, _ in groups for j in rows]
            order = None if flat == list(range(len(who))) else \
                torch.tensor(sorted(range(len(flat)), key=flat.__getitem__), dtype=torch.long, device=self.device)
            self._plans[key] = (groups, order)
        return self._plans[key]


def _evaluate(opt, asked: list, who: list[_Live], device: torch.device, terms: _Terms):
    """Forward and backward of the asked points as one [k,3,H,W] batch. Returns the batch, the terms per
    group of trials (device tensors, see _Terms), the gradients and each trial's loss scale (device)."""
    with torch.no_grad():
        # Keep pixels valid. Projecting the point asked for, in place, means each loss and
        # gradient belong to the clamped image that is reported; an L-BFGS line-search point
        # is discarded afterwards, so the search stays consistent. (One call for the k points,
        # the same arithmetic as clamp_(0, 1) on each.)
        points = [p for _, p in asked]
        torch._foreach_clamp_min_(points, 0.0)
        torch._foreach_clamp_max_(points, 1.0)
    x = torch.stack([p for _, p in asked]).requires_grad_(True)  # [k,3,H,W]
    blocks, loss = terms(who, x)  # loss: [k]
    finite = torch.isfinite(loss.detach())
    # L-BFGS's strong-Wolfe search squares directional derivatives in float32; with large losses
    # (the paper's un-normalised sums, big weights) they overflow and the step turns NaN. L-BFGS
    # therefore minimises total / |total at the level's first evaluation|: a constant factor per
    # trial, so the same minimiser, with its arithmetic kept in range. It is not invisible to torch's
    # algorithm: its tolerances (tolerance_change on the loss change, tolerance_grad on max|g|) then
    # apply to the scaled loss, so they are relative to the level's first loss, and the first step,
    # lr * min(1, 1/sum|g|), is taken on the scaled gradient. Adam is left unscaled (it is
    # scale-invariant but for its epsilon). Records always carry the unscaled terms. A trial's first
    # scale is taken here on the device, so that nothing waits for the host before backward.
    known = _to_device([lv.scale if lv.scale is not None else math.nan for lv in who], device)  # [k]
    if isinstance(opt, BatchLBFGS):
        first_scale = torch.where(loss.detach() != 0, 1 / loss.detach().abs(), 1.0)
    else:
        first_scale = torch.ones_like(known)
    scales = torch.where(torch.isnan(known), first_scale, known)
    # Trials are independent images, so the gradient of the weighted sum is each trial's own
    # gradient (times its scale); a non-finite trial is left out (weight 0), its row is not used.
    (torch.where(finite, loss, 0.0) * torch.where(finite, scales, 0.0)).sum().backward()
    return x, blocks, x.grad, scales


def _to_host(blocks: list[tuple], scales: torch.Tensor, measured: torch.Tensor | None):
    """The tick's one host transfer (the runner's only synchronisation per tick): every term of every
    trial, their loss scales and the optimiser's measures. Returns them as Python floats."""
    parts = [block.reshape(-1) for _, _, block in blocks]
    parts.append(scales.detach().float())
    if measured is not None:
        parts.append(measured.float().reshape(-1))
    flat, at = torch.cat(parts).tolist(), 0  # host synchronisation: the tick's one
    k = scales.shape[0]
    values: list[dict[str, float]] = [{} for _ in range(k)]
    for names, rows, _ in blocks:
        g = len(rows)
        for r, j in enumerate(rows):
            values[j] = {n: flat[at + a * g + r] for a, n in enumerate(names)}
        at += len(names) * g
    scale_values, at = flat[at:at + k], at + k
    measures = None
    if measured is not None:
        c = measured.shape[1]
        measures = [flat[at + j * c: at + (j + 1) * c] for j in range(k)]
    return values, scale_values, measures


def _send(lv: _Live, record: StepRecord) -> tuple[BaseException, str] | None:
    """Hand a step record to the trial's sinks; a sink's error is returned with its traceback (it
    fails this trial only)."""
    try:
        for sink in lv.sinks:
            sink.on_step(record)
    except Exception as e:  # noqa: BLE001 - a failing sink fails its own trial only
        return e, traceback.format_exc()
    return None


def _end_level(lv: _Live, final: torch.Tensor, reason: str, device: torch.device, clock: _Clock, last: bool,
               end: float) -> None:
    """A trial finished this level at `end` (time.perf_counter()): record it, then complete the trial (last level)
    or carry its image to the next."""
    if lv.done:
        return
    final = final.detach().reshape(lv.tensors["init"].shape).clamp(0, 1)  # [1,3,H,W]
    level = {"size": list(final.shape[-1:-3:-1]), "evaluations": lv.level_evaluations, "stop_reason": reason}
    s = lv.trial.settings
    if s.pyramid_carry_optimizer:
        # what the level started from: L-BFGS's history (pairs of vectors of the old size) cannot be resized
        first = not lv.summary.get("levels")
        level["optimizer_state"] = ("fresh" if first else "carried") if s.optimizer.name == "adam" else \
            "fresh: L-BFGS restarts at every level"
    lv.summary.setdefault("levels", []).append(level)
    lv.summary["optimizer_state_mb"] = max(lv.summary.get("optimizer_state_mb", 0), round(clock.state_peak / 2**20, 3))
    lv.summary["optimizer_history_mb"] = max(lv.summary.get("optimizer_history_mb", 0), round(clock.history_peak / 2**20, 3))
    lv.summary["optimisation_time"] = round(lv.summary.get("optimisation_time", 0) + end - clock.start, 3)
    if last:
        _complete(lv, final, reason, device)
    else:
        lv.carry = final


def _to_device(values: list[float], device: torch.device) -> torch.Tensor:
    """A float32 vector from the host, without waiting: a plain host-to-GPU copy synchronises the stream."""
    t = torch.tensor(values, dtype=torch.float32)
    if device.type == "cpu":
        return t
    if device.type != "cuda":
        return t.to(device)  # mps: pinned memory is CUDA's
    return t.pin_memory().to(device, non_blocking=True)


def _complete(lv: _Live, final: torch.Tensor, reason: str, device: torch.device,
              final_terms: dict[str, float] | None = None) -> None:
    """Save the finished trial's image, metrics and summary; close its sinks. `final_terms`: the terms
    of another engine's last step (nst.methods); by default the objective's of the final image."""
    out = lv.out  # this attempt's folder (nst.records.begin_attempt)
    assert out is not None and lv.tensors  # a level was started
    try:
        if final_terms is None:
            assert lv.objective is not None
            with torch.no_grad():
                # The terms of the image actually optimised (the last evaluation may precede a final step).
                # host synchronisation: once per trial, at its end (and the metrics below)
                final_terms = {k: float(v[0]) for k, v in lv.objective(final).items()}
        final = lv.present(final)
        s = lv.trial.settings
        lv.summary["image_size"] = list(final.shape[-1:-3:-1])  # [W, H]
        lv.summary["metrics"] = standard_metrics(final, lv.tensors["photo"], lv.tensors["plain_styles"], s.style_blend)
        # every frame and row written (nst.sinks.FileSink writes in the background): a failed write fails the
        # trial before its final image, and the animation is made of every frame
        _flush_sinks(lv)
        images.save_atomic(images.to_pil(final), out / "final.png")
        images.save_animation(out / "frames", out / "animation.gif")
        opt_time = lv.summary["optimisation_time"]
        lv.summary.update(status="completed", final=final_terms, evaluations=lv.evaluations, stop_reason=reason,
                          optimisation_time=round(opt_time, 3),
                          evals_per_second=round(lv.evaluations / opt_time, 3) if opt_time > 0 else None)
    except Exception as e:  # noqa: BLE001 - finishing one trial must not stop the others
        _fail(lv, e)
        return
    _finish(lv, device)


class OutOfMemoryAlone(RuntimeError):
    pass


class NonFiniteLoss(FloatingPointError):
    pass


_ONE_LINE = (InputError, NonFiniteLoss, OutOfMemoryAlone, records.WriteError)  # their message says it all: no traceback


def _one_line(e: BaseException, where: Path) -> str | None:
    """The error as the one line that says it all, or None (a traceback goes to error.log)."""
    if isinstance(e, _ONE_LINE):
        return str(e)
    if isinstance(e, OSError) and records.disk_error(e):  # a full disk outside its own files (W&B, a temp folder)
        code = e.errno or 0  # disk_error: one of ENOSPC, EDQUOT, EFBIG
        return str(records.WriteError(code, e.strerror or os.strerror(code), e.filename or str(where)))
    return None


def _fail(lv: _Live, e: BaseException, tb: str | None = None) -> None:
    """The trial failed with `e` (its traceback `tb`, or the one being handled): record it and end it."""
    one_line = _one_line(e, lv.out or lv.trial.run_dir)
    lv.summary.update(status="failed", error=one_line if one_line is not None else f"{type(e).__name__}: {e}")
    if isinstance(e, KeyboardInterrupt):
        lv.summary["status"] = "interrupted"
    elif one_line is None:
        try:
            records.write_bytes_atomic((lv.out or lv.trial.run_dir) / "error.log",
                                       (tb or traceback.format_exc()).encode("utf-8"))
        except OSError:
            pass  # no room for the traceback: the one-line error still goes into summary.json
    _finish(lv, None)


def _finish(lv: _Live, device: torch.device | None) -> None:
    """End the trial's attempt. Completed or failed: its files replace the earlier attempt's as a unit
    and its summary.json is written last. Interrupted: no summary.json (it is re-run on resume), and an
    earlier attempt's files stay as they were. A file that cannot be written (a full disk) fails the
    trial with one line; what cannot be recorded is said in the error the command prints."""
    lv.done = True
    lv.summary["wall_time"] = round(time.perf_counter() - lv.t0, 3)
    lv.summary["finished_at"] = _now()
    lv.summary["finished_unix"] = time.time()  # tells a later command's resume what it did not run itself
    if lv.summary.get("device"):
        mb, kind = peak_memory(torch.device(lv.summary["device"]))
        lv.summary["peak_memory_mb"], lv.summary["peak_memory_kind"] = round(mb, 1), kind
    run_dir, out = lv.trial.run_dir, lv.out or lv.trial.run_dir
    if lv.summary["status"] == "interrupted":
        _close_sinks(lv, lv.summary)
        if out != run_dir:
            records.discard_attempt(run_dir)
        return
    stop: BaseException | None = None
    try:
        _flush_sinks(lv)  # nothing is still being written into the folder that moves
    except Exception as e:  # noqa: BLE001 - a failed trial's own error stands (a completed one flushed in _complete)
        lv.summary.setdefault("sink_errors", []).append(f"{type(e).__name__}: {e}")
    except BaseException as e:  # noqa: BLE001 - Ctrl-C while waiting: the trial's end is recorded, then it stops
        stop = e
    try:
        # before the sinks close: they may read the trial's files (W&B logs final.png)
        records.promote_attempt(run_dir, out)
    except OSError as e:
        _not_recorded(lv, e)
    _close_sinks(lv, lv.summary)
    try:
        write_summary(run_dir / "summary.json", Summary.from_dict(lv.summary))
    except OSError as e:
        _not_recorded(lv, e)
    if stop is not None:
        raise stop


def _not_recorded(lv: _Live, e: OSError) -> None:
    """A completed trial whose files cannot be recorded failed; a failed one says its error was not recorded."""
    if lv.summary.get("status") == "completed":
        lv.summary.update(status="failed", error=str(e))
    else:
        lv.summary["error"] = f"{lv.summary.get('error', 'unknown error')} (not recorded: {e})"


def _flush_sinks(lv: _Live) -> None:
    """Wait for what the trial's sinks write in the background (nst.sinks.FileSink); raise the first failure."""
    for sink in lv.sinks:
        flush = getattr(sink, "flush", None)
        if flush is not None:
            flush()


def _close_sinks(lv: _Live, summary: dict) -> None:
    for sink in lv.sinks:
        try:
            sink.close(summary)
        except Exception as e:  # noqa: BLE001 - a broken sink must not hide the trial's result
            lv.summary.setdefault("sink_errors", []).append(f"{type(sink).__name__}: {e}")
    lv.sinks = []


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _memory_of(device: torch.device) -> tuple[str, int]:
    """The device's name and its memory in bytes."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if device.type == "mps":
        # unified memory: Metal's recommended working set is what the GPU may use (older torch: all of it)
        try:
            return f"Apple MPS ({cpu_model()})", torch.mps.recommended_max_memory()
        except (AttributeError, RuntimeError):
            return f"Apple MPS ({cpu_model()})", physical
    return cpu_model(), physical


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
