"""What the optimisation loop hands its sinks, and the optimiser settings of one trial.

The loop itself is `nst.batch` (several trials per pass, each with its own optimiser from
`nst.batch_opt`); it knows nothing of files, W&B or progress bars: every evaluation of a trial
becomes a StepRecord handed to that trial's sinks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

OPTIMIZERS = ("lbfgs", "adam")


@dataclass(frozen=True)
class OptimizerSpec:
    name: str  # "lbfgs" | "adam"
    lr: float
    history_size: int = 100  # lbfgs
    line_search: bool = False  # lbfgs: strong-Wolfe line search
    betas: tuple[float, float] = (0.9, 0.999)  # adam


@dataclass(frozen=True)
class StepRecord:
    evaluation: int  # 1-based count of this trial's objective evaluations (one forward + backward each)
    wall_time: float  # seconds since the optimisation started
    values: dict[str, float]  # every loss term of this trial at this evaluation (one host transfer per batch)
    image: torch.Tensor  # [1,3,H,W], the image that was evaluated (as it is saved); copy it to keep it
    level: int | None = None  # the pyramid level (coarse to fine, from 0), when there are several


class NonFiniteLoss(FloatingPointError):
    pass
