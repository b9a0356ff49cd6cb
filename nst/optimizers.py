"""The optimisers the runner uses: L-BFGS and Adam for a batch of trials, each trial with its own state.

Each trial keeps its own optimiser state and asks for its own points; the runner (nst.engine) stacks
the points of all running trials, evaluates them in one batch and hands every trial its own loss and
gradient. One optimiser over the summed batch loss would share history, step size and stopping
between trials: a different algorithm.

Both drivers share one reverse-communication interface: ask() the (trial, point) pairs to evaluate;
measure() the gradients on the device (what the optimiser needs to know on the host, for the caller
to bring over in its one transfer of the tick); tell() the losses, gradients and measures, which
returns the trials whose evaluation did not count; drop() a trial; collect finished() ones.

`BatchLBFGS` is torch.optim.LBFGS's algorithm (one `step()` per trial and level: torch's tolerances,
first step, history rule, strong-Wolfe line search with torch's `max_ls`, stop conditions in torch's
order) vectorised across the trials; the tests hold it to a line-by-line port of torch's code
(tests/lbfgs_oracle.py), which holds it to torch.optim.LBFGS itself. `BatchAdam` is torch.optim.Adam's
arithmetic, elementwise, with per-trial learning rates and betas.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class OptimizerSpec:
    """One trial's optimiser settings (the `optimizer` config group)."""

    name: str  # a value of nst.schema.OptimizerName
    lr: float
    history_size: int = 100  # lbfgs
    line_search: bool = False  # lbfgs: strong-Wolfe line search
    betas: tuple[float, float] = (0.9, 0.999)  # adam


# --------------------------------------------------------------------------------------------------
# torch's line search and stop tests, shared with the reference port in tests/lbfgs_oracle.py

def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    # verbatim from torch/optim/lbfgs.py: arguments mix Python floats and 0-dim tensors (the
    # vectorised optimiser passes floats only; `** 0.5` is torch's `.sqrt()` and math.sqrt for them)
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = d2_square**0.5
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _wolfe_search(first, t, f, g, gtd, d_norm, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """torch's `_strong_wolfe` over step sizes: yields the next t to evaluate and is sent
    (f_new, gtd_new, g_new) for it; `first` is that triple for the first t, already evaluated.

    The g's are carried, never read: torch's flat gradients in the port, the vectorised optimiser's
    records of an evaluation. Returns (f, g, t, evaluations) of the low end of the final bracket.
    """
    f_new, gtd_new, g_new = first
    ls_func_evals = 1

    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f, bracket_g, bracket_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f, bracket_g, bracket_gtd = [t_prev, t], [f_prev, f_new], [g_prev, g_new], [gtd_prev, gtd_new]
            break
        # extrapolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, gtd_new, g_new = yield t
        ls_func_evals += 1
        ls_iter += 1

    # budget spent while bracketing (bracket_gtd stays unset, as in torch: zoom cannot run)
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom: refine the bracket until a point satisfies the strong-Wolfe conditions
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        # too close to an end twice in a row (or outside): move 0.1 * width away from the nearer end
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        f_new, gtd_new, g_new = yield t
        ls_func_evals += 1
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo fails or not lower than the low end: new high end
            bracket[high_pos], bracket_f[high_pos], bracket_g[high_pos], bracket_gtd[high_pos] = t, f_new, g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # old high becomes new low
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos], bracket_g[low_pos], bracket_gtd[low_pos] = t, f_new, g_new, gtd_new

    # the low end, not necessarily the last point evaluated
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


def _stop_reason(last_iter, budget_spent, opt_cond, step, loss_change, tolerance_change) -> str:
    """torch's stop conditions after an iteration, in its order ("" to go on)."""
    if last_iter:
        return "max_iter"
    if budget_spent:
        return "max_eval"
    if opt_cond:
        return "gradient tolerance"
    if step <= tolerance_change:
        return "step tolerance"
    if loss_change < tolerance_change:
        return "loss change tolerance"
    return ""


