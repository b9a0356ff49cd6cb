"""One style transfer, from validated settings to a run folder. No Hydra here."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

from nst import images
from nst.errors import InputError
from nst.features import FeatureExtractor, get_weights_spec
from nst.metrics import standard_metrics
from nst.objective import Objective
from nst.optimize import optimise
from nst.settings import Settings


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError("device", f"'{name}' asked for, but no CUDA device is available here; use device=cpu or device=auto")
    index = int(name[5:]) if name.startswith("cuda:") else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise InputError("device", f"'{name}' does not exist: {torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def prepare(s: Settings, inputs: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """Resize the inputs and build the initial image: tensors [1,3,H,W] in [0,1] on `device`."""
    content_img = inputs["content"]
    w, h = images.target_size(*content_img.size, s.long_side)
    out = {"content": images.to_tensor(images.resize(content_img, (w, h)), device)}
    if "style" in inputs:
        style_img = inputs["style"]
        # Most implementations stretch the style image to the content's size; keep_aspect instead
        # keeps its proportions at the same pixel count (so Gram statistics cover the same area).
        style_wh = (w, h) if s.style_size == "match" else images.size_at_pixel_count(*style_img.size, w * h)
        out["style"] = images.to_tensor(images.resize(style_img, style_wh), device)
    # Noise is drawn on the CPU from a seeded generator, so the same seed gives the same start on any device.
    gen = torch.Generator().manual_seed(s.seed)
    noise = torch.rand((1, 3, h, w), generator=gen).to(device)  # white noise, uniform in [0,1]
    if s.init == "noise":
        init = noise
    else:
        base = out["content"] if s.init != "image" else images.to_tensor(images.resize(inputs["init"], (w, h)), device)
        r = s.noise_ratio if s.init in ("content_noise", "image") else 0.0
        init = (1 - r) * base + r * noise
    out["init"] = init
    return out


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # ru_maxrss is the process's high-water mark (KiB on Linux): in a multirun it covers earlier trials too.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def run_trial(s: Settings, inputs: dict, run_dir: Path, *, sinks: list, record: dict | None = None) -> dict:
    """Run one transfer into `run_dir`; never raises. Returns (and writes) the summary.

    `sinks` have on_step(record) and close(summary); they are closed in `finally` whatever happens.
    `record` is merged into summary.json (e.g. the resolved config and the trial's overrides).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("error.log", "animation.gif"):  # left by an earlier attempt of this trial (resume)
        (run_dir / stale).unlink(missing_ok=True)
    summary: dict = {"status": "running", "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(record or {})}
    t0 = time.perf_counter()
    device = None
    try:
        device = resolve_device(s.device)
        summary["device"] = str(device)
        summary["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        set_determinism(s.deterministic, device)
        torch.manual_seed(s.seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        tensors = prepare(s, inputs, device)
        summary["image_size"] = list(tensors["content"].shape[-1:-3:-1])  # [W, H]
        spec = get_weights_spec(s.arch, s.weights)
        extractor = FeatureExtractor(s.arch, spec, list(s.objective.content_layers + s.objective.style_layers), s.pooling, device)
        weight = lambda v: torch.tensor([v], device=device, dtype=torch.float32)  # noqa: E731  [B=1]
        objective = Objective(extractor, s.objective, content=tensors["content"], style=tensors.get("style"),
                              content_weight=weight(s.content_weight), style_weight=weight(s.style_weight), tv_weight=weight(s.tv_weight))

        def on_step(rec):
            if rec.evaluation == 1 and device.type == "cuda":
                # cuDNN autotuning tries workspace-hungry algorithms in the first evaluation; the
                # steady-state peak (what a size or batch costs) is measured from here on.
                torch.cuda.reset_peak_memory_stats(device)
            for sink in sinks:
                sink.on_step(rec)

        t_opt = time.perf_counter()
        final, evaluations = optimise(objective, tensors["init"], steps=s.steps, spec=s.optimizer, on_step=on_step)
        opt_time = time.perf_counter() - t_opt
        with torch.no_grad():
            # The terms of the image actually saved (the last evaluation may precede a final step).
            final_terms = {k: v[0] for k, v in _floats(objective(final)).items()}
        summary["metrics"] = standard_metrics(final, tensors["content"], tensors.get("style"))
        images.save_atomic(images.to_pil(final), run_dir / "final.png")
        images.save_animation(run_dir / "frames", run_dir / "animation.gif")
        summary.update(status="completed", final=final_terms, evaluations=evaluations, optimisation_time=round(opt_time, 3),
                       evals_per_second=round(evaluations / opt_time, 3) if opt_time > 0 else None)
    except BaseException as e:  # noqa: BLE001 - a trial records every failure, Ctrl-C included
        summary.update(status="failed", error=f"{type(e).__name__}: {e}" if not isinstance(e, InputError) else str(e))
        if not isinstance(e, InputError):
            (run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
        if isinstance(e, KeyboardInterrupt):
            summary["status"] = "interrupted"
            raise
    finally:
        summary["wall_time"] = round(time.perf_counter() - t0, 3)
        summary["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if device is not None:
            summary["peak_memory_mb"], summary["peak_memory_kind"] = _peak_memory(device)
            summary["peak_memory_mb"] = round(summary["peak_memory_mb"], 1)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # hand a failed (e.g. out-of-memory) trial's blocks to the next trial
        for sink in sinks:
            try:
                sink.close(summary)
            except Exception as e:  # noqa: BLE001 - a broken sink must not hide the trial's result
                summary.setdefault("sink_errors", []).append(f"{type(sink).__name__}: {e}")
        if summary["status"] != "interrupted":  # an interrupted trial leaves no summary: it is re-run on resume
            write_json_atomic(run_dir / "summary.json", summary)
    return summary


def _floats(terms: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {k: v.detach().float().cpu().tolist() for k, v in terms.items()}

