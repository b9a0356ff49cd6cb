"""Hydra callbacks: aggregate a sweep's folder when the multirun ends."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("nst")


class AggregateSweep(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from nst.report import aggregate
        from nst.run import report_deferred

        sweep_dir = Path(config.hydra.sweep.dir)
        with report_deferred():  # SIGTERM or Ctrl-C now stops the command once the report is whole
            try:
                out = aggregate(sweep_dir)
            except Exception as e:  # noqa: BLE001 - aggregation must never turn a finished sweep into a crash
                log.error(f"aggregating {sweep_dir} failed: {type(e).__name__}: {e} "
                          f"(retry with: python -m nst.report {sweep_dir})")
                out = None
        if out is None:
            return
        log.info(f"sweep report: {out['report'].resolve()}")
        if OmegaConf.select(config, "logger.name") == "wandb":
            from nst import wandb_sink
            from nst.run import wandb_tags

            # the hydra node holds per-job values (hydra.job.num) that no longer resolve here
            job = OmegaConf.masked_copy(config, [str(k) for k in config if k != "hydra"])
            resolved = OmegaConf.to_container(job, resolve=True, enum_to_str=True)
            assert isinstance(resolved, dict)  # a config's root is a mapping
            wandb_sink.log_aggregate(resolved["wandb"], sweep_dir, out, group=sweep_dir.name, config=resolved,
                                     tags=wandb_tags(resolved))