def _per_trial(value, b: int, name: str) -> list:
    """A scalar for all B trials, or a sequence of B values."""
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != b:
            raise ValueError(f"{name}: {len(value)} values for {b} trials")
        return list(value)
    return [value] * b


class _Batch:
    """Bookkeeping common to both drivers: which trials run, which finished and why; iterate averaging."""

    def __init__(self, x0: Tensor, average_decay=0.0):
        self._shape = x0.shape[1:]
        self._running: list[int] = list(range(x0.shape[0]))
        self._finished: list[tuple[int, Tensor, str]] = []
        self._asked: list[int] = []  # trial indices of the last ask(), in order
        # Iterate averaging, per trial with a decay > 0: a bias-corrected exponential moving average of
        # the iterates (crowsonkb's EMA, Adam's bias correction), the start its first update.
        self._decay = [float(v) for v in _per_trial(average_decay, x0.shape[0], "average_decay")]
        self._averages: dict[int, list] = {}  # trial -> [sum of (1 - d) d^k x, d^n]
        for i, d in enumerate(self._decay):
            if d > 0:
                self._averages[i] = [torch.zeros_like(x0[i].reshape(-1)), 1.0]
                self._average(i, x0[i])

    def _average(self, i: int, x: Tensor) -> None:
        """A new iterate of trial i (clamped to [0, 1], the image it stands for) into its average."""
        if i in self._averages:
            a, d = self._averages[i], self._decay[i]
            a[0].mul_(d).add_(x.reshape(-1).clamp(0, 1), alpha=1 - d)
            a[1] *= d

    def average(self, i: int) -> Tensor | None:
        """Trial i's averaged iterate (bias-corrected: value / (1 - d^n)), None without averaging."""
        if i not in self._averages:
            return None
        value, accum = self._averages[i]
        return (value / (1 - accum)).view(self._shape)

    @property
    def running(self) -> list[int]:
        return list(self._running)

    def finished(self) -> list[tuple[int, Tensor, str]]:
        out, self._finished = self._finished, []
        return out

    def _finish(self, i: int, flat: Tensor, reason: str) -> None:
        """Trial i stops: its result is its last iterate, or with averaging its average."""
        self._running.remove(i)
        average = self.average(i)
        self._finished.append((i, flat.view(self._shape) if average is None else average, reason))

    def drop(self, i: int, reason: str) -> None:
        """Stop trial i now, with `reason` (each driver knows its trial's last iterate)."""
        raise NotImplementedError

    def _hard_budget(self, budget, b: int) -> None:
        """Per-trial caps on counted evaluations (None: none beyond the algorithm's own)."""
        self._budget: list[int | None] = [None] * b if budget is None else [int(v) for v in _per_trial(budget, b, "budget")]
        self._spent = [0] * b

    def _spend(self, asked: list[int], void: set[int]) -> None:
        """Count the asked trials' evaluations (a void one does not count); a trial that has spent its
        budget stops with its last accepted iterate ("evaluation budget")."""
        for i in asked:
            if i in void:
                continue
            self._spent[i] += 1
            cap = self._budget[i]
            if cap is not None and self._spent[i] >= cap and i in self._running:
                self.drop(i, "evaluation budget")

    def _check_tell(self, losses: Sequence[float], grads: Tensor) -> Tensor:
        k = len(self._asked)
        if len(losses) != k or grads.shape[0] != k:
            raise ValueError(f"tell() got {len(losses)} losses and {grads.shape[0]} gradients for {k} asked points")
        return grads.detach().reshape(k, -1)  # [k, n]


class AdamState(NamedTuple):
    """One trial's Adam state: the moments (shaped like its image) and the steps taken."""

    exp_avg: Tensor
    exp_avg_sq: Tensor
    steps: int

    def resized(self, size: tuple[int, int]) -> AdamState:
        """The state at another image size (a pyramid level), as crowsonkb's scale_adam: the first
        moment interpolated bicubically, the second bilinearly and clamped at 0 (it is a mean of
        squares), the step count kept (so the bias corrections go on where they were)."""
        m = F.interpolate(self.exp_avg[None], size=size, mode="bicubic", align_corners=False)[0]
        v = F.interpolate(self.exp_avg_sq[None], size=size, mode="bilinear", align_corners=False)[0].clamp_(min=0)
        return AdamState(m, v, self.steps)


