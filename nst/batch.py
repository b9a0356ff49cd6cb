"""The runner: compatible trials share each forward/backward pass, each keeping its own optimiser.

Every run goes through here: a single run is a batch of one. Trials are grouped by what one pass
must share (`group_key`); inside a batch they may differ in everything else: loss weights, layer
sets and their weights, loss forms, content/style images and their targets, init image, noise and
seed, optimiser hyper-parameters and evaluation budget. Each tick, the optimisers of the running
trials say where they want the loss and gradient (`nst.batch_opt`: reverse communication), the
points are stacked into one [k,3,H,W] tensor, the network runs once to the deepest layer any trial
needs, and every trial gets its own loss terms and gradient. A trial that converges, spends its
budget or fails leaves the batch, and the batch shrinks.

Out of GPU memory, a batch is split in two and both halves run again from the start; a trial that
cannot run even alone fails with one line saying what to lower. Never a silent fall-back to the CPU.
"""

from __future__ import annotations

import math
import os
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from nst import images
from nst.batch_opt import BatchAdam, BatchLBFGS
from nst.errors import InputError
from nst.features import FeatureExtractor, get_weights_spec, layer_names, layer_table
from nst.metrics import standard_metrics
from nst.objective import Objective
from nst.optimize import NonFiniteLoss, StepRecord
from nst.settings import Settings
from nst.trial import peak_memory, prepare, resolve_device, set_determinism, write_json_atomic

CPU_MAX_BATCH = 8  # max_batch=auto on the CPU: batching there saves per-pass overhead, not parallelism


@dataclass
class Trial:
    settings: Settings
    inputs: dict  # PIL images, from settings.load_inputs
    run_dir: Path
    # The trial's sinks (files, progress bar, W&B), opened at the start of each attempt: an attempt
    # that ran out of memory closes them, and its retry opens fresh ones. Called with the trial's
    # position in its batch (the progress bar's line).
    open_sinks: Callable[[int], list]
    record: dict = field(default_factory=dict)  # merged into summary.json (config, overrides, label)


def image_size(s: Settings) -> tuple[int, int]:
    """(W, H) of the trial's images, from the content file's header (nothing decoded)."""
    return images.target_size(*images.oriented_size("content", s.content), s.long_side)


def group_key(s: Settings) -> tuple:
    """What the trials of one batch must share: one network, one image shape, one device, one optimiser kind."""
    return (s.arch, s.weights, s.pooling, image_size(s), s.device, s.deterministic, s.optimizer.name)


