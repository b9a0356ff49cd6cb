import json
import math
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from nst import cli
from nst.settings import settings_from_dict


def settings(*overrides: str):
    GlobalHydra.instance().clear()
    cli.register_resolvers()
    with initialize_config_dir(config_dir=str(cli.CONF_DIR), version_base=cli.VERSION_BASE, job_name="nst"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return settings_from_dict(OmegaConf.to_container(cfg, resolve=True))


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())