class BatchAdam(_Batch):
    """B trials of elementwise Adam, vectorised: moments [k, n] and hyper-parameters [k, 1] for the k running.

    state: per trial, an AdamState to start from (None: fresh), as torch.optim.Adam after
    load_state_dict; `max_iter` counts the steps taken here. keep_state: per trial, whether to keep its
    state when it finishes, for final_state()."""

    def __init__(self, x0: Tensor, *, lr, betas, max_iter, eps=1e-8, average_decay=0.0, state=None, keep_state=False):
        super().__init__(x0, average_decay)
        b = x0.shape[0]
        self._keep_state = [bool(v) for v in _per_trial(keep_state, b, "keep_state")]
        self._final_state: dict[int, AdamState] = {}
        if isinstance(betas, Tensor):
            betas = betas.tolist()
        if not (len(betas) == b and all(isinstance(v, Sequence) for v in betas)):
            betas = [betas] * b  # one (beta1, beta2) pair for all
        self._lr = _per_trial(lr, b, "lr")
        self._beta1 = [float(v[0]) for v in betas]
        self._beta2 = [float(v[1]) for v in betas]
        self._max_iter = [int(v) for v in _per_trial(max_iter, b, "max_iter")]
        self._eps = eps
        self._steps = [0] * b
        self._rows = list(range(b))  # trial index of each row of the tensors below
        self._param = x0.detach().reshape(b, -1).clone(memory_format=torch.contiguous_format)  # [k, n]
        self._exp_avg = torch.zeros_like(self._param)
        self._exp_avg_sq = torch.zeros_like(self._param)
        for i, st in enumerate([None] * b if state is None else state):
            if st is not None:
                self._exp_avg[i].copy_(st.exp_avg.reshape(-1))
                self._exp_avg_sq[i].copy_(st.exp_avg_sq.reshape(-1))
                self._steps[i] = int(st.steps)
        self._first_step = list(self._steps)  # max_iter counts from here
        # torch computes 1 - beta in Python doubles and hands the scalar to a float kernel; same here
        self._w1 = self._column([1 - v for v in self._beta1])  # [k, 1]
        self._beta2_t = self._column(self._beta2)
        self._w2 = self._column([1 - v for v in self._beta2])
        for i in range(b):
            if self._max_iter[i] <= 0:
                self._finish(i, self._param[i].clone(), "max_iter")
        self._compact()

    def _column(self, values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=self._param.dtype, device=self._param.device).unsqueeze(1)  # [k, 1]

    def _compact(self) -> None:
        """Keep only the rows of running trials."""
        keep = [r for r, i in enumerate(self._rows) if i in self._running]
        if len(keep) == len(self._rows):
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self._param.device)
        for name in ("_param", "_exp_avg", "_exp_avg_sq", "_w1", "_beta2_t", "_w2"):
            setattr(self, name, getattr(self, name).index_select(0, idx))
        self._rows = [self._rows[r] for r in keep]

    def ask(self) -> list[tuple[int, Tensor]]:
        self._compact()
        self._asked = list(self._rows)
        # views: an in-place change by the caller (a clamp) persists, as on torch's parameter
        return [(i, self._param[r].view(self._shape)) for r, i in enumerate(self._rows)]

    def measure(self, grads: Tensor) -> None:
        return None  # nothing to measure ahead of tell()

    def tell(self, losses: Sequence[float], grads: Tensor, measured: Any = None) -> list[int]:
        g = self._check_tell(losses, grads)
        if self._asked != self._rows:
            raise RuntimeError("tell() without a matching ask()")
        self._asked = []
        # rows of trials dropped since ask() are updated too (cheaper than compacting first) and
        # discarded at the next ask(); their final point was taken when they were dropped
        g = g.to(self._param.dtype)
        for i in self._rows:
            self._steps[i] += 1
        # per-trial bias corrections in Python doubles, as torch's non-capturable Adam
        bc1 = [1 - self._beta1[i] ** self._steps[i] for i in self._rows]
        bc2 = [1 - self._beta2[i] ** self._steps[i] for i in self._rows]
        neg_step_size = self._column([-(self._lr[i] / c) for i, c in zip(self._rows, bc1, strict=True)])
        bc2_sqrt = self._column([c**0.5 for c in bc2])

        self._exp_avg.lerp_(g, self._w1)
        # torch: addcmul_(g, g, value=1-beta2) = self + (value*g)*g, the same products as below
        self._exp_avg_sq.mul_(self._beta2_t).addcmul_(g * self._w2, g)
        denom = (self._exp_avg_sq.sqrt() / bc2_sqrt).add_(self._eps)
        # torch: addcdiv_(exp_avg, denom, value=-step_size) = self + (value*exp_avg)/denom
        self._param.addcdiv_(self._exp_avg * neg_step_size, denom)

        for r, i in enumerate(self._rows):
            self._average(i, self._param[r])
            if i in self._running and self._steps[i] - self._first_step[i] >= self._max_iter[i]:
                self._finish(i, self._param[r].clone(), "max_iter")
        return []  # every evaluation counts

    def drop(self, i: int, reason: str) -> None:
        if i in self._running:
            self._finish(i, self._param[self._rows.index(i)].clone(), reason)

    def _finish(self, i: int, flat: Tensor, reason: str) -> None:
        if self._keep_state[i]:
            r = self._rows.index(i)
            self._final_state[i] = AdamState(self._exp_avg[r].clone().view(self._shape),
                                             self._exp_avg_sq[r].clone().view(self._shape), self._steps[i])
        super()._finish(i, flat, reason)

    def final_state(self, i: int) -> AdamState | None:
        """The state trial i finished with (kept when keep_state asked for it)."""
        return self._final_state.get(i)

    def state_bytes(self) -> int:
        self._compact()
        return self._exp_avg.nbytes + self._exp_avg_sq.nbytes

    def history_bytes(self) -> int:
        return 0  # Adam keeps no history


