"""How long a command will take on this device, said in one line before it starts when that is long.

The work is counted, not guessed: each trial's evaluations at each pyramid level times one
evaluation's FLOPs there (nst.features.evaluation_flops, the same count a `budget` uses). The
device's rate is measured on the spot by a short probe (the trial's own network, three evaluations
at 128 px on a CPU), and only when the command could be long: a bound on what the device can do at
best says first whether the probe is worth it, so a short run pays nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

LONG_S = 300.0  # commands estimated to take longer than this get the line
CPU_SIZED = {"size": 256, "steps": 150}  # the alternative the line offers
# The probe's long side (or the trial's, if smaller). On a 2-core CPU the rate at 128 px was within
# the noise of the rate at 192-384 px (19-22 GFLOP/s under load), at a quarter of 256 px's time; a
# GPU needs larger images to be busy.
PROBE_SIDE = {"cpu": 128, "mps": 384, "cuda": 512}
# What a run does beyond the probe's convolutions, from the time split of whole runs on a 2-core CPU
# (summary.json's wall_time against optimisation_time, 128-512 px): per evaluation the losses, Gram
# matrices, optimiser and files, a factor of 0.93-1.19 on the convolutions' time; per trial its
# targets, final metrics and animation, 4.6-7 full-size evaluations; per command the start-up.
OVERHEAD = 1.05
PER_TRIAL_EVALUATIONS = 6
START_S = 4.0
# Upper bounds on what a device does at best (FLOP/s): above any real rate of these kinds, so that a
# command under LONG_S at this rate is under it for certain, and needs no probe.
BEST_RATE = {"cpu": 2.5e11, "mps": 5e13, "cuda": 2e15}  # cpu: per core


def trial_flops(s) -> float:
    """Every evaluation's FLOPs over every pyramid level of one trial."""
    from nst import features

    names = features.layer_names(s.arch)
    deepest = max((*s.objective.content_layers, *s.objective.style_layers), key=names.index)
    levels = zip(s.level_steps, s.level_sizes(), strict=True)
    return float(sum(n * features.evaluation_flops(s.arch, deepest, w, h) for n, (w, h) in levels))


def work_flops(s, style_size: tuple[int, int] | None = None) -> float:
    """The whole trial's arithmetic, the network's and the losses': what "equal cost" compares between
    engines (benchmarks/quality.py). engine=gatys: each level's evaluations, each the network's
    (nst.features.evaluation_flops) plus the style terms' (nst.loss.evaluation_flops: Gram matrices,
    or w2's moments and matrix square roots); strotss: nst.strotss.run_flops (its REMD, moment,
    palette and self-similarity losses on the sampled hypercolumns); nnst: nst.nnst.nnst_flops (its
    nearest-neighbour searches). `style_size` (width, height) is the style image as the nnst engine
    takes it; None: the output's size."""
    from nst import features, loss, nnst, strotss

    w, h = s.image_size
    if s.engine == "strotss":
        return float(strotss.run_flops(s.method.schedule(s.long_side, s.steps), h, w, s.arch))
    if s.engine == "nnst":
        sw, sh = style_size or (w, h)
        return float(sum(nnst.nnst_flops(s.method.params((w, h), s.steps, 1.0), h, w, sh, sw).values()))
    names = features.layer_names(s.arch)
    deepest = max((*s.objective.content_layers, *s.objective.style_layers), key=names.index)
    return float(sum(n * (features.evaluation_flops(s.arch, deepest, lw, lh) + loss.evaluation_flops(s.objective, s.arch, lw, lh))
                     for n, (lw, lh) in zip(s.level_steps, s.level_sizes(), strict=True)))


def cpu_sized(s):
    """The trial at the CPU-sized alternative's size and budget (each level's evaluations scaled alike)."""
    factor = CPU_SIZED["steps"] / s.steps
    return replace(s, config=replace(s.config, size=min(s.size, CPU_SIZED["size"])), steps=CPU_SIZED["steps"],
                   pyramid_steps=tuple(max(1, round(n * factor)) for n in s.pyramid_steps))


def seconds(settings: list, rate: float) -> float:
    return START_S + sum((_counted_flops(s) + PER_TRIAL_EVALUATIONS * _full_size_flops(s)) / rate for s in settings)


def _work(s) -> float:
    """The trial's FLOPs as the estimate counts them: the network's, and the losses' where they are
    heavier than Gram matrices (w2's square roots, STROTSS's transport costs, NNST's searches:
    work_flops), which OVERHEAD does not cover."""
    if s.engine == "gatys" and s.objective.style_form != "w2":
        return trial_flops(s)
    return max(trial_flops(s), work_flops(s))


