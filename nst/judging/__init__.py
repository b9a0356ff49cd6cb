"""Blind side-by-side judging of a sweep's results by people (`python -m nst.judge`): which results
are compared (results), which two come next (pairs), the verdicts' file (store), the scores (scores),
the page and its server (server, page/)."""

from __future__ import annotations

import html
from pathlib import Path

from nst.judging import scores as _scores
from nst.judging import store
from nst.judging.store import JUDGEMENTS

CSV = "judgements.csv"


def folder_scores(folders: list[Path], warn=None) -> _scores.Scores | None:
    """The scores of every judgement recorded in these folders' judgements.jsonl."""
    records = [r for f in folders for r in store.read(Path(f) / JUDGEMENTS, warn)]
    return _scores.scores(records)


def write_csv(folder: Path, sc: _scores.Scores) -> Path:
    from nst.records import write_bytes_atomic

    out = Path(folder) / CSV
    write_bytes_atomic(out, _scores.csv_text(sc).encode("utf-8"))
    return out


def judging_html(sweep_dir: Path) -> str:
    """The report's section on the judgements recorded in the sweep folder; '' when there are none."""
    sc = folder_scores([Path(sweep_dir)])
    if sc is None:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(sc.settings[i])}</td><td>{sc.score[i]:+.2f}</td><td>[{sc.low[i]:+.2f}, {sc.high[i]:+.2f}]</td>"
        f"<td>{sc.wins[i].sum():.0f}</td><td>{sc.wins[:, i].sum():.0f}</td><td>{sc.ties[i].sum():.0f}</td></tr>"
        for i in sc.order())
    pairs = "".join(
        f"<tr><td>{e(sc.settings[a])}</td><td>{e(sc.settings[b])}</td><td>{(won + t / 2) / (won + lost + t):.0%}</td>"
        f"<td>{won:.0f}</td><td>{lost:.0f}</td><td>{t:.0f}</td></tr>"
        for a, b, won, lost, t in _scores._pairs(sc))
    share = _scores._share
    return (
        '<section id="judging"><h2>Judged by people</h2>'
        f"<p>{sc.n} blind side-by-side judgement(s) by {len(sc.judges)} judge(s) ({e(', '.join(sc.judges))}), "
        f"from {JUDGEMENTS}. Bradley–Terry score: log-strength, mean 0; a setting scoring d more than another is "
        "preferred with probability 1/(1+e<sup>−d</sup>). Interval: 95 % bootstrap over the judgements. "
        "A “can't tell” counts half a win to each side.</p>"
        '<table class="judging-scores"><thead><tr><th>setting</th><th>score</th><th>95% interval</th>'
        f"<th>won</th><th>lost</th><th>tied</th></tr></thead><tbody>{rows}</tbody></table>"
        '<table class="judging-pairs"><thead><tr><th>setting</th><th>over</th><th>win rate</th>'
        f"<th>won</th><th>lost</th><th>tied</th></tr></thead><tbody>{pairs}</tbody></table>"
        f"<p>Agreement between judges on the same two results: {share(sc.between)}; "
        f"of judges with themselves on repeated pairs: {share(sc.repeats)}.</p></section>")
