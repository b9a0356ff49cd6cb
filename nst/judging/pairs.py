"""Which two results a judge sees next.

Only results of the same content/style pair with different settings are compared. The pair of
settings seen least often so far (by every judge together) comes first, so each pair of settings is
judged about equally often; within it, two results that stayed about as close to the photograph
(GMSD) are preferred, so that a verdict says which painting is better rather than which kept more of
the photograph; the pairs this judge has seen fewest times come first. About one choice in ten shows a
pair the judge has judged before again (mirrored at random, never right after the first time): how
often the two verdicts agree measures the judge's consistency.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import combinations
from statistics import median

from nst.judging.results import Result

REPEAT_RATE = 0.1
REPEAT_AFTER = 4  # a judge's first choices are never repeats
RECENT = 3  # a repeat is never one of the judge's last few pairs


@dataclass(frozen=True)
class Offer:
    left: Result
    right: Result
    repeat: bool


def setting_pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


class Chooser:
    def __init__(self, results: list[Result], rng: random.Random):
        self.rng = rng
        self.candidates = [(a, b) for a, b in combinations(results, 2) if a.pair == b.pair and a.setting != b.setting]
        gaps = [abs(a.closeness - b.closeness) for a, b in self.candidates if a.closeness is not None and b.closeness is not None]
        # a pair twice the typical gap apart is drawn e^-4 ~ 1/50 as often as two equally close results
        self.scale = median(gaps) / 2 if gaps and median(gaps) > 0 else 1.0

    def _weight(self, a: Result, b: Result) -> float:
        if a.closeness is None or b.closeness is None:
            return math.exp(-2.0)  # as a typical gap
        return math.exp(-abs(a.closeness - b.closeness) / self.scale)

    def next(self, judge: str, history: list[dict]) -> Offer:
        """history: every judgement so far, every judge's (records as nst.judging.store writes them)."""
        known = {r.ref for pair in self.candidates for r in pair}
        history = [h for h in history if h.get("left") in known and h.get("right") in known]
        mine = [h for h in history if h.get("judge") == judge]
        seen: dict[frozenset, int] = {}
        for h in mine:
            key = frozenset((h["left"], h["right"]))
            seen[key] = seen.get(key, 0) + 1
        recent = {frozenset((h["left"], h["right"])) for h in mine[-RECENT:]}
        if len(mine) >= REPEAT_AFTER and self.rng.random() < REPEAT_RATE:
            again = [(a, b) for a, b in self.candidates if frozenset((a.ref, b.ref)) in seen
                     and frozenset((a.ref, b.ref)) not in recent]
            if again:  # the pairs shown again fewest times, so that the repeats spread over the pairs
                fewest = min(seen[frozenset((a.ref, b.ref))] for a, b in again)
                again = [(a, b) for a, b in again if seen[frozenset((a.ref, b.ref))] == fewest]
                return self._offer(*self.rng.choice(again), repeat=True)
        by_ref = {r.ref: r for pair in self.candidates for r in pair}
        counts: dict[tuple[str, str], int] = {}
        for h in history:
            sp = setting_pair(by_ref[h["left"]].setting, by_ref[h["right"]].setting)
            counts[sp] = counts.get(sp, 0) + 1
        least = min(counts.get(setting_pair(a.setting, b.setting), 0) for a, b in self.candidates)
        pool = [(a, b) for a, b in self.candidates if counts.get(setting_pair(a.setting, b.setting), 0) == least]
        # the results this judge has seen least often first (a pair seen again is a repeat's job)
        fewest = min(seen.get(frozenset((a.ref, b.ref)), 0) for a, b in pool)
        pool = [(a, b) for a, b in pool if seen.get(frozenset((a.ref, b.ref)), 0) == fewest]
        weights = [self._weight(a, b) * (0.01 if frozenset((a.ref, b.ref)) in recent else 1.0) for a, b in pool]
        a, b = self.rng.choices(pool, weights=weights)[0]
        return self._offer(a, b, repeat=False)

    def _offer(self, a: Result, b: Result, repeat: bool) -> Offer:
        return Offer(a, b, repeat) if self.rng.random() < 0.5 else Offer(b, a, repeat)
