"""Entry point: `python -m nst.run [key=value ...]` runs one transfer; `-m` runs a sweep.

Orchestration only: compose (Hydra), validate, run each trial into its folder, report.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from nst import cli
from nst.errors import InputError

log = logging.getLogger("nst")
cli.register_resolvers()

_state: dict = {"failed": [], "skipped": 0, "out": set()}


def trial_overrides() -> list[str]:
    """The overrides that define this trial (what it is labelled by), without the sweep selector."""
    return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(("sweep=", "sweep_name="))]


@hydra.main(version_base=cli.VERSION_BASE, config_path="../conf", config_name="config")
def app(cfg: DictConfig) -> None:
    from nst.settings import load_inputs, settings_from_dict
    from nst.sinks import FileSink, ProgressSink
    from nst.trial import run_trial, write_json_atomic

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    _state["out"].add(str(Path(hc.sweep.dir).resolve() if multirun else run_dir))
    overrides = trial_overrides()
    label = ",".join(overrides) or "defaults"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    record = {"label": label, "overrides": overrides, "config": resolved, "job_num": hc.job.num if multirun else None}

    previous = _read_summary(run_dir)
    if previous.get("status") == "completed" and previous.get("config") == resolved:
        # Resume: re-running a sweep into its folder skips what already completed with this config.
        _state["skipped"] += 1
        log.info(f"{label}: already completed with this config, skipped ({run_dir})")
        return

    try:
        settings = settings_from_dict(resolved)
        inputs = load_inputs(settings)
    except InputError as e:
        write_json_atomic(run_dir / "summary.json", {**record, "status": "failed", "error": str(e)})
        _fail(label, str(e), run_dir)
        return

    record["settings"] = settings.to_dict()
    sinks = [FileSink(run_dir, log_every=settings.log_every, frame_every=settings.frame_every, steps=settings.steps),
             ProgressSink(settings.steps, label if multirun else "nst")]
    if resolved["logger"]["name"] == "wandb":
        from nst import wandb_sink

        effective = {"content_weight": settings.content_weight, "style_weight": settings.style_weight, "tv_weight": settings.tv_weight}
        run = wandb_sink.start(resolved["wandb"], run_dir=run_dir, files_root=Path(hc.sweep.dir) if multirun else run_dir,
                               name=label, group=Path(hc.sweep.dir).name if multirun else None, job_type="trial",
                               config={**resolved, "effective": effective}, tags=wandb_tags(resolved))
        if run is not None:
            sinks.append(wandb_sink.WandbSink(run, run_dir=run_dir, log_every=settings.log_every,
                                              frame_every=settings.frame_every, steps=settings.steps))
    summary = run_trial(settings, inputs, run_dir, sinks=sinks, record=record)
    if summary["status"] == "completed":
        final = summary["final"]
        log.info(f"{label}: done in {summary['wall_time']:.1f}s, {summary['evals_per_second']:.2f} evals/s on "
                 f"{summary['device']}; total {final['total']:.4g} (content {final['content']:.4g}, style {final['style']:.4g})"
                 f" -> {run_dir / 'final.png'}")
    else:
        _fail(label, summary.get("error", "unknown error"), run_dir)


def wandb_tags(resolved: dict) -> list[str]:
    return [resolved.get("sweep_name"), resolved["model"]["arch"], resolved["model"]["weights"],
            resolved["optimizer"]["name"], *list(resolved["wandb"].get("tags") or [])]


def _read_summary(run_dir: Path) -> dict:
    import json

    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _fail(label: str, error: str, run_dir: Path) -> None:
    _state["failed"].append(label)
    detail = f" (traceback: {run_dir / 'error.log'})" if (run_dir / "error.log").exists() else ""
    log.error(f"{label}: failed: {error}{detail}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cli.check(argv)
    except InputError as e:
        print(f"nst: error: {e}", file=sys.stderr)
        return 2
    try:
        app()
    except KeyboardInterrupt:
        outs = " ".join(sorted(_state["out"]))
        print(f"nst: interrupted; the trial that was running left no summary.json or final.png. To resume a sweep, "
              f"run the same command with hydra.sweep.dir=<its folder> ({outs})", file=sys.stderr)
        return 130
    finally:
        from nst.wandb_sink import teardown

        teardown()
    if _state["skipped"]:
        print(f"resumed: {_state['skipped']} trial(s) had already completed with the same config and were skipped")
    for out in sorted(_state["out"]):
        print(f"outputs: {out}")
    if _state["failed"]:
        print(f"nst: {len(_state['failed'])} trial(s) failed: {'; '.join(_state['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
