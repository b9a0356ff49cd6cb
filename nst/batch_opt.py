"""Per-trial optimisers for sweeps run as batches, in reverse-communication form.

Each trial keeps its own optimiser state and asks for its own points; a runner stacks the points of
all running trials, evaluates them in one batch and hands every trial its own loss and gradient.
One optimiser over the summed batch loss would share history, step size and stopping between
trials, a different algorithm (DESIGN.md "Sweeps as batches").

`lbfgs()` is a line-by-line port of ONE `torch.optim.LBFGS([x], ...).step(closure)` call of torch
2.14 (torch/optim/lbfgs.py), with every `closure()` / `obj_func()` call turned into a `yield`
(BoTorch's batched L-BFGS-B is the model). It keeps torch's semantics:
- one `step()`: at most `max_iter` iterations and about `max_eval` evaluations (torch's
  `func_evals`), tolerances `tolerance_grad` (inf-norm of g) and `tolerance_change` (directional
  derivative, step inf-norm, loss change) with torch's defaults, checked in torch's order;
- the strong-Wolfe line search gets `max_ls = max_eval - current_evals` as torch 2.14 passes it
  (older torch always allowed 25). It evaluates once before counting, so an iteration with a line
  search may end one evaluation past `max_eval`, exactly as torch does;
- the history is lists of [n] tensors (y, s, 1/ys), updated only when `ys > 1e-10`, at most
  `history_size` pairs; H_diag = ys / y.y; the two-loop recursion with torch's single buffer;
- the first step is `min(1, 1/|g|_1) * lr`, later ones `lr`; without a line search the new point
  is re-evaluated except after the last iteration (so the final x is then not evaluated);
- the same tensor ops, dtype, `float()` conversions and order as torch, so iterates agree with
  torch.optim.LBFGS up to float noise (0-dim float32 tensors such as gtd, ys, t stay tensors).
Not kept: state across several `step()` calls (a trial is one call), `maximize`, parameter lists.

`BatchLBFGS` and `BatchAdam` drive B trials with one interface: ask() the (trial, point) pairs to
evaluate, tell() their losses and gradients, drop() a trial, collect finished() ones.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import torch
from torch import Tensor

# yields a point to evaluate, is sent (loss, grad), returns why it stopped
LBFGSGen = Generator[Tensor, tuple[float, Tensor], str]


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    # verbatim from torch/optim/lbfgs.py: arguments mix Python floats and 0-dim tensors
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = d2_square.sqrt()
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """torch's `_strong_wolfe`; each `obj_func(x, t, d)` is `yield x.add(d, alpha=t)`.

    Returns (f, g, t, evaluations) of the low end of the final bracket.
    """
    d_norm = d.abs().max()
    g = g.clone(memory_format=torch.contiguous_format)
    # a fresh tensor per trial point: the caller may clamp it, and x must stay x_init
    f_new, g_new = yield x.add(d, alpha=t)
    ls_func_evals = 1
    gtd_new = g_new.dot(d)

    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        # extrapolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev = tmp, f_new
        g_prev = g_new.clone(memory_format=torch.contiguous_format)
        gtd_prev = gtd_new
        f_new, g_new = yield x.add(d, alpha=t)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
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

        f_new, g_new = yield x.add(d, alpha=t)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo fails or not lower than the low end: new high end
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[high_pos] = gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # old high becomes new low
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[low_pos] = gtd_new

    # the low end, not necessarily the last point evaluated
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


def _lbfgs(x: Tensor, state: dict[str, Any], *, lr, max_iter, max_eval, history_size, line_search,
           tolerance_grad, tolerance_change) -> LBFGSGen:
    # `state` exposes the history to the driver (for state_bytes); torch keeps the same in opt.state
    loss, flat_grad = yield x  # torch: orig_loss = closure()
    loss = float(loss)
    current_evals = 1
    if flat_grad.abs().max() <= tolerance_grad:
        return "gradient tolerance"

    d = t = prev_flat_grad = None
    reason = "max_iter"  # only if max_iter < 1: the loop below ends through one of its breaks
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1

        # direction
        if n_iter == 1:
            d = flat_grad.neg()
            old_dirs, old_stps, ro = [], [], []
            H_diag = 1
            al = [None] * history_size
            state.update(old_dirs=old_dirs, old_stps=old_stps)
        else:
            y = flat_grad.sub(prev_flat_grad)
            s = d.mul(t)
            ys = y.dot(s)
            if ys > 1e-10:  # curvature condition; otherwise the pair is skipped
                if len(old_dirs) == history_size:
                    old_dirs.pop(0)
                    old_stps.pop(0)
                    ro.pop(0)
                old_dirs.append(y)
                old_stps.append(s)
                ro.append(1.0 / ys)
                H_diag = ys / y.dot(y)
            num_old = len(old_dirs)
            # two-loop recursion with one buffer, as torch
            q = flat_grad.neg()
            for i in range(num_old - 1, -1, -1):
                al[i] = old_stps[i].dot(q) * ro[i]
                q.add_(old_dirs[i], alpha=-al[i])
            d = r = torch.mul(q, H_diag)
            for i in range(num_old):
                be_i = old_dirs[i].dot(r) * ro[i]
                r.add_(old_stps[i], alpha=al[i] - be_i)

        if prev_flat_grad is None:
            prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
        else:
            prev_flat_grad.copy_(flat_grad)
        prev_loss = loss
        state.update(d=d, prev_flat_grad=prev_flat_grad)

        # step length
        t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if n_iter == 1 else lr
        gtd = flat_grad.dot(d)
        if gtd > -tolerance_change:
            reason = "no descent direction"
            break

        ls_func_evals = 0
        if line_search:
            # x is read here, after every yield: a caller's in-place clamp of x has to count
            x_init = x.clone(memory_format=torch.contiguous_format)
            loss, flat_grad, t, ls_func_evals = yield from _strong_wolfe(
                x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals)
            # torch restores the parameter to x_init after each trial point, then adds t*d; the
            # trial points here were separate tensors, so x still holds x_init
            x.add_(d, alpha=t)
            opt_cond = flat_grad.abs().max() <= tolerance_grad
        else:
            x.add_(d, alpha=t)
            if n_iter != max_iter:  # torch does not evaluate after the last iteration
                loss, flat_grad = yield x
                loss = float(loss)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
                ls_func_evals = 1
        current_evals += ls_func_evals

        # stop conditions, in torch's order
        if n_iter == max_iter:
            reason = "max_iter"
            break
        if current_evals >= max_eval:
            reason = "max_eval"
            break
        if opt_cond:
            reason = "gradient tolerance"
            break
        if d.mul(t).abs().max() <= tolerance_change:
            reason = "step tolerance"
            break
        if abs(loss - prev_loss) < tolerance_change:
            reason = "loss change tolerance"
            break
    return reason


def lbfgs(x: Tensor, *, lr, max_iter, max_eval, history_size, line_search, tolerance_grad=1e-7,
          tolerance_change=1e-9) -> LBFGSGen:
    """One torch.optim.LBFGS step() over the flat [n] tensor `x`, updated in place.

    Yields the point to evaluate: `x` itself for torch's closure() calls, a new tensor x + t*d for a
    line-search point. The caller may change the yielded tensor in place before evaluating it (a
    change to `x` persists, one to a line-search point is discarded) and sends (loss, grad[n]); the
    grad tensor is kept, so send a fresh one. Returns the reason it stopped.
    """
    return (yield from _lbfgs(x, {}, lr=lr, max_iter=max_iter, max_eval=max_eval, history_size=history_size,
                              line_search=line_search, tolerance_grad=tolerance_grad,
                              tolerance_change=tolerance_change))


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
    """Bookkeeping common to both drivers: which trials run, which finished and why."""

    def __init__(self, x0: Tensor):
        self._shape = x0.shape[1:]
        self._running: list[int] = list(range(x0.shape[0]))
        self._finished: list[tuple[int, Tensor, str]] = []
        self._asked: list[int] = []  # trial indices of the last ask(), in order

    @property
    def running(self) -> list[int]:
        return list(self._running)

    def finished(self) -> list[tuple[int, Tensor, str]]:
        out, self._finished = self._finished, []
        return out

    def _finish(self, i: int, flat: Tensor, reason: str) -> None:
        self._running.remove(i)
        self._finished.append((i, flat.view(self._shape), reason))

    def _check_tell(self, losses: Sequence[float], grads: Tensor) -> Tensor:
        k = len(self._asked)
        if len(losses) != k or grads.shape[0] != k:
            raise ValueError(f"tell() got {len(losses)} losses and {grads.shape[0]} gradients for {k} asked points")
        return grads.detach().reshape(k, -1)  # [k, n]


class BatchLBFGS(_Batch):
    """B trials, each its own `lbfgs()` generator over its own flat copy of x0[i]."""

    def __init__(self, x0: Tensor, *, lr, max_iter, max_eval, history_size, line_search):
        super().__init__(x0)
        b = x0.shape[0]
        hyper = {name: _per_trial(v, b, name) for name, v in dict(
            lr=lr, max_iter=max_iter, max_eval=max_eval, history_size=history_size, line_search=line_search).items()}
        self._x = [x0[i].detach().reshape(-1).clone(memory_format=torch.contiguous_format) for i in range(b)]  # [n]
        self._state: dict[int, dict[str, Any]] = {i: {} for i in range(b)}
        self._gens: dict[int, LBFGSGen] = {}
        self._pending: dict[int, Tensor] = {}  # trial -> the [n] point its generator yielded
        for i in range(b):
            kw = {name: v[i] for name, v in hyper.items()}
            gen = _lbfgs(self._x[i], self._state[i], tolerance_grad=1e-7, tolerance_change=1e-9, **kw)
            self._gens[i] = gen
            self._pending[i] = next(gen)  # always the first closure() call

    def ask(self) -> list[tuple[int, Tensor]]:
        self._asked = list(self._running)
        return [(i, self._pending[i].view(self._shape)) for i in self._asked]

    def tell(self, losses: Sequence[float], grads: Tensor) -> None:
        flat = self._check_tell(losses, grads)
        asked, self._asked = self._asked, []
        for j, i in enumerate(asked):
            if i not in self._gens:  # dropped after ask(): its row is ignored
                continue
            try:
                self._pending[i] = self._gens[i].send((float(losses[j]), flat[j].clone()))
            except StopIteration as stop:
                self._end(i, stop.value)

    def drop(self, i: int, reason: str) -> None:
        if i in self._gens:  # a trial that already finished is not reported twice
            self._gens[i].close()
            self._end(i, reason)

    def _end(self, i: int, reason: str) -> None:
        del self._gens[i], self._pending[i]
        self._state[i].clear()  # frees the history with the generator
        self._finish(i, self._x[i], reason)

    def state_bytes(self) -> int:
        total = 0
        for i in self._gens:
            st = self._state[i]
            tensors = [*st.get("old_dirs", []), *st.get("old_stps", []), st.get("d"), st.get("prev_flat_grad")]
            total += sum(t.nbytes for t in tensors if t is not None)
        return total


class BatchAdam(_Batch):
    """B trials of elementwise Adam, vectorised: moments [k, n] and hyper-parameters [k, 1] for the k running."""

    def __init__(self, x0: Tensor, *, lr, betas, max_iter, eps=1e-8):
        super().__init__(x0)
        b = x0.shape[0]
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

    def tell(self, losses: Sequence[float], grads: Tensor) -> None:
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
        neg_step_size = self._column([-(self._lr[i] / c) for i, c in zip(self._rows, bc1)])
        bc2_sqrt = self._column([c**0.5 for c in bc2])

        self._exp_avg.lerp_(g, self._w1)
        # torch: addcmul_(g, g, value=1-beta2) = self + (value*g)*g, the same products as below
        self._exp_avg_sq.mul_(self._beta2_t).addcmul_(g * self._w2, g)
        denom = (self._exp_avg_sq.sqrt() / bc2_sqrt).add_(self._eps)
        # torch: addcdiv_(exp_avg, denom, value=-step_size) = self + (value*exp_avg)/denom
        self._param.addcdiv_(self._exp_avg * neg_step_size, denom)

        for r, i in enumerate(self._rows):
            if i in self._running and self._steps[i] >= self._max_iter[i]:
                self._finish(i, self._param[r].clone(), "max_iter")

    def drop(self, i: int, reason: str) -> None:
        if i in self._running:
            self._finish(i, self._param[self._rows.index(i)].clone(), reason)

    def state_bytes(self) -> int:
        self._compact()
        return self._exp_avg.nbytes + self._exp_avg_sq.nbytes

