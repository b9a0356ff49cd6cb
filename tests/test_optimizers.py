"""Per-trial batched optimisers give, for each trial, what torch's optimiser gives for it alone.

Analytic per-trial objectives (chained Rosenbrock with per-trial a, b; diagonal quadratics), evaluated
for all running trials in one vectorised call per ask(); each trial is compared with its own
torch.optim run. Points are compared element-wise with an absolute tolerance (they are O(1)).
"""

from __future__ import annotations

import pytest
import torch
import torch.optim.lbfgs as torch_lbfgs

from lbfgs_oracle import PerTrialLBFGS, lbfgs
from nst.optimizers import BatchAdam, BatchLBFGS

N = 6  # variables per trial
ATOL_LBFGS = 1e-5
ATOL_ADAM = 1e-6


def objective(x: torch.Tensor, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: w * chained Rosenbrock(a, b) + 0.5 * sum(h * x^2); x [k, N] -> f [k], g [k, N].

    Only elementwise ops and per-row sums, so a row does not depend on the other rows.
    """
    x0, x1 = x[:, :-1], x[:, 1:]
    r, u = x1 - x0**2, p["a"] - x0
    f = (p["w"] * (p["b"] * r**2 + u**2)).sum(1) + 0.5 * (p["h"] * x**2).sum(1)
    g = p["h"] * x
    g[:, :-1] += p["w"] * (-4 * p["b"] * x0 * r - 2 * u)
    g[:, 1:] += p["w"] * (2 * p["b"] * r)
    return f, g


def problems(specs: list[tuple]) -> dict[str, torch.Tensor]:
    """specs: ("rosen", a, b) or ("quad", h) per trial -> parameter tensors [B, 1] / [B, N].

    A quadratic 0.5 * h * |x|^2 has its minimum at 0, where float32 is dense enough to reach |g| <= 1e-7.
    """
    a, b, w, h = [], [], [], []
    for s in specs:
        rosen = s[0] == "rosen"
        a.append(s[1] if rosen else 0.0), b.append(s[2] if rosen else 0.0), w.append(float(rosen))
        h.append([0.0 if rosen else s[1]] * N)

    def col(v: list[float]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float32).unsqueeze(1)  # [B, 1]

    return {"a": col(a), "b": col(b), "w": col(w), "h": torch.tensor(h, dtype=torch.float32)}


def rows(p: dict[str, torch.Tensor], idx: list[int]) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in p.items()}


def torch_lbfgs_alone(x0, p, *, box=None, **hyper) -> dict:
    """One torch.optim.LBFGS step() on one trial; records every point its closure evaluates."""
    x = x0.detach().reshape(-1).clone().requires_grad_(True)  # [N]
    points, clamped, ls_evals = [], [], []

    def closure():
        with torch.no_grad():
            before = x.detach().clone()
            if box is not None:
                x.clamp_(*box)  # in place, as users project pixels
            clamped.append(not torch.equal(before, x))
        points.append(x.detach().clone())
        f, g = objective(x.detach().unsqueeze(0), p)
        x.grad = g[0].clone()
        return f[0]

    original = torch_lbfgs._strong_wolfe

    def counting(*args, **kwargs):  # records how many evaluations each line search made
        out = original(*args, **kwargs)
        ls_evals.append(out[3])
        return out

    opt = torch.optim.LBFGS([x], lr=hyper["lr"], max_iter=hyper["max_iter"], max_eval=hyper["max_eval"],
                            history_size=hyper["history_size"],
                            line_search_fn="strong_wolfe" if hyper["line_search"] else None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch_lbfgs, "_strong_wolfe", counting)
        opt.step(closure)
    state = opt.state[x]
    return {"points": points, "final": x.detach().clone(), "func_evals": state["func_evals"],
            "n_iter": state["n_iter"], "ls_evals": ls_evals, "clamped": clamped}


def drive(opt, p, *, box=None, on_tick=None) -> dict:
    """The runner's loop: one vectorised evaluation of all asked points per tick."""
    asked = {i: [] for i in opt.running}
    done, batch_sizes, clamped, voided, tick = {}, [], [], [], 0
    while opt.running:
        pairs = opt.ask()
        idx = [i for i, _ in pairs]
        assert idx == sorted(idx) == opt.running
        for _, pt in pairs:
            before = pt.clone()
            if box is not None:
                pt.clamp_(*box)  # in place, on the tensor the optimiser handed out
            clamped.append(not torch.equal(before, pt))
        stack = torch.stack([pt.reshape(-1) for _, pt in pairs])  # [k, N]
        for i, pt in pairs:
            asked[i].append(pt.detach().clone().reshape(-1))
        f, g = objective(stack, rows(p, idx))
        batch_sizes.append(len(pairs))
        if on_tick is not None:
            on_tick(opt, tick, "before tell")
        void = opt.tell(f.tolist(), g.reshape(len(pairs), 2, N // 2))  # rows shaped like x0[i]
        for i in void:  # an evaluation torch would not have made: it does not count
            asked[i].pop()
            voided.append(i)
        for i, xf, why in opt.finished():
            assert i not in done
            done[i] = (xf.reshape(-1).clone(), why)
        if on_tick is not None:
            on_tick(opt, tick, "after tell")
        tick += 1
    for i, xf, why in opt.finished():  # a drop in on_tick after the last tell
        assert i not in done
        done[i] = (xf.reshape(-1).clone(), why)
    return {"asked": asked, "done": done, "batch_sizes": batch_sizes, "clamped": clamped, "voided": voided}


def assert_same_points(ours: list[torch.Tensor], theirs: list[torch.Tensor], atol: float) -> None:
    assert len(ours) == len(theirs)
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))
    assert diff <= atol, diff


def start_points(b: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 2, N // 2, generator=gen) * 2 - 1.2).float()  # [B, 2, 3]: not flat, on purpose


# (problem, history_size, max_eval, lr, stop reason with a line search, without)
TRIALS = [
    (("rosen", 1.0, 300.0), 100, 500, 1.0, "max_iter", "max_iter"),
    (("rosen", 2.0, 200.0), 5, 500, 0.5, "max_iter", "max_iter"),
    # the line search extrapolates several times per iteration; with a fixed step, y.s stays below
    # torch's absolute 1e-10 curvature threshold, no pair is stored and it crawls to max_iter
    (("quad", 1e-4), 10, 500, 1.0, "gradient tolerance", "max_iter"),
    (("quad", 1.0), 3, 500, 1.0, "gradient tolerance", "gradient tolerance"),
    (("rosen", 1.0, 100.0), 100, 9, 0.5, "max_eval", "max_eval"),
    (("quad", 5.0), 3, 500, 1.0, "gradient tolerance", "gradient tolerance"),  # starts at its minimum
    # its first line search wants more evaluations than max_eval leaves: torch 2.14 caps it
    (("quad", 1e-4), 10, 4, 1.0, "max_eval", "max_eval"),
    # from x0[2], its last line search is cut by the budget in the zoom and returns the low end of the
    # bracket, not the last point it evaluated
    (("rosen", 2.0, 200.0), 2, 10, 1.0, "max_eval", "max_eval"),
]


# the per-trial port makes torch's very float32 operations; the vectorised one sums in another order
# (batched products, stored products, double scalars), which on the 50-iteration Rosenbrock trials
# grows like any rounding difference: it is compared with torch in float64, where that stays tiny
DRIVERS = {"per-trial, float32": (PerTrialLBFGS, torch.float32), "vectorised, float64": (BatchLBFGS, torch.float64)}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("mode", ["line search", "fixed step", "mixed"])
def test_batch_lbfgs_matches_torch_per_trial(mode, driver):
    cls, dtype = DRIVERS[driver]
    b = len(TRIALS)
    p = {k: v.to(dtype) for k, v in problems([t[0] for t in TRIALS]).items()}
    x0 = start_points(b).to(dtype)
    x0[5] = 0.0
    x0[7] = x0[2]
    line_search = {"line search": [True] * b, "fixed step": [False] * b, "mixed": [True, False] * (b // 2)}[mode]
    hyper = dict(lr=[t[3] for t in TRIALS], max_iter=50, max_eval=[t[2] for t in TRIALS],
                 history_size=[t[1] for t in TRIALS], line_search=line_search)
    ours = drive(cls(x0, **hyper), p)

    assert sorted(ours["done"]) == list(range(b))
    assert ours["batch_sizes"][0] == b and ours["batch_sizes"][-1] < b  # the batch shrank as trials finished
    ls_evals, ended_off_last = {}, []
    for i, (_, _, max_eval, _, with_ls, without_ls) in enumerate(TRIALS):
        alone = {k: (v[i] if isinstance(v, list) else v) for k, v in hyper.items()}
        ref = torch_lbfgs_alone(x0[i], rows(p, [i]), **alone)
        assert_same_points(ours["asked"][i], ref["points"], ATOL_LBFGS)
        assert len(ours["asked"][i]) == ref["func_evals"]  # the evaluation counts agree
        final, reason = ours["done"][i]
        assert float((final - ref["final"]).abs().max()) <= ATOL_LBFGS
        expected = with_ls if line_search[i] else without_ls
        assert reason == expected
        # the reason is what torch's own state says
        if expected == "max_iter":
            assert ref["n_iter"] == 50 and ref["func_evals"] >= 50
        elif expected == "max_eval":
            assert ref["n_iter"] < 50 and ref["func_evals"] >= max_eval
        else:
            _, g = objective(ref["final"].unsqueeze(0), rows(p, [i]))
            assert g.abs().max() <= 1e-7 and ref["n_iter"] < 50 and ref["func_evals"] < max_eval
        if i == 5:  # returned right after its first evaluation, as torch's step() does
            assert ref["func_evals"] == 1 and ref["n_iter"] == 0
        else:
            assert len(torch.stack(ref["points"]).unique(dim=0)) > 1  # it moved
        if line_search[i] and ref["ls_evals"]:
            ls_evals[i] = ref["ls_evals"]
            ended_off_last.append(not torch.equal(ref["final"], ref["points"][-1]))
        if line_search[i] and i == 6:  # the capped line search: one evaluation past max_eval, as torch
            assert ref["func_evals"] == max_eval + 1 and ref["n_iter"] == 1
    if ls_evals:
        # the trials were out of step: at some iteration their line searches took different numbers
        # of evaluations, and some took more than one
        assert max(max(v) for v in ls_evals.values()) > 1
        assert any(u[j] != v[j] for u in ls_evals.values() for v in ls_evals.values()
                   for j in range(min(len(u), len(v))))
    if mode == "line search":
        assert any(ended_off_last)


@pytest.mark.parametrize("mode", ["line search", "fixed step"])
def test_vectorised_lbfgs_matches_the_per_trial_port_in_float32(mode):
    """The runner's precision: on the trials that stop within a few iterations (where rounding has no
    time to grow) the vectorised optimiser asks for the port's points and stops for its reasons."""
    short = [2, 4, 5, 6, 7]
    p = problems([TRIALS[i][0] for i in short])
    x0 = start_points(len(TRIALS))
    x0[5] = 0.0
    x0[7] = x0[2]
    x0 = x0[short]
    hyper = dict(lr=[TRIALS[i][3] for i in short], max_iter=50, max_eval=[TRIALS[i][2] for i in short],
                 history_size=[TRIALS[i][1] for i in short], line_search=mode == "line search")
    vec, ref = drive(BatchLBFGS(x0, **hyper), p), drive(PerTrialLBFGS(x0, **hyper), p)
    for i in range(len(short)):
        assert len(vec["asked"][i]) == len(ref["asked"][i])
        assert_same_points(vec["asked"][i], ref["asked"][i], ATOL_LBFGS)
        assert vec["done"][i][1] == ref["done"][i][1]
        assert float((vec["done"][i][0] - ref["done"][i][0]).abs().max()) <= ATOL_LBFGS


@pytest.mark.parametrize("line_search", [True, False])
def test_a_void_evaluation_is_reported_and_the_counts_stay_torchs(line_search):
    """torch tests g.d > -tolerance_change before an iteration's first point; the vectorised optimiser
    learns g.d with that point's evaluation, so when the test fails the evaluation is void."""
    # g = 1e-5 in each of the N = 6 variables: above the gradient tolerance (1e-7), but g.d = -|g|^2 = -6e-10
    # is above -1e-9 in the first iteration
    p = {k: v.double() for k, v in problems([("quad", 1e-5), ("rosen", 0.5, 100.0)]).items()}
    x0 = torch.full((2, 2, N // 2), 1.0, dtype=torch.float64)  # float64: see DRIVERS
    hyper = dict(lr=1.0, max_iter=20, max_eval=40, history_size=5, line_search=line_search)
    ours = drive(BatchLBFGS(x0, **hyper), p)
    assert ours["voided"] == [0]
    assert ours["done"][0][1] == "no descent direction" and torch.equal(ours["done"][0][0], x0[0].reshape(-1))
    for i in range(2):
        ref = torch_lbfgs_alone(x0[i], rows(p, [i]), **hyper)
        assert len(ours["asked"][i]) == ref["func_evals"]
        assert_same_points(ours["asked"][i], ref["points"], ATOL_LBFGS)
    assert len(ours["asked"][0]) == 1 and len(ours["asked"][1]) > 1


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("line_search", [True, False])
def test_in_place_clamp_of_asked_points_matches_torch_closure_clamp(line_search, driver):
    cls, dtype = DRIVERS[driver]
    box = (-0.5, 0.7)  # excludes the Rosenbrock minima, so the clamp is active
    specs = [("rosen", 1.0, 100.0), ("rosen", 1.5, 20.0), ("rosen", 0.8, 10.0)]
    p = {k: v.to(dtype) for k, v in problems(specs).items()}
    x0 = start_points(3, seed=1).to(dtype)
    hyper = dict(lr=1.0 if line_search else 0.2, max_iter=50, max_eval=80, history_size=10,
                 line_search=line_search)
    ours = drive(cls(x0, **hyper), p, box=box)
    assert any(ours["clamped"])
    for i in range(3):
        ref = torch_lbfgs_alone(x0[i], rows(p, [i]), box=box, **hyper)
        assert any(ref["clamped"])
        assert_same_points(ours["asked"][i], ref["points"], ATOL_LBFGS)
        assert float((ours["done"][i][0] - ref["final"]).abs().max()) <= ATOL_LBFGS


def test_lbfgs_generator_yields_x_for_closure_calls_and_new_tensors_for_line_search_points():
    p = problems([("rosen", 1.0, 100.0)])
    x = start_points(1)[0].reshape(-1).clone()
    gen = lbfgs(x, lr=1.0, max_iter=5, max_eval=50, history_size=10, line_search=True)
    point, yielded = next(gen), []
    try:
        while True:
            yielded.append(point)
            f, g = objective(point.unsqueeze(0), p)
            point = gen.send((float(f[0]), g[0].clone()))
    except StopIteration as stop:
        reason = stop.value
    assert yielded[0] is x and all(pt is not x for pt in yielded[1:]) and len(yielded) > 5
    assert reason == "max_iter"

    x = start_points(1)[0].reshape(-1).clone()
    gen = lbfgs(x, lr=0.2, max_iter=3, max_eval=50, history_size=10, line_search=False)
    first = next(gen)
    f, g = objective(first.unsqueeze(0), p)
    second = gen.send((float(f[0]), g[0].clone()))
    assert first is x and second is x


def torch_adam_alone(x0, p, *, lr, betas, steps, foreach):
    x = x0.detach().reshape(-1).clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr, betas=betas, foreach=foreach)
    points = []
    for _ in range(steps):
        points.append(x.detach().clone())
        opt.zero_grad()
        _, g = objective(x.detach().unsqueeze(0), p)
        x.grad = g[0].clone()
        opt.step()
    return points, x.detach().clone()


ADAM = dict(lr=[0.01, 0.05, 0.002], betas=[(0.9, 0.999), (0.8, 0.99), (0.95, 0.9)], max_iter=[40, 15, 40])


@pytest.mark.parametrize("foreach", [False, True])
def test_batch_adam_matches_torch_per_trial(foreach):
    p = problems([("rosen", 1.0, 100.0), ("rosen", 1.5, 20.0), ("quad", 10.0)])
    x0 = start_points(3, seed=2)
    ours = drive(BatchAdam(x0, **ADAM), p)
    assert ours["batch_sizes"] == [3] * 15 + [2] * 25  # trial 1 left after its 15 steps
    for i in range(3):
        points, final = torch_adam_alone(x0[i], rows(p, [i]), lr=ADAM["lr"][i], betas=ADAM["betas"][i],
                                         steps=ADAM["max_iter"][i], foreach=foreach)
        assert_same_points(ours["asked"][i], points, ATOL_ADAM)
        assert float((ours["done"][i][0] - final).abs().max()) <= ATOL_ADAM
        assert ours["done"][i][1] == "max_iter"
        assert float((final - x0[i].reshape(-1)).abs().max()) > 1e-3  # it moved


@pytest.mark.parametrize("kind", ["lbfgs", "adam"])
def test_drop_removes_a_trial_and_the_others_continue_unchanged(kind):
    p = problems([("rosen", 1.0, 100.0), ("rosen", 1.5, 20.0), ("rosen", 0.5, 50.0), ("rosen", 0.8, 10.0)])
    x0 = start_points(4, seed=3)

    def make(idx):
        if kind == "lbfgs":
            return BatchLBFGS(x0[idx], lr=1.0, max_iter=30, max_eval=60, history_size=[[100, 5, 3, 10][i] for i in idx],
                              line_search=True)
        # trial 1 is dropped on what would have been its last step
        return BatchAdam(x0[idx], lr=[[0.01, 0.05, 0.002, 0.02][i] for i in idx], betas=(0.9, 0.999),
                         max_iter=[[30, 5, 30, 30][i] for i in idx])

    atol = ATOL_LBFGS if kind == "lbfgs" else ATOL_ADAM

    def on_tick(opt, tick, when):
        if tick == 4 and when == "before tell":  # between ask() and tell(): its result is not used
            opt.drop(1, "non-finite loss")
            opt.drop(1, "again")  # already gone: not reported twice
        if tick == 7 and when == "after tell":
            opt.drop(3, "interrupted")
            assert 3 not in opt.running and 3 not in [i for i, _ in opt.ask()]

    ours = drive(make([0, 1, 2, 3]), p, on_tick=on_tick)
    ref = drive(make([0, 2]), rows(p, [0, 2]))
    assert ours["done"][1][1] == "non-finite loss" and ours["done"][3][1] == "interrupted"
    assert len(ours["asked"][1]) == 5 and len(ours["asked"][3]) == 8
    if kind == "adam":  # a dropped trial ends where it stood: at its last asked point, not updated by the tell
        assert torch.equal(ours["done"][1][0], ours["asked"][1][-1])
    for mine, theirs in ((0, 0), (2, 1)):  # the reference run numbers its trials 0, 1
        assert_same_points(ours["asked"][mine], ref["asked"][theirs], atol)
        assert float((ours["done"][mine][0] - ref["done"][theirs][0]).abs().max()) <= atol
        assert ours["done"][mine][1] == ref["done"][theirs][1]
    assert len(ours["asked"][0]) > 8  # the others went on after the drops


@pytest.mark.parametrize("kind", ["lbfgs", "per-trial lbfgs", "adam"])
def test_ask_is_repeatable_and_state_is_per_trial(kind):
    p = problems([("rosen", 1.0, 100.0), ("rosen", 1.5, 20.0)])
    x0 = start_points(2, seed=4)
    hyper = dict(lr=[1.0, 1.0], max_iter=[20, 3], max_eval=100, history_size=4, line_search=False)
    adam = dict(lr=[0.01, 0.01], betas=[(0.9, 0.999), (0.5, 0.9)], max_iter=[20, 3])

    def run(idx):
        if kind == "adam":
            opt = BatchAdam(x0[idx], **{k: [v[i] for i in idx] for k, v in adam.items()})
        else:
            opt = (BatchLBFGS if kind == "lbfgs" else PerTrialLBFGS)(
                x0[idx], **{k: ([v[i] for i in idx] if isinstance(v, list) else v) for k, v in hyper.items()})
        sizes, seen = [], []
        while opt.running:
            a, b = opt.ask(), opt.ask()
            assert [i for i, _ in a] == [i for i, _ in b] and all(torch.equal(u, v) for (_, u), (_, v) in zip(a, b, strict=True))
            assert all(pt.shape == x0.shape[1:] for _, pt in a)
            sizes.append(opt.state_bytes())
            f, g = objective(torch.stack([pt.reshape(-1) for _, pt in a]), rows(p, [idx[i] for i, _ in a]))
            opt.tell(f.tolist(), g)
            seen += [i for i, _, _ in opt.finished()]
        assert sorted(seen) == list(range(len(idx))) and opt.finished() == [] and opt.state_bytes() == 0
        return sizes

    both, first, second = run([0, 1]), run([0]), run([1])
    assert len(both) == len(first) == 20 and len(second) == 3
    if kind == "lbfgs":
        # one allocation for the batch while any trial runs: x, d, g_x [B, N], the history s, y
        # [B, m, N] and their products [B, m, m] in float64, plus the pending points x + t d
        fixed = 2 * (3 * N * 4 + 2 * 4 * N * 4 + 2 * 4 * 4 * 8)
        assert both[0] == fixed and all(fixed <= v <= fixed + 2 * N * 4 for v in both)
        assert first[0] == fixed // 2 and second[0] == fixed // 2
        return
    # the batch holds each trial's own state, and frees a trial's when it leaves
    assert both == [u + (second[t] if t < len(second) else 0) for t, u in enumerate(first)]
    assert max(second) > 0
    if kind == "adam":
        assert both[0] == 2 * 2 * N * 4  # two float32 moments of N per trial


def test_the_budget_is_a_hard_cap_where_torch_max_eval_is_not():
    """torch's line search evaluates before it counts, so one step() may end one evaluation past
    max_eval; `budget` stops each trial at exactly its count, with its last accepted iterate."""
    p = problems([("rosen", 1.0, 100.0), ("rosen", 1.5, 20.0), ("quad", 10.0)])
    x0 = start_points(3, seed=5)
    hyper = dict(lr=1.0, max_iter=[7, 9, 11], max_eval=[7, 9, 11], history_size=10, line_search=True)
    free = drive(PerTrialLBFGS(x0, **hyper), p)  # torch's own semantics
    capped = drive(BatchLBFGS(x0, budget=[7, 9, 11], **hyper), p)
    assert any(len(free["asked"][i]) > cap for i, cap in enumerate([7, 9, 11]))  # torch goes past here
    for i, cap in enumerate([7, 9, 11]):
        assert len(capped["asked"][i]) <= cap
        if len(free["asked"][i]) > cap:
            assert len(capped["asked"][i]) == cap and capped["done"][i][1] == "evaluation budget"
        # the points it did evaluate are torch's
        assert_same_points(capped["asked"][i], free["asked"][i][:len(capped["asked"][i])], ATOL_LBFGS)


# --- iterate averaging -------------------------------------------------------------------------------

def _ema(points: list[torch.Tensor], d: float) -> torch.Tensor:
    """The bias-corrected moving average of points x_0 .. x_n in closed form (float64):
    sum_k (1 - d) d^(n-k) x_k / (1 - d^(n+1))."""
    n = len(points) - 1
    total = sum((1 - d) * d ** (n - k) * p.double() for k, p in enumerate(points))
    return total / (1 - d ** (n + 1))


@pytest.mark.parametrize("kind", ["adam", "lbfgs"])
def test_iterate_averaging_is_the_bias_corrected_average_of_the_iterates_per_trial(kind):
    p = problems([("rosen", 1.0, 100.0), ("rosen", 1.5, 20.0), ("quad", 3.0)])
    x0 = start_points(3, seed=5)
    decay = [0.0, 0.9, 0.5]

    def make(average_decay):
        if kind == "adam":
            return BatchAdam(x0, lr=[0.05, 0.05, 0.02], betas=(0.9, 0.999), max_iter=[12, 9, 12], average_decay=average_decay)
        # without a line search every evaluation but the first ends an iteration, and the last
        # iteration steps without evaluating: the iterates are the asked points and the final one
        return BatchLBFGS(x0, lr=0.5, max_iter=[12, 9, 12], max_eval=100, history_size=5, line_search=False,
                          average_decay=average_decay)

    first = make(decay)
    for i, d in enumerate(decay):  # the start is the first update: the average is the start itself
        assert first.average(i) is None if d == 0 else torch.equal(first.average(i), x0[i].clamp(0, 1))
    plain, averaged = drive(make(0.0), p, box=(0, 1)), drive(first, p, box=(0, 1))
    for i, d in enumerate(decay):
        # averaging does not change the path, and a trial without it ends exactly where it did
        assert all(torch.equal(a, b) for a, b in zip(plain["asked"][i], averaged["asked"][i], strict=True))
        if d == 0:
            assert torch.equal(plain["done"][i][0], averaged["done"][i][0])
            continue
        iterates = plain["asked"][i] + [plain["done"][i][0].clamp(0, 1)]
        assert len(iterates) == [12, 9, 12][i] + 1
        expected = _ema(iterates, d)
        assert float((averaged["done"][i][0].double() - expected).abs().max()) < 1e-6
        assert float((averaged["done"][i][0] - plain["done"][i][0]).abs().max()) > 1e-3  # it is not the last iterate


def test_the_average_of_a_known_sequence_by_hand():
    # d = 0.5, x0 = 0.2 then 0.6: the moving sum 0.5 * 0.2 = 0.1, then 0.5 * 0.1 + 0.5 * 0.6 = 0.35; bias-corrected / (1 - 0.25)
    x0 = torch.full((1, 2, 3), 0.2)
    opt = BatchAdam(x0, lr=0.1, betas=(0.9, 0.999), max_iter=5, average_decay=0.5)
    opt._average(0, torch.full((2, 3), 0.6))
    assert torch.allclose(opt.average(0), torch.full((2, 3), (0.05 + 0.3) / 0.75))
    opt._average(0, torch.full((2, 3), 7.0))  # iterates enter clamped to [0, 1], as the image they stand for
    assert torch.allclose(opt.average(0), torch.full((2, 3), (0.5 * 0.35 + 0.5 * 1.0) / (1 - 0.125)))


# --- Adam's state carried to another size (pyramid.carry_optimizer) ---------------------------------

def test_adam_state_resized_to_a_larger_level_is_the_interpolation_of_the_old():
    from nst.optimizers import AdamState

    g = torch.Generator().manual_seed(6)
    m, v = torch.randn(3, 6, 8, generator=g), torch.rand(3, 6, 8, generator=g) * 1e-3
    big = AdamState(m, v, 17).resized((12, 16))
    assert big.exp_avg.shape == big.exp_avg_sq.shape == (3, 12, 16) and big.steps == 17
    interpolate = torch.nn.functional.interpolate
    assert torch.equal(big.exp_avg, interpolate(m[None], size=(12, 16), mode="bicubic", align_corners=False)[0])
    assert torch.equal(big.exp_avg_sq, interpolate(v[None], size=(12, 16), mode="bilinear", align_corners=False)[0])
    assert (big.exp_avg_sq >= 0).all()
    # a second moment with a sharp edge: bicubic would overshoot below 0, bilinear with the clamp cannot
    edge = torch.zeros(3, 6, 8)
    edge[..., 4:] = 1.0
    assert (AdamState(edge, edge, 1).resized((12, 16)).exp_avg_sq >= 0).all()


def test_adam_from_a_carried_state_steps_as_torch_adam_loaded_with_it():
    p = problems([("rosen", 1.0, 100.0), ("quad", 3.0)])
    x0 = start_points(2, seed=7)
    # a coarser level: 5 steps, state kept
    coarse = BatchAdam(x0, lr=0.05, betas=(0.9, 0.99), max_iter=5, keep_state=[True, False])
    drive(coarse, p)
    st = coarse.final_state(0)
    assert coarse.final_state(1) is None and st.steps == 5 and st.exp_avg.shape == x0.shape[1:]
    # the next level, 4 steps of its own from the carried state
    carried = drive(BatchAdam(x0, lr=0.05, betas=(0.9, 0.99), max_iter=4, state=[st, None]), p)
    fresh = drive(BatchAdam(x0, lr=0.05, betas=(0.9, 0.99), max_iter=4), p)
    assert len(carried["asked"][0]) == 4  # the level's budget counts its own steps
    assert float((carried["asked"][0][1] - fresh["asked"][0][1]).abs().max()) > 1e-4  # its first step differs
    # the other trial's did not
    assert all(torch.equal(a, b) for a, b in zip(carried["asked"][1], fresh["asked"][1], strict=True))
    # torch.optim.Adam with that state loaded takes the same steps
    x = x0[0].reshape(-1).clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05, betas=(0.9, 0.99), foreach=False)
    opt.state[x] = {"step": torch.tensor(5.0), "exp_avg": st.exp_avg.reshape(-1).clone(),
                    "exp_avg_sq": st.exp_avg_sq.reshape(-1).clone()}
    for k in range(4):
        assert float((x.detach() - carried["asked"][0][k]).abs().max()) <= ATOL_ADAM
        _, grad = objective(x.detach().unsqueeze(0), rows(p, [0]))
        x.grad = grad[0].clone()
        opt.step()
    assert float((x.detach() - carried["done"][0][0]).abs().max()) <= ATOL_ADAM
