"""The reference L-BFGS: a line-by-line port of torch.optim.LBFGS, the oracle the vectorised
optimiser (nst.optimizers.BatchLBFGS) is tested against.

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

`PerTrialLBFGS` drives B such generators with the runner's optimiser interface (ask, measure, tell,
drop, finished): every point equals torch.optim.LBFGS's bit for bit, at the price of torch's own cost.
Only the tests and `benchmarks/optimizer.py` use it.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import torch
from torch import Tensor

from nst.optimizers import _Batch, _per_trial, _stop_reason, _wolfe_search

# yields a point to evaluate, is sent (loss, grad), returns why it stopped
LBFGSGen = Generator[Tensor, tuple[float, Tensor], str]


def _strong_wolfe(x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """torch's `_strong_wolfe`; each `obj_func(x, t, d)` is `yield x.add(d, alpha=t)`.

    Returns (f, g, t, evaluations) of the low end of the final bracket.
    """
    d_norm = d.abs().max()
    g = g.clone(memory_format=torch.contiguous_format)
    # a fresh tensor per trial point: the caller may clamp it, and x must stay x_init. The gradients
    # sent back are fresh tensors too, so torch's defensive clones of them are not needed.
    f_new, g_new = yield x.add(d, alpha=t)
    search = _wolfe_search((f_new, g_new.dot(d), g_new), t, f, g, gtd, d_norm, c1, c2, tolerance_change, max_ls)
    try:
        t = next(search)
        while True:
            f_new, g_new = yield x.add(d, alpha=t)
            t = search.send((f_new, g_new.dot(d), g_new))
    except StopIteration as stop:
        return stop.value


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

        reason = _stop_reason(n_iter == max_iter, current_evals >= max_eval, opt_cond,
                              d.mul(t).abs().max(), abs(loss - prev_loss), tolerance_change)
        if reason:
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


class PerTrialLBFGS(_Batch):
    """B trials, each its own `lbfgs()` generator over its own flat copy of x0[i].

    The reference: every point equals torch.optim.LBFGS's bit for bit, at the price of torch's
    own cost (a kernel and a host sync per history pair and per line-search decision, per trial).
    The runner uses the vectorised `BatchLBFGS`, which is tested against this one.
    """

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

    def measure(self, grads: Tensor) -> None:
        return None  # nothing to measure ahead of tell()

    def tell(self, losses: Sequence[float], grads: Tensor, measured: Any = None) -> list[int]:
        flat = self._check_tell(losses, grads)
        asked, self._asked = self._asked, []
        for j, i in enumerate(asked):
            if i not in self._gens:  # dropped after ask(): its row is ignored
                continue
            try:
                self._pending[i] = self._gens[i].send((float(losses[j]), flat[j].clone()))
            except StopIteration as stop:
                self._end(i, stop.value)
        return []  # every evaluation counts

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

    def history_bytes(self) -> int:
        return sum(t.nbytes for i in self._gens
                   for t in (*self._state[i].get("old_dirs", []), *self._state[i].get("old_stps", [])))