# --------------------------------------------------------------------------------------------------
# The vectorised L-BFGS the runner uses

class _Eval(NamedTuple):
    """One evaluation as a trial's L-BFGS sees it: the loss, scalars measured from the gradient on
    the device (all trials at once, brought to the host in one transfer per tick) and the gradient."""

    f: float
    gtd: float  # g . d, with d the trial's current direction
    gmax: float  # max |g|
    gsum: float  # sum |g|
    yd: float  # (g - g_x) . d, with g_x the gradient at the current iterate x
    yy: float  # |g - g_x|^2
    dmax: float  # max |d|
    gtd_x: float  # g_x . d: the directional derivative of the current direction at x
    g: Tensor  # [n], a row of the tick's gradients


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """[k, n] . [k, n] -> [k] in one kernel (on 2 CPU cores 10x faster than the same as a bmm)."""
    return torch.linalg.vecdot(a, b)


# A trial's L-BFGS in reverse-communication form: yields None (evaluate x) or a step t (evaluate
# x + t d), is sent each evaluation's _Eval, returns why it stopped.
_TrialSteps = Generator[float | None, _Eval, str]


class BatchLBFGS(_Batch):
    """The L-BFGS of the reference port `lbfgs()` in tests/lbfgs_oracle.py (one torch.optim.LBFGS step() per trial, each
    trial its own history, step sizes, line search and stopping tests) vectorised across the trials of a batch.

    What the runner does per tick, and what it costs, whatever the history size:
    - measure(): for all asked points at once, the few scalars the host-side decisions need (g.d,
      max|g|, sum|g|, y.d, y.y, max|d|, g_x.d) as row-wise reductions, returned as one [k, 7] tensor that
      the caller brings to the host together with the losses: one transfer per tick, no other sync.
    - the strong-Wolfe search and the stopping tests run on those Python floats, per trial, as in
      torch (same branches, same order, same constants);
    - a new direction is the two-loop recursion done in coefficient space: history S, Y held as
      [B, m, n] tensors, their products s_i.y_j and y_i.y_j kept as small [B, m, m] matrices (float64),
      updated with one product of the new pair against the history; the two loops become two
      unit-triangular solves on [m] vectors, and the direction is d = -H0 g - H0 Y'a + S'c, two
      matrix-vector products. Two passes over the history per iteration instead of torch's 4m dot
      and axpy kernels with a host sync each (`q.add_(y, alpha=-al[i])` reads the tensor al[i]).
    - points x + t d, the step and the history update are a few kernels per trial, launched without
      waiting.
    Differences from `lbfgs()`, all at float-rounding level: dot products are batched (another
    summation order), y.s is t * (y.d), the scalars are Python doubles rather than 0-dim float32
    tensors, and the recursion's dot products are formed from the stored products. Torch's descent
    test (g.d > -tolerance_change, before the first point of an iteration) is answered by the
    measures of that point's evaluation, so when it fails, that evaluation is void: tell() returns
    those trials and the caller must not count them. The direction of an iteration without an
    evaluation (the last one, without a line search) is tested with one transfer at the trial's end.

    small_on_host: keep the [B, m, m] products, 1/(y.s) and the triangular solves in float64 on the
    CPU instead of on x0's device, for a device without float64 (Apple's MPS; nst.device.
    lbfgs_products_on_host). The arithmetic is the same float64; what it costs is two small copies
    per new direction: the new products ([c, 6] float32, c <= history_size) to the host, which waits
    for the device's queued work (a sync per trial and iteration, where the device path has none), and
    the [2, c] coefficients back. On the CPU the copies are no-ops, so the path can be tested there.
    """

    def __init__(self, x0: Tensor, *, lr, max_iter, max_eval, history_size, line_search,
                 tolerance_grad=1e-7, tolerance_change=1e-9, small_on_host: bool = False, budget=None,
                 average_decay=0.0):
        super().__init__(x0, average_decay)
        b = x0.shape[0]
        # budget: a hard cap on each trial's counted evaluations. torch's max_eval is not one: an
        # iteration's line search evaluates before it counts, so it may end one evaluation past it.
        self._hard_budget(budget, b)
        hyper = {name: _per_trial(v, b, name) for name, v in dict(
            lr=lr, max_iter=max_iter, max_eval=max_eval, history_size=history_size, line_search=line_search).items()}
        flat = x0.detach().reshape(b, -1)
        n, m = flat.shape[1], max(int(v) for v in hyper["history_size"])
        self._m = [int(v) for v in hyper["history_size"]]
        self._X = flat.clone(memory_format=torch.contiguous_format)  # [B, n] the iterates
        self._D = torch.zeros_like(self._X)  # [B, n] the current directions
        self._Gx = torch.zeros_like(self._X)  # [B, n] the gradients at the iterates
        self._dir = flat.new_zeros((b, 2))  # [B, 2] max|d| and g_x.d, taken when d is set (once per iteration)
        self._fresh = set(range(b))  # trials waiting for their first evaluation (the only one whose sum|g| is used)
        self._S = flat.new_empty((b, m, n))  # [B, m, n] s = t d, ring buffers of history_size slots
        self._Y = flat.new_empty((b, m, n))  # [B, m, n] y = g_new - g_x
        # stored products (float64): SY[i, a, b] = s_a . y_b, YY[i, a, b] = y_a . y_b, ro = 1 / (y.s)
        self._on_host = bool(small_on_host)
        small = torch.device("cpu") if self._on_host else flat.device
        self._SY = torch.zeros((b, m, m), dtype=torch.float64, device=small)
        self._YY = torch.zeros_like(self._SY)
        self._ro = torch.zeros((b, m), dtype=torch.float64, device=small)
        self._count, self._head = [0] * b, [0] * b  # pairs stored; the slot the next pair goes to
        self._void: set[int] = set()
        self._index_cache: dict[tuple[int, ...], Tensor] = {}
        self._gens: dict[int, _TrialSteps] = {}
        self._pending: dict[int, Tensor] = {}  # trial -> the [n] point to evaluate
        self._tol = (tolerance_grad, tolerance_change)
        for i in range(b):
            self._gens[i] = self._trial(i, **{name: v[i] for name, v in hyper.items() if name != "history_size"})
            self._pending[i] = self._point(i, next(self._gens[i]))

    # -- the driver's interface

    def ask(self) -> list[tuple[int, Tensor]]:
        self._asked = list(self._running)
        return [(i, self._pending[i].view(self._shape)) for i in self._asked]

    def measure(self, grads: Tensor) -> Tensor:
        """The [k, 7] measures of the asked points' gradients (device; in the order of ask())."""
        k = len(self._asked)
        G = grads.detach().reshape(k, -1)
        idx = self._index(self._asked)
        D = self._D if idx is None else self._D.index_select(0, idx)
        Gx = self._Gx if idx is None else self._Gx.index_select(0, idx)
        direction = self._dir if idx is None else self._dir.index_select(0, idx)  # [k, 2]
        Y = G - Gx
        # abs().amax() rather than vector_norm(inf): the latter is 15x slower on the CPU
        G_abs = G.abs()
        gsum = G_abs.sum(1) if self._fresh.intersection(self._asked) else G.new_zeros(k)
        return torch.stack([_rowdot(G, D), G_abs.amax(1), gsum, _rowdot(Y, D), _rowdot(Y, Y),
                            direction[:, 0], direction[:, 1]], 1)

    def tell(self, losses: Sequence[float], grads: Tensor, measured: Sequence[Sequence[float]] | None = None) -> list[int]:
        """Hand each trial its evaluation; returns the trials whose evaluation was void (see the class)."""
        G = self._check_tell(losses, grads)
        if measured is None:
            # host synchronisation; the runner passes the measures it brought over with the tick's one
            measured = self.measure(grads).tolist()
        asked, self._asked = self._asked, []
        void = []
        for j, i in enumerate(asked):
            if i not in self._gens:  # dropped after ask(): its row is ignored
                continue
            ev = _Eval._make([float(losses[j]), *map(float, measured[j]), G[j]])
            self._fresh.discard(i)
            try:
                request = self._gens[i].send(ev)
            except StopIteration as stop:
                self._end(i, stop.value)
            else:
                self._pending[i] = self._point(i, request)
            if i in self._void:
                void.append(i)
                self._void.discard(i)
        self._spend(asked, set(void))
        return void

    def drop(self, i: int, reason: str) -> None:
        if i in self._gens:  # a trial that already finished is not reported twice
            self._gens[i].close()
            self._end(i, reason)

    def state_bytes(self) -> int:
        """The optimiser's memory while trials run: iterates, directions, gradients, history, pending points."""
        if not self._gens:
            return 0
        pending = sum(p.nbytes for i, p in self._pending.items() if p.data_ptr() != self._X[i].data_ptr())
        return sum(t.nbytes for t in (self._X, self._D, self._Gx, self._S, self._Y, self._SY, self._YY)) + pending

    def history_bytes(self) -> int:
        """The history's share of state_bytes(): s and y, [B, m, n] each."""
        return self._S.nbytes + self._Y.nbytes if self._gens else 0

    # -- device work, per trial, launched without waiting

    def _end(self, i: int, reason: str) -> None:
        del self._gens[i], self._pending[i]
        self._finish(i, self._X[i].clone(), reason)
        if not self._gens:  # free the history with the last trial
            self._S = self._Y = self._X[:0]

    def _index(self, rows: list[int]) -> Tensor | None:
        """Rows of the [B, ...] tensors: None for all of them in order, else a cached index tensor
        (made once per set of running trials; the set changes only when a trial leaves)."""
        if rows == list(range(self._X.shape[0])):
            return None
        key = tuple(rows)
        if key not in self._index_cache:
            self._index_cache[key] = torch.tensor(rows, dtype=torch.long, device=self._X.device)
        return self._index_cache[key]

    def _point(self, i: int, t: float | None) -> Tensor:
        # None: x itself (a caller's in-place clamp persists, as on torch's parameter); else x + t d, new
        return self._X[i] if t is None else torch.add(self._X[i], self._D[i], alpha=t)

    def _direction(self, i: int, g: Tensor, t: float, ys: float | None, h_diag: float) -> None:
        """torch's direction update: store (s, y) if its curvature y.s passed (`ys`), g_x = g, and d = -H g."""
        m = self._m[i]
        if ys is not None:
            slot = self._head[i]
            torch.sub(g, self._Gx[i], out=self._Y[i, slot])
            torch.mul(self._D[i], t, out=self._S[i, slot])
            self._head[i] = (slot + 1) % m
            self._count[i] = min(self._count[i] + 1, m)
        self._Gx[i].copy_(g)
        c = self._count[i]
        if c == 0:
            torch.neg(g, out=self._D[i])
            self._directed(i)
            return
        S, Y = self._S[i, :c], self._Y[i, :c]  # [c, n], slot order
        if ys is not None:
            # [3, n], used transposed: S @ [n, 3]-contiguous is 2.7x slower on the CPU
            w = torch.stack([g, self._Y[i, slot], self._S[i, slot]]).T
            ms, my = self._products(S @ w, Y @ w)  # [c, 3]: s_a . (g, y_new, s_new), y_a . (...)
            self._SY[i, slot, :c] = my[:, 2]  # s_new . y_a
            self._SY[i, :c, slot] = ms[:, 1]  # s_a . y_new
            self._YY[i, slot, :c] = my[:, 1]
            self._YY[i, :c, slot] = my[:, 1]
            self._ro[i, slot] = 1.0 / ys
            sg, yg = ms[:, 0], my[:, 0]
        else:
            sg, yg = self._products(S @ g, Y @ g)
        # oldest first: slots in order, or rolled once the ring is full
        shift = self._head[i] if c == m else 0
        order = (lambda v, dims=(0,): torch.roll(v, [-shift] * len(dims), dims)) if shift else (lambda v, dims=(0,): v)
        a = order(self._SY[i, :c, :c], (0, 1))  # [c, c] s_a . y_b, a, b oldest first
        yy = order(self._YY[i, :c, :c], (0, 1))
        ro = order(self._ro[i, :c])
        sg, yg = order(sg), order(yg)
        # first loop, newest to oldest: al_a = ro_a s_a.(-g - sum_{b newer} al_b y_b)
        upper = torch.triu(a, 1) * ro[:, None]
        al = torch.linalg.solve_triangular(upper, (-ro * sg)[:, None], upper=True, unitriangular=True)[:, 0]
        # r0 = H0 q, q = -g - Y'al;  y_a . r0 = H0 (-y_a.g - sum_b al_b y_a.y_b)
        yr0 = h_diag * (-yg - yy @ al)
        # second loop, oldest to newest: be_a = ro_a y_a.(r0 + sum_{b older} (al_b - be_b) s_b)
        lower = torch.tril(a.T, -1)  # [a, b] = y_a . s_b for b older than a
        rhs = ro * (yr0 + lower @ al)
        be = torch.linalg.solve_triangular(lower * ro[:, None], rhs[:, None], upper=False, unitriangular=True)[:, 0]
        coef = al - be
        if shift:  # back to slot order
            al, coef = torch.roll(al, shift), torch.roll(coef, shift)
        d = self._D[i]
        if self._on_host:  # one copy to the device, in d's dtype (cast on the host: the device has no float64)
            coef, al = torch.stack([coef, al]).to(d.dtype).to(d.device).unbind(0)
        else:
            coef, al = coef.to(d.dtype), al.to(d.dtype)
        torch.mv(S.T, coef, out=d)  # S'c
        d.addmv_(Y.T, al, alpha=-h_diag)  # - H0 Y'al
        d.add_(g, alpha=-h_diag)  # - H0 g
        self._directed(i)

    def _products(self, s: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Products with the history from the device, in float64 where the stored ones live: with
        small_on_host, both in one copy to the host, cast there (the device may have no float64)."""
        if not self._on_host:
            return s.double(), y.double()
        k = s.shape[-1] if s.dim() > 1 else 1
        # host synchronisation (small_on_host only, for mps): once per trial and new direction
        both = torch.cat([s.reshape(s.shape[0], k), y.reshape(y.shape[0], k)], 1).cpu().double()  # [c, 2k]
        return both[:, :k].reshape(s.shape), both[:, k:].reshape(y.shape)

    def _directed(self, i: int) -> None:
        """Take max|d| and g_x.d of a new direction, for the measures of the iteration's evaluations."""
        d = self._D[i]
        self._dir[i, 0] = d.abs().amax()
        self._dir[i, 1] = self._Gx[i].dot(d)

    # -- each trial's decisions, on the host: `lbfgs()` with its tensors replaced by measures

    def _trial(self, i: int, *, lr, max_iter, max_eval, line_search) -> _TrialSteps:
        """Yields None (evaluate x) or t (evaluate x + t d); is sent an _Eval; returns why it stopped."""
        tolerance_grad, tolerance_change = self._tol
        X, D = self._X[i], self._D[i]
        ev = yield None  # torch: orig_loss = closure()
        loss, current_evals = ev.f, 1
        if ev.gmax <= tolerance_grad:
            return "gradient tolerance"
        self._Gx[i].copy_(ev.g)
        flat = ev  # the evaluation whose gradient is g_x
        t, h_diag, reason, n_iter = 0.0, 1.0, "max_iter", 0
        while n_iter < max_iter:
            n_iter += 1
            if n_iter == 1:
                torch.neg(self._Gx[i], out=D)
                self._directed(i)
            else:
                ys = t * flat.yd  # y.s with s = t d
                if ys > 1e-10:  # curvature condition; otherwise the pair is skipped
                    h_diag = ys / flat.yy
                self._direction(i, flat.g, t, ys if ys > 1e-10 else None, h_diag)
            prev_loss = loss
            t = min(1.0, 1.0 / flat.gsum) * lr if n_iter == 1 else lr

            if not line_search and n_iter == max_iter:
                # torch steps without evaluating after its last iteration: no evaluation to carry the
                # descent test, so it is read from the device (once, at the trial's end)
                if float(self._dir[i, 1]) > -tolerance_change:  # host synchronisation, once per trial
                    return "no descent direction"
                X.add_(D, alpha=t)
                self._average(i, X)
                return "max_iter"
            ev = yield t  # the first point of the iteration, x + t d
            if ev.gtd_x > -tolerance_change:  # torch tests before evaluating: this evaluation is void
                self._void.add(i)
                reason = "no descent direction"
                break
            if line_search:
                # gradients travel through the search as the _Eval of their evaluation
                search = _wolfe_search((ev.f, ev.gtd, ev), t, loss, flat, ev.gtd_x, ev.dmax,
                                       tolerance_change=tolerance_change, max_ls=max_eval - current_evals)
                try:
                    t = next(search)
                    while True:
                        new = yield t
                        t = search.send((new.f, new.gtd, new))
                except StopIteration as stop:
                    loss, flat, t, ls_func_evals = stop.value
                X.add_(D, alpha=t)
                self._average(i, X)
                opt_cond = flat.gmax <= tolerance_grad
            else:
                X.copy_(self._pending[i])  # x + t d as the caller left it (clamped in place)
                self._average(i, X)
                loss, flat, ls_func_evals = ev.f, ev, 1
                opt_cond = ev.gmax <= tolerance_grad
            current_evals += ls_func_evals

            reason = _stop_reason(n_iter == max_iter, current_evals >= max_eval, opt_cond, t * ev.dmax,
                                  abs(loss - prev_loss), tolerance_change)
            if reason:
                break
        return reason
