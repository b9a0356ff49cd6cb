"""The optimisation loop: L-BFGS or Adam over the pixels, counting objective evaluations.

It knows nothing of files, W&B or progress bars: every evaluation becomes a StepRecord that is
handed to `on_step` (the sinks).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

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
    evaluation: int  # 1-based count of objective evaluations (one forward + backward each)
    wall_time: float  # seconds since the optimisation started
    terms: dict[str, torch.Tensor]  # name -> [B], detached
    image: torch.Tensor  # [B,3,H,W], the image that was evaluated; copy it to keep it

    @cached_property
    def values(self) -> dict[str, list[float]]:
        """The terms as floats, per image; computed once (one device sync) whoever asks first."""
        names = list(self.terms)
        stacked = torch.stack([self.terms[n].detach().float() for n in names]).cpu().tolist()
        return dict(zip(names, stacked))


class _BudgetSpent(Exception):
    pass


class NonFiniteLoss(FloatingPointError):
    pass


def optimise(objective: Callable[[torch.Tensor], dict[str, torch.Tensor]], init: torch.Tensor, *, steps: int,
             spec: OptimizerSpec, on_step: Callable[[StepRecord], None]) -> tuple[torch.Tensor, int]:
    """Minimise the summed per-image totals from `init`; returns (final image in [0,1], evaluations)."""
    x = init.detach().clone(memory_format=torch.contiguous_format).clamp_(0, 1).requires_grad_(True)
    count = 0
    start = time.perf_counter()
    # L-BFGS's strong-Wolfe search squares directional derivatives in float32; with large losses
    # (the paper's un-normalised sums, big weights) they overflow and the step turns NaN. L-BFGS
    # therefore minimises total / |total at the first evaluation|: a constant factor, so the same
    # minimiser, with its arithmetic kept in range. Adam is left unscaled (it is scale-invariant
    # but for its epsilon). Records always carry the unscaled terms.
    scale: list[float] = [] if spec.name == "lbfgs" else [1.0]

    def closure() -> torch.Tensor:
        nonlocal count
        if count >= steps:
            raise _BudgetSpent  # a line search may ask for more evaluations than are left
        with torch.no_grad():
            # Keep pixels valid. L-BFGS: projecting here, at every evaluation, means each loss and
            # gradient belong to the clamped image that is reported; inside a line search the trial
            # point is restored afterwards, so the search stays consistent. Adam: see below.
            x.clamp_(0, 1)
        if x.grad is not None:
            x.grad.zero_()
        terms = objective(x)
        # Images of a batch are independent, so the sum of their totals optimises each one.
        total = terms["total"].sum()
        value = float(total.detach())
        if not math.isfinite(value):
            raise NonFiniteLoss(f"the loss became {value} at evaluation {count + 1}; lower the loss weights or the learning rate")
        if not scale:
            scale.append(1.0 / abs(value) if value != 0 else 1.0)
        (total * scale[0]).backward()
        count += 1
        on_step(StepRecord(count, time.perf_counter() - start, {k: v.detach() for k, v in terms.items()}, x.detach()))
        return total.detach() * scale[0]

    if spec.name == "lbfgs":
        opt = torch.optim.LBFGS([x], lr=spec.lr, max_iter=steps, max_eval=steps, history_size=spec.history_size,
                                line_search_fn="strong_wolfe" if spec.line_search else None)
        try:
            while count < steps:
                before = count
                opt.step(closure)  # runs until its own convergence tests or the budget stop it
                if count - before <= 1:
                    break  # converged: the gradient vanished at the first evaluation
        except _BudgetSpent:
            pass
    elif spec.name == "adam":
        opt = torch.optim.Adam([x], lr=spec.lr, betas=tuple(spec.betas))
        for _ in range(steps):
            closure()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)  # Adam: projected gradient descent, back into [0,1] after each step
    else:
        raise ValueError(f"unknown optimizer {spec.name!r}")
    with torch.no_grad():
        x.clamp_(0, 1)
    return x.detach(), count
