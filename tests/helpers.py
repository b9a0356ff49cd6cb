import json
import math
from pathlib import Path

import numpy as np
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from nst import compose


def settings(*overrides: str):
    GlobalHydra.instance().clear()
    return compose.settings_for(list(overrides))


def trial(s, run_dir: Path, *, frame_every: int = 10, sinks=None):
    """A Trial for the runner, with a file sink (or the given sinks)."""
    from nst.engine import Trial
    from nst.sinks import FileSink
    from nst.stage import load_inputs

    run_dir = Path(run_dir)
    open_sinks = (lambda pos: list(sinks)) if sinks is not None else \
        (lambda pos: [FileSink(run_dir, log_every=1, frame_every=frame_every, steps=s.total_steps)])
    return Trial(s, load_inputs(s), run_dir, open_sinks)


def run_alone(s, run_dir: Path, **kw) -> dict:
    """One trial as a batch of one, the way a single run goes."""
    from nst.engine import run_together

    return run_together([trial(s, run_dir, **kw)])[0]


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())
