"""Weights & Biases: one run per trial, one aggregate run per sweep. It never blocks or crashes a run.

The mode is resolved here and only here: `wandb.mode=auto` is online when logged in (WANDB_API_KEY
or a netrc entry for the W&B host), offline otherwise; WANDB_MODE counts when the config says auto.
No login prompt is ever shown; if W&B cannot start, the run warns once and keeps its local files.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger("nst")
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    env = os.environ.get("WANDB_MODE")
    if env is not None and env.lower() not in ("online", "offline", "disabled", "dryrun", "shared", "run"):
        # W&B validates this variable even when a mode is passed explicitly, and refuses to start.
        warn_once("env", f"ignoring WANDB_MODE={env!r} (allowed: online, offline, disabled)")
        os.environ.pop("WANDB_MODE")
    if mode == "auto":
        env = os.environ.get("WANDB_MODE", "").lower()
        if env in ("online", "offline", "disabled"):
            mode = env
        elif env == "dryrun":
            mode = "offline"
        else:
            return "online" if logged_in() else "offline"
    if mode == "online" and "online" in _warned:
        return "offline"  # online already failed in this process: don't make every trial wait again
    if mode == "online" and not logged_in():
        # wandb.init would prompt for a key on a terminal: never that.
        warn_once("login", "wandb.mode=online but no W&B login (run `wandb login` or set WANDB_API_KEY): logging offline")
        return "offline"
    return mode


def keep_files_in(folder: Path, mode: str) -> None:
    """W&B writes caches under the home folder unless told otherwise: keep them in the output folder.
    The config folder (login settings such as a custom host) is only moved when not logging online."""
    wandb_dir = Path(folder) / "wandb"
    os.environ.setdefault("WANDB_CACHE_DIR", str(wandb_dir / ".cache"))
    os.environ.setdefault("WANDB_DATA_DIR", str(wandb_dir / ".data"))
    if mode != "online":
        os.environ.setdefault("WANDB_CONFIG_DIR", str(wandb_dir / ".config"))


def start(opts: dict, *, run_dir: Path, files_root: Path, name: str, group: str | None, job_type: str,
          config: dict, tags: list[str]):
    """A started W&B run, or None (disabled, or W&B could not start: warned once)."""
    mode = resolve_mode(opts["mode"])
    if mode == "disabled":
        return None
    keep_files_in(files_root, mode)
    try:
        import wandb
    except Exception as e:  # noqa: BLE001 - W&B's import may fail in any way (a broken install): the run goes on without it
        warn_once("import", f"W&B is not available ({type(e).__name__}: {e}); continuing without it")
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = dict(project=opts.get("project") or "nst", entity=opts.get("entity") or None, group=group,
                                  name=name, job_type=job_type, tags=[str(t) for t in tags if t], config=config,
                                  dir=str(run_dir))

    def init(m: Any):  # "online" | "offline" (resolve_mode): what wandb.init's `mode` takes
        _TEARDOWN_TIMEOUT[0] = float(opts.get("init_timeout", 60))
        settings = wandb.Settings(init_timeout=_TEARDOWN_TIMEOUT[0], console="off", silent=True)
        # create_new: the trials of a batch each keep a live run in this process; every call logs to
        # its own run object, never through the module-level wandb.log.
        return wandb.init(settings=settings, reinit="create_new", **kwargs, mode=m)

    try:
        return init(mode)
    except Exception as e:  # noqa: BLE001 - W&B must never stop a run
        first = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if mode == "online":
            warn_once("online", f"W&B could not start online ({first}); logging offline instead "
                                f"(sync later: wandb sync {run_dir}/wandb/offline-run-*)")
            try:
                return init("offline")
            except Exception as e2:  # noqa: BLE001 - offline failed too: the run goes on with its local files
                first = f"{type(e2).__name__}: {e2}"
        warn_once("start", f"W&B could not start ({first}); continuing with local outputs only")
        return None


class WandbSink:
    """Logs every loss term per layer against the evaluation count, frames, the final image, the
    animation and the summary; finishes the run (non-zero exit code on failure) in close()."""

    def __init__(self, run, *, run_dir: Path, log_every: int, frame_every: int, steps: int):
        self.run, self.run_dir = run, Path(run_dir)
        self.log_every, self.frame_every, self.steps = log_every, frame_every, steps
        run.define_metric("evaluation")
        run.define_metric("*", step_metric="evaluation")

    def on_step(self, rec) -> None:
        if self.run is None:
            return
        from nst.sinks import due  # here, not at the top: nst.sinks imports torch, which teardown() needs not

        n = rec.evaluation
        row: dict = {}
        try:
            if due(n, self.log_every, self.steps):
                row.update({f"loss/{k}": v for k, v in rec.values.items()})
                row["evals_per_second"] = n / rec.wall_time if rec.wall_time > 0 else None
            if due(n, self.frame_every, self.steps):
                import wandb

                from nst.images import to_pil

                row["frame"] = wandb.Image(to_pil(rec.image), caption=f"evaluation {n}")
            if row:
                row["evaluation"] = n
                self.run.log(row)
        except Exception as e:  # noqa: BLE001 - a failing W&B log must never stop a run
            warn_once("log", f"W&B logging failed ({type(e).__name__}: {e}); continuing with local outputs only")
            self._finish(1)

    def close(self, record: dict) -> None:
        if self.run is None:
            return
        from nst.summary import Summary, score

        summary = Summary.from_dict(record)
        try:
            import wandb

            media: dict[str, Any] = {}
            if (self.run_dir / "final.png").exists():
                media["final"] = wandb.Image(str(self.run_dir / "final.png"))
            if (self.run_dir / "animation.gif").exists():
                media["animation"] = wandb.Video(str(self.run_dir / "animation.gif"), format="gif")
            if media:
                self.run.log({**media, "evaluation": summary.evaluations or self.steps})
            flat: dict = {f"final/{k}": v for k, v in summary.final.items()}
            flat.update({f"metrics/{k}": v for k, v in summary.metrics.items()})
            for key in ("status", "error", "evaluations", "wall_time", "optimisation_time", "evals_per_second",
                        "peak_memory_mb", "peak_memory_kind", "device", "device_name"):
                if getattr(summary, key) is not None:
                    flat[key] = getattr(summary, key)
            scored = score(summary)  # what a search minimises, as summary.json records it
            if scored is not None:
                flat["objective"], flat["objective_name"] = scored.value, scored.name
            self.run.summary.update(flat)
        except Exception as e:  # noqa: BLE001 - results W&B cannot record must never fail a finished trial
            warn_once("close", f"W&B could not record the run's results ({type(e).__name__}: {e})")
        finally:
            self._finish(0 if summary.completed else 1)

    def _finish(self, exit_code: int) -> None:
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as e:  # noqa: BLE001 - a run W&B cannot finish must never fail a finished trial
                warn_once("finish", f"W&B could not finish its run ({type(e).__name__}: {e})")


def log_aggregate(opts: dict, sweep_dir: Path, outputs: dict, *, group: str, config: dict, tags: list[str]) -> None:
    """One extra run in the sweep's group: the grid, the curves and the results table (results.csv)."""
    run = start(opts, run_dir=sweep_dir, files_root=sweep_dir, name=f"{group}/aggregate", group=group,
                job_type="aggregate", config=config, tags=tags)
    if run is None:
        return
    exit_code = 0
    try:
        import pandas as pd
        import wandb

        table = pd.read_csv(outputs["results"])
        data = table.astype(object).where(table.notna(), None)
        # each trial's final image beside its values, metrics and objective (none for a failed trial)
        finals = [sweep_dir / str(name) / "final.png" for name in data["trial"]]
        data.insert(1, "image", [wandb.Image(str(f)) if f.exists() else None for f in finals])
        run.log({"grid": wandb.Image(str(outputs["grid"])), "curves": wandb.Image(str(outputs["curves"])),
                 "results": wandb.Table(columns=list(data.columns), data=data.values.tolist())})
    except Exception as e:  # noqa: BLE001 - a sweep's aggregate W&B cannot log must never fail the sweep
        exit_code = 1
        warn_once("aggregate", f"W&B could not log the sweep's aggregate ({type(e).__name__}: {e})")
    finally:
        run.finish(exit_code=exit_code)


