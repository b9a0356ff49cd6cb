"""The evaluation set's arithmetic: a pair's normalised box, a front's hypervolume in it, and paired
comparisons of recipes across pairs (wins/ties/losses, an exact Wilcoxon signed-rank p-value).

Pure Python, no nst and no torch, so that a results.csv can be judged again anywhere.

Normalised per pair, both axes run from 0 (good) to 1, so that every pair shares the unit box:
- style: 0 at the painting itself, 1 at the photograph (its style metric against the painting);
- content: 0 at the photograph itself (the content metric's best value), 1 at the painting resized
  to the output's shape (its content metric against the photograph).
The photograph is then the point (1, 0) and the painting (0, 1): both lie on the box's edge and
enclose nothing, so a recipe's hypervolume is what its points add beyond either input.
"""

from __future__ import annotations

from collections.abc import Sequence


def position(value: float, at0: float, at1: float) -> float:
    """Where `value` lies on the segment from `at0` (0) to `at1` (1); not clipped (a point beyond an
    input is reported as it is; the hypervolume clips it)."""
    if at1 == at0:
        raise ValueError(f"the two anchors are equal ({at0}): the pair's axis has no length")
    return (value - at0) / (at1 - at0)


def normalise(style: float, content: float, anchors: dict) -> tuple[float, float]:
    """(s, c) in the pair's unit box. `anchors`: style_photo, style_painting, content_photo,
    content_painting (the raw metrics of the two inputs). A higher-is-better content metric (ssim)
    is turned round by the same formula: its photograph's value is its best."""
    s = position(style, anchors["style_painting"], anchors["style_photo"])
    c = position(content, anchors["content_photo"], anchors["content_painting"])
    return s, c


def hypervolume(points: Sequence[tuple[float, float]], ref: tuple[float, float] = (1.0, 1.0)) -> float:
    """The area the points dominate in [0, ref]: the union of the rectangles [s, ref_s] x [c, ref_c],
    both axes lower-is-better. Points are clipped to the box first (a point worse than an input on an
    axis adds nothing on it; one better than the painting counts as the painting)."""
    pts = sorted((min(max(s, 0.0), ref[0]), min(max(c, 0.0), ref[1])) for s, c in points)
    area, best_c = 0.0, ref[1]
    for i, (s, c) in enumerate(pts):  # sweep by style; each step adds the strip below the lowest content so far
        best_c = min(best_c, c)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        area += (nxt - s) * (ref[1] - best_c)
    return area


def within(x: float, y: float, floor: float) -> bool:
    """Whether x and y differ by no more than `floor` relative to the larger magnitude: a tie."""
    return abs(x - y) <= floor * max(abs(x), abs(y))


def covers(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]], floor: float) -> bool:
    """Whether every point of b has a point of a as good on both axes (lower is better; a value of a
    worse by no more than `floor`, relative to the larger magnitude, counts as as good): a reaches b's
    front everywhere b has a point. Raw metric values, as the fronts compare them; a higher-is-better
    metric enters negated. No points in b: True; b's points but none in a: False."""
    def as_good(x: float, y: float) -> bool:
        return x <= y or within(x, y, floor)

    return all(any(as_good(p[0], q[0]) and as_good(p[1], q[1]) for p in a) for q in b)


def compare(a: Sequence[float], b: Sequence[float], floor: float) -> tuple[int, int, int]:
    """(wins, ties, losses) of a against b over paired values (higher is better, as hypervolume):
    a difference within `floor` of the larger magnitude (relative, as the metrics' noise floor) is a tie."""
    wins = ties = losses = 0
    for x, y in zip(a, b, strict=True):
        if within(x, y, floor):
            ties += 1
        elif x > y:
            wins += 1
        else:
            losses += 1
    return wins, ties, losses


def wilcoxon(differences: Sequence[float]) -> tuple[float, float, int]:
    """Wilcoxon's signed-rank test, two-sided, exact: (W+, p, n). Zero differences are dropped
    (Wilcoxon's convention); tied magnitudes share their mean rank, and the null distribution is
    the exact one of those ranks under random signs (2^n equally likely assignments), counted by
    dynamic programming on doubled ranks, so ties do not need the normal approximation.
    p is 1.0 when nothing is left to rank."""
    d = [x for x in differences if x != 0]
    n = len(d)
    if n == 0:
        return 0.0, 1.0, 0
    order = sorted(range(n), key=lambda i: abs(d[i]))
    ranks2 = [0] * n  # twice the (mid-)rank: an integer
    i = 0
    while i < n:
        j = i
        while j + 1 < n and abs(d[order[j + 1]]) == abs(d[order[i]]):
            j += 1
        for k in range(i, j + 1):
            ranks2[order[k]] = i + j + 2  # 2 * mean of ranks i+1 .. j+1
        i = j + 1
    w2 = sum(r for r, x in zip(ranks2, d, strict=True) if x > 0)
    total = sum(ranks2)
    counts = {0: 1}  # doubled positive-rank sum -> number of sign assignments giving it
    for r in ranks2:
        nxt = dict(counts)
        for s, c in counts.items():
            nxt[s + r] = nxt.get(s + r, 0) + c
        counts = nxt
    # two-sided: as extreme as observed on either side of the mean total/2
    dev = abs(w2 - total / 2)
    extreme = sum(c for s, c in counts.items() if abs(s - total / 2) >= dev - 1e-9)
    return w2 / 2, min(1.0, extreme / 2**n), n