def _counted_flops(s) -> float:
    """What a trial's evaluations cost at the probe's rate (the network's): the network's FLOPs times
    OVERHEAD (measured on Gram recipes: their losses, optimiser and files), and heavier losses' work
    on top at the same rate."""
    network = trial_flops(s)
    return network * OVERHEAD + (_work(s) - network)


def _full_size_flops(s) -> float:
    from nst import features

    names = features.layer_names(s.arch)
    deepest = max((*s.objective.content_layers, *s.objective.style_layers), key=names.index)
    return float(features.evaluation_flops(s.arch, deepest, *s.image_size))


def best_rate(device_type: str) -> float:
    if device_type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return BEST_RATE["cpu"] * cores
    return BEST_RATE.get(device_type, BEST_RATE["cuda"])


def measure_rate(s, evaluations: int = 2) -> float:
    """FLOP/s of the trial's network on its device: one evaluation to warm up, then the fastest of
    `evaluations` timed ones (forward to the deepest layer and backward to the image)."""
    import torch

    from nst import features
    from nst.device import (
        channels_last,
        cpu_threads,
        keep_freed_memory,
        resolve_device,
        resolve_precision,
        set_precision,
        torch_settings,
    )
    device = resolve_device(s.device)
    precision = resolve_precision(s.precision, device)
    layers = list(dict.fromkeys((*s.objective.content_layers, *s.objective.style_layers)))
    names = features.layer_names(s.arch)
    deepest = max(layers, key=names.index)
    w, h = s.size_at(min(s.long_side, PROBE_SIDE.get(device.type, 512)))
    with torch_settings():
        set_precision(precision, device)
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads())  # as the run will (nst.engine)
            keep_freed_memory()
        net = features.FeatureExtractor(s.arch, features.get_weights_spec(s.arch, s.weights), layers, s.pooling, device,
                                        precision, channels_last=channels_last(device, precision))
        x = torch.rand(1, 3, h, w, device=device, requires_grad=True)
        times = []
        for _ in range(1 + evaluations):
            start = time.perf_counter()
            loss = sum(f.float().square().mean() for f in net(x).values())
            (grad,) = torch.autograd.grad(loss, x)
            float(grad[0, 0, 0, 0])  # waits for the device
            times.append(time.perf_counter() - start)
    return features.evaluation_flops(s.arch, deepest, w, h) / min(times[1:])


def _duration(s: float) -> str:
    if s < 90:
        return f"{max(1, round(s))} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    return f"{s / 3600:.1f} h"


def line(settings: list, runs_here: bool = True) -> str | None:
    """The line to print before a command whose trials are `settings`, or None (short, or elsewhere)."""
    if not settings or not runs_here:
        return None
    from nst.device import resolve_device

    first = settings[0]
    device = resolve_device(first.device)
    flops = sum(_work(s) for s in settings)
    if seconds(settings, best_rate(device.type)) <= LONG_S:
        return None  # short for certain: no probe
    try:
        rate = measure_rate(first)
    except Exception:  # noqa: BLE001 - an estimate must never stop a command (say, weights not at hand)
        return None
    total = seconds(settings, rate)
    if total <= LONG_S:
        return None
    where = "this CPU" if device.type == "cpu" else f"this GPU ({device})" if device.type == "cuda" else f"this device ({device})"
    evals = sum(s.total_steps for s in settings)
    sizes = sorted({"x".join(map(str, s.image_size)) for s in settings})
    what = (f"{len(settings)} trial(s), {evals} evaluations in all, at {', '.join(sizes[:3])}{' ...' if len(sizes) > 3 else ''}"
            if len(settings) > 1 else f"{evals} evaluations at {sizes[0]}")
    text = (f"nst: this will take about {_duration(total)} on {where} ({what}: {flops / 1e12:.3g} TFLOP at "
            f"{rate / 1e9:.3g} GFLOP/s, measured just now)")
    if any(s.size > CPU_SIZED["size"] or s.steps > CPU_SIZED["steps"] for s in settings):
        small = seconds([cpu_sized(s) for s in settings], rate)
        text += (f"; a CPU-sized {'sweep' if len(settings) > 1 else 'run'}: size={CPU_SIZED['size']} "
                 f"steps={CPU_SIZED['steps']}, about {_duration(small)}")
    return text