def auto_batch_size(settings: list[Settings]) -> int:
    """max_batch=auto: on the CPU a small fixed number; on a GPU what its free memory holds."""
    s = settings[0]
    device = resolve_device(s.device)
    if device.type != "cuda":
        return CPU_MAX_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    per_trial = max(trial_bytes(x) for x in settings)
    return max(1, min(64, int(0.8 * free) // per_trial))


def trial_bytes(s: Settings) -> int:
    """Rough GPU memory one trial of a batch costs: activations kept for backward, plus optimiser state."""
    w, h = image_size(s)
    n = 3 * w * h
    layers = list(s.objective.content_layers + s.objective.style_layers)
    deepest = max(layer_names(s.arch).index(name) for name in layers)
    acts, scale = 0, 1
    for name, kind, ch in layer_table(s.arch)[: deepest + 1]:
        if kind == "pool":
            scale *= 2
        acts += ch * (w // scale) * (h // scale)
    # x2 for the gradients flowing back through them, x1.5 for the allocator's slack
    activations = int(4 * acts * 2 * 1.5)
    if s.optimizer.name == "lbfgs":
        state = (2 * s.optimizer.history_size + 8) * n * 4  # (s, y) pairs plus d, g, line-search points
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
            for i, summary in zip(chunk, run_batch([trials[i] for i in chunk])):
                summaries[i] = summary
    return summaries  # type: ignore[return-value]


def run_batch(trials: list[Trial]) -> list[dict]:
    """Run compatible trials as one batch (see group_key); returns their summaries in order."""
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
        w, h = image_size(trials[i].settings)
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
    objective: Objective | None = None
    tensors: dict | None = None
    evaluations: int = 0
    scale: float | None = None  # L-BFGS: 1/|total at the first evaluation| (see _scales)
    done: bool = False


def _attempt(trials: list[Trial], idxs: list[int], summaries: list, batch_id: str, fail_with: str | None = None):
    """One try at running trials[idxs] together. Returns (trials to retry after running out of GPU
    memory, the error), or ([], None) when every trial has its summary."""
    live: dict[int, _Live] = {}
    for pos, i in enumerate(idxs):
        t = trials[i]
        t.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("error.log", "animation.gif"):  # left by an earlier attempt of this trial (resume, retry)
            (t.run_dir / stale).unlink(missing_ok=True)
        summary = {"status": "running", "started_at": _now(), **t.record,
                   "batch": {"id": batch_id, "size": len(idxs), "position": pos}}
        lv = _Live(t, summary, [], time.perf_counter())
        live[i] = lv
        try:
            lv.sinks = t.open_sinks(pos)
        except Exception as e:  # noqa: BLE001 - a trial whose sinks cannot open fails alone
            _fail(lv, e)
    if fail_with:
        for lv in live.values():
            if not lv.done:
                _fail(lv, OutOfMemoryAlone(fail_with))
    device = None
    try:
        running = [i for i in idxs if not live[i].done]
        if not running:
            return [], None
        device = _setup(live, running)
        _optimise(live, running, device)
    except torch.OutOfMemoryError as e:
        unfinished = [i for i in idxs if not live[i].done]
        for i in unfinished:
            _close_sinks(live[i], {**live[i].summary, "status": "retried"})
        if device is not None:
            torch.cuda.empty_cache()
        return unfinished, str(e).splitlines()[0]
    except BaseException as e:  # noqa: BLE001 - every unfinished trial records the failure, Ctrl-C included
        for i in idxs:
            if not live[i].done:
                _fail(live[i], e)
        if isinstance(e, KeyboardInterrupt):
            raise
    finally:
        for i in idxs:
            summaries[i] = live[i].summary
        if device is not None and device.type == "cuda":
            torch.cuda.empty_cache()  # hand this batch's blocks to the next one
    return [], None


def _setup(live: dict[int, _Live], running: list[int]) -> torch.device:
    """Device, one extractor to the deepest layer any trial needs, and each trial's targets."""
    s0 = live[running[0]].trial.settings
    device = resolve_device(s0.device)
    set_determinism(s0.deterministic, device)
    torch.manual_seed(s0.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    layers: list[str] = []
    for i in running:
        s = live[i].trial.settings
        layers += list(s.objective.content_layers + s.objective.style_layers)
    spec = get_weights_spec(s0.arch, s0.weights)
    extractor = FeatureExtractor(s0.arch, spec, list(dict.fromkeys(layers)), s0.pooling, device)
    targets: dict[tuple, Objective] = {}
    for i in running:
        lv, s = live[i], live[i].trial.settings
        lv.summary["device"] = str(device)
        lv.summary["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
        lv.tensors = prepare(s, lv.trial.inputs, device)
        lv.summary["image_size"] = list(lv.tensors["content"].shape[-1:-3:-1])  # [W, H]
        # Trials with the same images and objective share their targets (computed once).
        key = (s.content, s.style, s.style_size, s.objective)
        weights = {k: torch.tensor([getattr(s, k)], device=device, dtype=torch.float32)  # [1]: this trial's
                   for k in ("content_weight", "style_weight", "tv_weight")}
        if key not in targets:
            targets[key] = Objective(extractor, s.objective, content=lv.tensors["content"], style=lv.tensors.get("style"), **weights)
        lv.objective = targets[key].reweighted(**weights)
    shapes = {tuple(live[i].tensors["init"].shape) for i in running}
    assert len(shapes) == 1, f"trials of different image sizes in one batch: {shapes}"
    return device


def _optimise(live: dict[int, _Live], running: list[int], device: torch.device) -> None:
    settings = [live[i].trial.settings for i in running]
    x0 = torch.cat([live[i].tensors["init"] for i in running]).clamp_(0, 1)  # [k,3,H,W]
    kind = settings[0].optimizer.name
    if kind == "lbfgs":
        # One torch.optim.LBFGS step() per trial with max_iter = max_eval = steps (see nst.batch_opt).
        opt = BatchLBFGS(x0, lr=[s.optimizer.lr for s in settings], max_iter=[s.steps for s in settings],
                         max_eval=[s.steps for s in settings], history_size=[s.optimizer.history_size for s in settings],
                         line_search=[s.optimizer.line_search for s in settings])
    else:
        opt = BatchAdam(x0, lr=[s.optimizer.lr for s in settings], betas=[s.optimizer.betas for s in settings],
                        max_iter=[s.steps for s in settings])
    extractor = live[running[0]].objective.extractor
    state_peak = 0
    start = time.perf_counter()
    first = True
    while opt.running:
        asked = opt.ask()  # [(trial's position in `running`, its point [3,H,W])]
        who = [live[running[p]] for p, _ in asked]
        with torch.no_grad():
            for _, x in asked:
                # Keep pixels valid. Projecting the point asked for, in place, means each loss and
                # gradient belong to the clamped image that is reported; an L-BFGS line-search point
                # is discarded afterwards, so the search stays consistent.
                x.clamp_(0, 1)
        x = torch.stack([p for _, p in asked]).requires_grad_(True)  # [k,3,H,W]
        feats = extractor(x)
        terms = [lv.objective.terms({name: f[j:j + 1] for name, f in feats.items()}, x[j:j + 1]) for j, lv in enumerate(who)]
        names = [list(t) for t in terms]
        # One host transfer per tick for every term of every trial (the optimisers need the totals anyway).
        flat = torch.cat([torch.stack([t[n].detach().float().reshape(()) for n in ns]) for t, ns in zip(terms, names)])
        values, at = flat.tolist(), 0
        per_trial: list[dict[str, float]] = []
        for ns in names:
            per_trial.append(dict(zip(ns, values[at:at + len(ns)])))
            at += len(ns)
        totals = [v["total"] for v in per_trial]
        finite = [math.isfinite(v) for v in totals]
        scales = _scales(who, totals, kind)
        if any(finite):
            weights = torch.tensor([sc if ok else 0.0 for sc, ok in zip(scales, finite)], device=device)
            loss = torch.stack([t["total"].reshape(()) for t in terms])  # [k]
            # Trials are independent images, so the gradient of the weighted sum is each trial's own
            # gradient (times its scale); a non-finite trial is left out, its row stays zero.
            (torch.where(torch.tensor(finite, device=device), loss, 0.0) * weights).sum().backward()
        grads = x.grad if x.grad is not None else torch.zeros_like(x)
        now = time.perf_counter() - start
        failed: dict[int, BaseException] = {}
        for j, lv in enumerate(who):
            lv.evaluations += 1
            if not finite[j]:
                failed[j] = NonFiniteLoss(f"the loss became {totals[j]} at evaluation {lv.evaluations}; "
                                          "lower the loss weights or the learning rate")
                continue
            rec = StepRecord(lv.evaluations, now, per_trial[j], x[j:j + 1].detach())
            try:
                for sink in lv.sinks:
                    sink.on_step(rec)
            except Exception as e:  # noqa: BLE001 - a failing sink fails its own trial only
                failed[j] = e
                (lv.trial.run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
        if first and device.type == "cuda":
            # cuDNN autotuning tries workspace-hungry algorithms in the first evaluation; the
            # steady-state peak (what a size or batch costs) is measured from here on.
            torch.cuda.reset_peak_memory_stats(device)
            first = False
        for j, e in failed.items():
            # A failed trial leaves the batch with its error (before its optimiser sees a NaN); the others go on.
            opt.drop(asked[j][0], "failed")
            _fail(who[j], e, traceback_too=False)
        opt.tell([t * sc for t, sc in zip(totals, scales)], grads)  # rows of dropped trials are ignored
        for j, lv in enumerate(who):
            if lv.evaluations >= lv.trial.settings.steps and asked[j][0] in opt.running:
                # torch's line search may evaluate once past max_eval; `steps` is a hard budget here,
                # and the trial keeps its last accepted iterate.
                opt.drop(asked[j][0], "evaluation budget")
        state_peak = max(state_peak, opt.state_bytes())
        for p, final, reason in opt.finished():
            lv = live[running[p]]
            if not lv.done:
                lv.summary["optimizer_state_mb"] = round(state_peak / 2**20, 1)  # the whole batch's, at its peak
                _complete(lv, final, reason, time.perf_counter() - start, device)


def _scales(who: list[_Live], totals: list[float], kind: str) -> list[float]:
    # L-BFGS's strong-Wolfe search squares directional derivatives in float32; with large losses
    # (the paper's un-normalised sums, big weights) they overflow and the step turns NaN. L-BFGS
    # therefore minimises total / |total at the first evaluation|: a constant factor per trial, so
    # the same minimiser, with its arithmetic kept in range. Adam is left unscaled (it is
    # scale-invariant but for its epsilon). Records always carry the unscaled terms.
    out = []
    for lv, total in zip(who, totals):
        if lv.scale is None and math.isfinite(total):
            lv.scale = 1.0 / abs(total) if (kind == "lbfgs" and total != 0) else 1.0
        out.append(lv.scale if lv.scale is not None else 1.0)
    return out


def _complete(lv: _Live, final: torch.Tensor, reason: str, opt_time: float, device: torch.device) -> None:
    """Save the finished trial's image, metrics and summary; close its sinks."""
    run_dir = lv.trial.run_dir
    try:
        final = final.detach().reshape(lv.tensors["init"].shape).clamp(0, 1)  # [1,3,H,W]
        with torch.no_grad():
            # The terms of the image actually saved (the last evaluation may precede a final step).
            final_terms = {k: float(v[0]) for k, v in lv.objective(final).items()}
        lv.summary["metrics"] = standard_metrics(final, lv.tensors["content"], lv.tensors.get("style"))
        images.save_atomic(images.to_pil(final), run_dir / "final.png")
        images.save_animation(run_dir / "frames", run_dir / "animation.gif")
        lv.summary.update(status="completed", final=final_terms, evaluations=lv.evaluations, stop_reason=reason,
                          optimisation_time=round(opt_time, 3),
                          evals_per_second=round(lv.evaluations / opt_time, 3) if opt_time > 0 else None)
    except Exception as e:  # noqa: BLE001 - finishing one trial must not stop the others
        _fail(lv, e)
        return
    _finish(lv, device)


class OutOfMemoryAlone(RuntimeError):
    pass


_ONE_LINE = (InputError, NonFiniteLoss, OutOfMemoryAlone)  # errors whose message says it all: no traceback


def _fail(lv: _Live, e: BaseException, traceback_too: bool = True) -> None:
    lv.summary.update(status="failed", error=str(e) if isinstance(e, _ONE_LINE) else f"{type(e).__name__}: {e}")
    if traceback_too and not isinstance(e, (*_ONE_LINE, KeyboardInterrupt)):
        (lv.trial.run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
    if isinstance(e, KeyboardInterrupt):
        lv.summary["status"] = "interrupted"
    _finish(lv, None)


def _finish(lv: _Live, device: torch.device | None) -> None:
    lv.done = True
    lv.summary["wall_time"] = round(time.perf_counter() - lv.t0, 3)
    lv.summary["finished_at"] = _now()
    lv.summary["finished_unix"] = time.time()  # tells a later command's resume what it did not run itself
    if lv.summary.get("device"):
        mb, kind = peak_memory(torch.device(lv.summary["device"]))
        lv.summary["peak_memory_mb"], lv.summary["peak_memory_kind"] = round(mb, 1), kind
    _close_sinks(lv, lv.summary)
    if lv.summary["status"] != "interrupted":  # an interrupted trial leaves no summary: it is re-run on resume
        write_json_atomic(lv.trial.run_dir / "summary.json", lv.summary)


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
    if device.type == "cuda":
        return torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory
    return _cpu_name(), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cpu_name() -> str:
    import platform

    return platform.processor() or "cpu"
