"""The results a judge compares: every completed trial of the given sweep folders, with its
content/style pair (the same images, by their bytes, wherever each run found them), the settings it
was run with (as a label, hidden from the judge) and how close it stayed to the photograph (from its
summary.json), read from the folders' files alone."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from nst.errors import InputError
from nst.images import resolve_image_path
from nst.judging.store import JUDGEMENTS
from nst.records import trial_folders
from nst.summary import Summary
from nst.trial_records import TrialRecord, load_trials, number, swept_axes

# keys that choose the pair being stylised, not the way it is stylised
PAIR_KEYS = ("content", "style", "style_blend")


@dataclass(frozen=True)
class Result:
    ref: str  # the trial folder relative to the first sweep folder ("3_recipe=nst", "../other/3_recipe=nst")
    folder: int  # which of the sweep folders holds it
    path: Path
    pair: tuple[str, str]  # (content, style) as the trial was given them
    setting: str  # "recipe=nst, style_weight=4": what differs between the trials judged together
    closeness: float | None  # GMSD against the photograph (lower is closer), None where not measured
    content_file: Path | None
    style_files: tuple[Path, ...]


class SweepSet:
    """The sweep folders judged together; judgements go to the first one's judgements.jsonl."""

    def __init__(self, folders: list[Path], results: list[Result], warnings: list[str]):
        self.folders = folders
        self.results = results
        self.by_ref = {r.ref: r for r in results}
        self.warnings = warnings
        inputs: list[Path] = []
        for r in results:
            for f in (r.content_file, *r.style_files):
                if f is not None and f not in inputs:
                    inputs.append(f)
        self.inputs = inputs  # served by index only: the page never names a path outside the folders

    @property
    def judgements(self) -> Path:
        return self.folders[0] / JUDGEMENTS

    def input_index(self, path: Path | None) -> int | None:
        return None if path is None else self.inputs.index(path)


def _pair(summary: Summary) -> tuple[str, str] | None:
    s, c = summary.settings, summary.config
    content = s.get("content", c.get("content"))
    style = s.get("style", c.get("style"))
    if content is None or style is None:
        return None
    style = "+".join(map(str, style)) if isinstance(style, list) else str(style)
    return str(content), style


def _input(value: str) -> Path | None:
    try:
        return resolve_image_path("content", value).resolve()
    except InputError:
        return None  # moved or deleted since the run: the page shows the results without it


class _SameImages:
    """Input images named by their bytes: two runs that used copies of one photograph (a folder of them
    each, as benchmarks/quality.py --set makes) name it alike, the name it was first seen under."""

    def __init__(self) -> None:
        self._digests: dict[Path, str | None] = {}
        self._first: dict[str, str] = {}  # a file's digest -> the name first seen for it

    def name(self, value: str) -> str:
        path = _input(value)
        if path is None:
            return value
        if path not in self._digests:
            try:
                self._digests[path] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                self._digests[path] = None
        digest = self._digests[path]
        return value if digest is None else self._first.setdefault(digest, value)


def _setting(t, key: str) -> str:
    """The trial's value of a key other trials judged with it override: its own override, else the
    value it ran with (so that sweeps run with and without the override share a label)."""
    value = t.overrides.get(key)
    if value is None:
        for recorded in (t.summary.settings, t.summary.config):
            if isinstance(recorded.get(key), (str, int, float)) and not isinstance(recorded.get(key), bool):
                value = str(recorded[key])
                break
    if value is None:
        return "(default)"
    try:
        return f"{float(value):g}"  # 4e5, 400000 and 400000.0 are one setting
    except ValueError:
        return value


def load(folders: list[Path]) -> SweepSet:
    """Raises InputError (one line naming the folder) for a folder that is not a sweep folder and when
    no content/style pair has two completed results with different settings."""
    folders = list(dict.fromkeys(Path(f).resolve() for f in folders))  # a folder named twice is judged once
    trials: list[tuple[int, TrialRecord]] = []
    warnings: list[str] = []
    for i, folder in enumerate(folders):
        if not folder.is_dir():
            raise InputError(str(folder), "no such folder")
        if not trial_folders(folder) or trial_folders(folder) == [folder]:
            raise InputError(str(folder), "not a sweep folder (no trial folders with summary.json; "
                             "make one with `python -m nst.run -m ...`)")
        trials += [(i, t) for t in load_trials(folder, warn=warnings.append)]
    done = [(i, t) for i, t in trials if t.status == "completed" and not t.problems and t.final.exists()]
    axes = [k for k, _ in swept_axes([t for _, t in done]) if k not in PAIR_KEYS]
    results = []
    same = _SameImages()
    for i, t in done:
        pair = _pair(t.summary)
        if pair is None:
            warnings.append(f"{t.path / 'summary.json'}: no content/style recorded; left out")
            continue
        pair = (same.name(pair[0]), "+".join(map(same.name, pair[1].split("+"))))
        setting = ", ".join(f"{k}={_setting(t, k)}" for k in axes) or t.path.name
        styles = pair[1].split("+")
        results.append(Result(
            ref=os.path.relpath(t.path, folders[0]), folder=i, path=t.path, pair=pair, setting=setting,
            closeness=number(t.summary.metrics.get("gmsd")), content_file=_input(pair[0]),
            style_files=tuple(p for p in map(_input, styles) if p is not None)))
    comparable = {r.pair for r in results for o in results if o.pair == r.pair and o.setting != r.setting}
    if not comparable:
        where = ", ".join(map(str, folders))
        raise InputError(where, "no content/style pair has two completed trials with different settings "
                         f"({len(results)} completed trial(s)); nothing to compare")
    return SweepSet(folders, [r for r in results if r.pair in comparable], warnings)
