"""What the judgements say: Bradley–Terry strengths per setting with bootstrap intervals, win rates
per pair of settings, and how often judges agree with each other and with themselves.

Bradley–Terry: P(i beats j) = p_i / (p_i + p_j). The strengths are fitted by Hunter's (2004) MM
iteration, p_i <- W_i / sum_j n_ij / (p_i + p_j). A "can't tell" counts as half a win to each side.
Each setting also plays one virtual tied game against a fixed opponent of strength 1: without it a
setting that never won would get strength 0 (log -inf) and settings never compared with each other
would have no common scale; with it the scores are finite and shrink a little towards 0 on few
judgements. Scores are log-strengths centred on their mean: a difference d between two settings
means the first is preferred with probability 1 / (1 + exp(-d)).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from itertools import combinations

import numpy as np

BOOTSTRAP = 1000
PRIOR = 1.0  # virtual tied games per setting against the fixed opponent


@dataclass
class Scores:
    settings: list[str]
    score: np.ndarray  # centred log-strengths
    low: np.ndarray  # 95 % bootstrap interval
    high: np.ndarray
    wins: np.ndarray  # [S, S]: wins[i, j] = times i was chosen over j
    ties: np.ndarray  # [S, S], symmetric
    judges: list[str]
    n: int
    between: tuple[int, int]  # (agreeing, compared) verdicts of two judges on the same two results
    repeats: tuple[int, int]  # (agreeing, compared) verdicts of one judge on the same two results

    def order(self) -> list[int]:
        return sorted(range(len(self.settings)), key=lambda i: -self.score[i])


def _contributions(records: list[dict], settings: list[str]) -> np.ndarray:
    """[N, S*S]: what each judgement adds to the table of won games (i over j at i*S+j); a "can't tell"
    half to each side."""
    index = {s: i for i, s in enumerate(settings)}
    S = len(settings)
    out = np.zeros((len(records), S * S))
    for k, r in enumerate(records):
        a, b = index[r["left_setting"]], index[r["right_setting"]]
        if r["winner"] == "left":
            out[k, a * S + b] = 1.0
        elif r["winner"] == "right":
            out[k, b * S + a] = 1.0
        else:
            out[k, a * S + b] = out[k, b * S + a] = 0.5
    return out


def bradley_terry(won: np.ndarray, tol: float = 1e-9, max_iter: int = 10000) -> np.ndarray:
    """Centred log-strengths from won games won[..., i, j] (i over j, a tie counting half to each);
    any leading dimensions are fitted at once (the bootstrap's draws)."""
    n = won + np.swapaxes(won, -1, -2)  # games between i and j
    wins = won.sum(axis=-1) + 0.5 * PRIOR
    p = np.ones(wins.shape)
    for _ in range(max_iter):
        denom = (n / (p[..., :, None] + p[..., None, :])).sum(axis=-1) + PRIOR / (p + 1.0)
        new = wins / denom
        # The games between settings say nothing about the common scale of the strengths; only the
        # virtual games do, and MM moves along that direction very slowly (thousands of steps). So
        # each MM step is followed by the best common factor (a few Newton steps on its log, where
        # only the virtual games' likelihood changes): both steps raise the likelihood.
        x, u = np.log(new), np.zeros(wins.shape[:-1] + (1,))
        for _ in range(6):
            sig = 1.0 / (1.0 + np.exp(-(x + u)))
            u = u + (0.5 - sig).sum(axis=-1, keepdims=True) / (sig * (1 - sig)).sum(axis=-1, keepdims=True)
        new = new * np.exp(u)
        done = np.max(np.abs(np.log(new) - np.log(p))) < tol
        p = new
        if done:
            break
    s = np.log(p)
    return s - s.mean(axis=-1, keepdims=True)


def _tie_count(records: list[dict], settings: list[str]) -> np.ndarray:
    index = {s: i for i, s in enumerate(settings)}
    t = np.zeros((len(settings), len(settings)))
    for r in records:
        if r["winner"] == "none":
            a, b = index[r["left_setting"]], index[r["right_setting"]]
            t[a, b] += 1
            t[b, a] += 1
    return t


def _agreement(records: list[dict]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Verdicts on the same two results, compared two at a time: by different judges, and by one judge."""
    verdicts: dict[frozenset, list[tuple[str, str | None]]] = {}
    for r in records:
        chosen = {"left": r["left"], "right": r["right"]}.get(r["winner"])  # None: can't tell
        verdicts.setdefault(frozenset((r["left"], r["right"])), []).append((r["judge"], chosen))
    between, repeats = [0, 0], [0, 0]
    for vs in verdicts.values():
        for (j1, c1), (j2, c2) in combinations(vs, 2):
            tally = repeats if j1 == j2 else between
            tally[0] += c1 == c2
            tally[1] += 1
    return (between[0], between[1]), (repeats[0], repeats[1])


def scores(records: list[dict], seed: int = 0, bootstrap: int = BOOTSTRAP) -> Scores | None:
    if not records:
        return None
    settings = sorted({r["left_setting"] for r in records} | {r["right_setting"] for r in records})
    S = len(settings)
    C = _contributions(records, settings)
    won = C.sum(axis=0).reshape(S, S)
    tie_count = _tie_count(records, settings)
    wins = won - 0.5 * tie_count
    score = bradley_terry(won)
    rng = np.random.default_rng(seed)
    # resampled judgements (with replacement), all draws fitted together
    weight = rng.multinomial(len(records), np.full(len(records), 1.0 / len(records)), size=bootstrap)  # [B, N]
    draws = bradley_terry((weight @ C).reshape(bootstrap, S, S), tol=1e-6)
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    between, repeats = _agreement(records)
    judges = sorted({r["judge"] for r in records})
    return Scores(settings, score, low, high, wins, tie_count, judges, len(records), between, repeats)


def _share(pair: tuple[int, int]) -> str:
    return f"{pair[0] / pair[1]:.0%} of {pair[1]}" if pair[1] else "none compared"


def text(sc: Scores) -> str:
    lines = [f"{sc.n} judgement(s) by {len(sc.judges)} judge(s): {', '.join(sc.judges)}", "",
             "Bradley-Terry scores (log-strength, mean 0; a difference d: preferred with probability 1/(1+e^-d))",
             f"  {'setting':<40} {'score':>7}  {'95% interval':>17}  {'won':>5} {'lost':>5} {'tied':>5}"]
    for i in sc.order():
        lines.append(f"  {sc.settings[i]:<40} {sc.score[i]:>+7.2f}  [{sc.low[i]:>+6.2f}, {sc.high[i]:>+6.2f}]  "
                     f"{sc.wins[i].sum():>5.0f} {sc.wins[:, i].sum():>5.0f} {sc.ties[i].sum():>5.0f}")
    lines += ["", "win rates per pair of settings (a tie counts half)"]
    for a, b, won, lost, tied in _pairs(sc):
        lines.append(f"  {sc.settings[a]} over {sc.settings[b]}: {(won + tied / 2) / (won + lost + tied):.0%} "
                     f"({won:.0f} won, {lost:.0f} lost, {tied:.0f} tied)")
    lines += ["", f"agreement between judges (same two results): {_share(sc.between)}",
              f"agreement with themselves (repeats): {_share(sc.repeats)}"]
    return "\n".join(lines)


def _pairs(sc: Scores):
    for a, b in combinations(sc.order(), 2):
        won, lost, tied = sc.wins[a, b], sc.wins[b, a], sc.ties[a, b]
        if won + lost + tied:
            yield a, b, won, lost, tied


def csv_text(sc: Scores) -> str:
    """One table, a row per setting (kind=score), per pair of settings (kind=pair) and per agreement
    measure (kind=agreement)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["kind", "setting", "other", "score", "low", "high", "won", "lost", "tied", "win_rate", "agreeing", "compared"])
    for i in sc.order():
        won, lost, tied = sc.wins[i].sum(), sc.wins[:, i].sum(), sc.ties[i].sum()
        rate = (won + tied / 2) / (won + lost + tied) if won + lost + tied else ""
        w.writerow(["score", sc.settings[i], "", f"{sc.score[i]:.4f}", f"{sc.low[i]:.4f}", f"{sc.high[i]:.4f}",
                    int(won), int(lost), int(tied), rate if rate == "" else f"{rate:.4f}", "", ""])
    for a, b, won, lost, tied in _pairs(sc):
        w.writerow(["pair", sc.settings[a], sc.settings[b], "", "", "", int(won), int(lost), int(tied),
                    f"{(won + tied / 2) / (won + lost + tied):.4f}", "", ""])
    for name, (agree, n) in (("between_judges", sc.between), ("repeats", sc.repeats)):
        w.writerow(["agreement", name, "", "", "", "", "", "", "", "", agree, n])
    return buf.getvalue()
