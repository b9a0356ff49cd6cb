"""Hydra callbacks: at the end of every multirun, aggregate the sweep folder."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("nst")


class AggregateSweep(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from nst.aggregate import aggregate

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            out = aggregate(sweep_dir)
        except Exception as e:  # noqa: BLE001 - aggregation must never turn a finished sweep into a crash
            log.error(f"aggregating {sweep_dir} failed: {type(e).__name__}: {e} (retry with: python -m nst.report {sweep_dir})")
            return
        log.info(f"sweep report: {out['report'].resolve()}")