def offline_runs(folder: Path) -> list[Path]:
    """The offline W&B runs in a run or sweep folder not yet uploaded (`wandb sync` leaves a
    `<run>.wandb.synced` file beside each run it uploads): a run's own, and a sweep's aggregate and trials'."""
    folder = Path(folder)
    found = [*folder.glob("wandb/offline-run-*"), *folder.glob("*/wandb/offline-run-*")]
    return sorted(d for d in found if d.is_dir() and not any(d.glob("*.wandb.synced")))


def sync_line(folders) -> str | None:
    """One line naming the offline runs a command left and the command that uploads them, or None."""
    runs = {Path(f): offline_runs(f) for f in folders}
    runs = {f: r for f, r in runs.items() if r}
    if not runs:
        return None
    import shlex

    globs = []  # the folder quoted for the shell, the pattern left for it to expand
    for folder, found in runs.items():
        if any(r.parent.parent == folder for r in found):
            globs.append(f"{shlex.quote(str(folder))}/wandb/offline-run-*")
        if any(r.parent.parent != folder for r in found):
            globs.append(f"{shlex.quote(str(folder))}/*/wandb/offline-run-*")
    count = sum(len(r) for r in runs.values())
    return f"W&B: {count} offline run(s) not uploaded yet; to upload them: wandb sync {' '.join(globs)}"


_TEARDOWN_TIMEOUT = [60.0]  # seconds: the last wandb.init_timeout a run started with


def teardown(timeout: float | None = None) -> None:
    """Stop W&B's background service, so that no W&B process outlives the command; waiting at most
    wandb.init_timeout (a server that accepts connections but never answers must not hold the command)."""
    import sys
    import threading

    if "wandb" not in sys.modules:
        return

    def stop() -> None:
        try:
            sys.modules["wandb"].teardown()
        except Exception:  # noqa: BLE001 - teardown is best-effort: the command is ending
            pass

    limit = _TEARDOWN_TIMEOUT[0] if timeout is None else timeout
    worker = threading.Thread(target=stop, name="nst-wandb-teardown", daemon=True)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        log.warning(f"W&B did not stop within {limit:g} s (wandb.init_timeout); leaving it behind")
