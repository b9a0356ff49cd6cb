"""What report.html shows, from a real tiny sweep: the inputs, the fair metrics first and the rest
folded away, numbers as people write them, the trade-off scatter; grid labels that fit their cells;
matplotlib's cache kept out of the sweep folder; a trial folder that cannot be read."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from conftest import ROOT, nst_env
from nst import trial_records
from nst.report import figures
from nst.summary import Score


def _env(cwd: Path, **extra) -> dict:
    env = nst_env(cwd)
    env.pop("MPLCONFIGDIR", None)
    env.update(XDG_CACHE_HOME=str(cwd / ".cache"), PYTHONPATH=str(ROOT), **extra)
    return env


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real two-trial sweep (its folder, the finished process), with a fresh per-user cache folder."""
    cwd = tmp_path_factory.mktemp("report_content")
    r = subprocess.run([sys.executable, "-m", "nst.run", "-m", "style_weight=1e4,1e6", "size=32", "steps=3",
                        "logger=none", f"hydra.sweep.dir={cwd / 'sweep'}"],
                       cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd / "sweep", r


class _Tables(HTMLParser):
    """Each table's header texts and cell texts by id; the img srcs; the details' contents' ids."""

    def __init__(self):
        super().__init__()
        self.tables, self.images, self.folded = {}, [], []
        self._table = self._cell = None
        self._details = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id"), {"head": [], "rows": []})
            if self._details:
                self.folded.append(a.get("id"))
        elif tag == "details":
            self._details += 1
        elif tag == "img":
            self.images.append(a)
        elif tag == "tr" and self._table is not None:
            self._table["rows"].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = [tag, ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            kind, text = self._cell
            (self._table["head"] if kind == "th" else self._table["rows"][-1]).append(text.strip())
            self._cell = None
        elif tag == "table":
            self._table = None
            for t in self.tables.values():
                t["rows"] = [r for r in t["rows"] if r]
        elif tag == "details":
            self._details -= 1


def _page(sweep: Path) -> _Tables:
    p = _Tables()
    p.feed((sweep / "report.html").read_text())
    return p


def test_report_shows_the_inputs_and_the_trade_off(sweep):
    sweep, _ = sweep
    page = _page(sweep)
    inputs = {i["alt"]: i["src"] for i in page.images if i["src"].startswith("data:")}
    assert set(inputs) == {"content: tubingen", "style: starry_night"}
    for uri in inputs.values():  # embedded: the page needs no file outside the sweep folder
        img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        assert min(img.size) > 0 and max(img.size) <= 320
    assert "scatter.png" in [i["src"] for i in page.images]
    with Image.open(sweep / "scatter.png") as im:
        assert im.width > 300


def test_report_table_first_columns_numbers_and_folded_rest(sweep):
    sweep, _ = sweep
    page = _page(sweep)
    main, more = page.tables["results"], page.tables["more"]
    assert page.folded == ["more"]  # the other columns are in a <details>
    # the swept key, the status, the fair metrics and the time first
    assert [h.rstrip(" \u2193\u2191") for h in main["head"]] == ["#", "style_weight", "status", "style_swd", "gmsd",
                                                               "self_sim_dist", "psnr", "ssim", "time (s)"]
    assert main["head"][3:5] == ["style_swd \u2193", "gmsd \u2193"]
    folded = [h.rstrip(" \u2193\u2191") for h in more["head"]]
    assert {"gram_distance", "content_distance", "evaluations", "final_total"} <= set(folded)
    # columns empty in every trial are left out (a 32 px image skips the coarse style scales, no errors)...
    for gone in ("error", "problem", "style_swd_2x", "style_swd_4x"):
        assert gone not in main["head"] + folded
    # ... but results.csv keeps them
    assert {"error", "style_swd_4x"} <= set((sweep / "results.csv").read_text().splitlines()[0].split(","))
    assert [r[1] for r in main["rows"]] == ["1e4", "1e6"]  # not 10000.0, 1000000.0
    number = re.compile(r"-?(\d+(\.\d+)?)(e-?\d+)?( \u2248)?")
    cells = [c for t in (main, more) for r in t["rows"] for c in r if number.fullmatch(c)]
    assert len(cells) > 20
    for c in cells:  # at most three significant digits, as people write them
        digits = number.fullmatch(c).group(1).replace(".", "").lstrip("0")
        assert len(digits.rstrip("0") if "." not in c else digits) <= 3, c
    total = [r[folded.index("final_total")] for r in more["rows"]]
    assert all(re.fullmatch(r"\d(\.\d{1,2})?e\d+", v) for v in total), total  # 3.27e10, not 32713287680.0


def test_matplotlib_cache_is_the_users_and_quiet(sweep, tmp_path):
    sweep, r = sweep
    assert not (sweep / ".matplotlib").exists()
    assert "fontManager" not in r.stdout + r.stderr  # a fresh cache folder: matplotlib built its font cache
    cwd = sweep.parent
    assert list((cwd / ".cache" / "nst" / "matplotlib").glob("fontlist*.json"))
    # a MPLCONFIGDIR the user set is kept
    mine = tmp_path / "mine"
    r2 = _report(sweep, cwd, MPLCONFIGDIR=str(mine))
    assert r2.returncode == 0, r2.stderr
    assert list(mine.glob("fontlist*.json")) and "fontManager" not in r2.stdout + r2.stderr
    assert not (sweep / ".matplotlib").exists()


def test_grid_labels_fit_their_cells():
    width = 188
    for text in ("style_weight=1e6", "content=/home/me/photos/a-very-long-folder-name/bridge_at_night.jpg",
                 "x" * 400, "content_layers=[conv1_1,conv2_1,conv3_1,conv4_1,conv5_1],style_scale=0.5"):
        font, lines = figures.fit_text(text, width)
        assert 1 <= len(lines) <= 3
        assert all(font.getlength(line) <= width for line in lines), (text, lines)
    font, lines = figures.fit_text("style_weight=1e6", width)
    assert lines == ["style_weight=1e6"] and font.size == 13  # a short label as it is


def test_a_grid_with_long_values_keeps_its_cell_width(sweep, tmp_path):
    sweep, _ = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    long = "/home/me/photos/" + "a_rather_long_folder_name/" * 4 + "bridge.jpg"
    for d in (d for d in copy.iterdir() if (d / "summary.json").is_file()):
        s = json.loads((d / "summary.json").read_text())
        s["overrides"] = [o for o in s["overrides"] if o.startswith("style_weight")] + [f"content={long}{d.name[0]}"]
        (d / "summary.json").write_text(json.dumps(s))
    trials = trial_records.load_trials(copy)
    axes = trial_records.swept_axes(trials)
    assert [k for k, _ in axes] == ["style_weight", "content"]
    grid = figures.make_grid(trials, axes, ["style_swd"])
    cw = figures._cell_box(trials)[0]
    # row labels at most a cell wide; two columns of cells: nothing was widened by a label
    assert grid.width <= (cw + 12) + 2 * (cw + 4) + 4


def _report(sweep: Path, cwd: Path, user: list[str] = (), **env) -> subprocess.CompletedProcess:
    return subprocess.run([*user, sys.executable, "-m", "nst.report", str(sweep)], cwd=cwd, env=_env(cwd, **env),
                          capture_output=True, text=True, timeout=300, check=False)


def _check_marked(r, victim: Path, why: str):
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(victim) in r.stderr and why in r.stderr
    assert "Traceback" not in r.stderr
    page = _page(victim.parent)
    statuses = [row[page.tables["results"]["head"].index("status")] for row in page.tables["results"]["rows"]]
    assert statuses == ["unreadable", "completed"]
    assert "report:" in r.stdout


def test_a_trial_whose_summary_cannot_be_read_is_marked(sweep, tmp_path):
    sweep, _ = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    victim = next(d for d in copy.iterdir() if d.name.startswith("0_"))
    (victim / "summary.json").unlink()  # works as root too: reading a folder as a file fails
    (victim / "summary.json").mkdir()
    _check_marked(_report(copy, tmp_path), victim, "summary.json")


def test_a_trial_folder_without_permissions_is_marked(sweep):
    sweep, _ = sweep
    user = []
    if os.geteuid() == 0:  # root reads anything: run the report as nobody, where this machine can
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be taken away from root")
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    tmp = Path(tempfile.mkdtemp(prefix="nst-unreadable-"))  # outside pytest's root-only folder, for nobody
    copy = tmp / "sweep"
    try:
        shutil.copytree(sweep, copy)
        victim = next(d for d in copy.iterdir() if d.name.startswith("0_"))
        if user:
            for p in [tmp, *tmp.rglob("*")]:
                os.chown(p, 65534, 65534, follow_symlinks=False)
        os.chmod(victim, 0)
        r = _report(copy, tmp, user, HOME=str(tmp / "home"))
        if user and str(victim) not in r.stderr and r.returncode != 0:
            pytest.skip(f"nobody cannot run the project here: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        _check_marked(r, victim, "Permission denied")
    finally:
        if copy.exists():
            for d in copy.iterdir():
                os.chmod(d, 0o755)
        shutil.rmtree(tmp, ignore_errors=True)


def test_scatter_thumbnails_are_pushed_apart_until_none_overlap():
    import numpy as np

    points = np.array([[100.0, 100.0], [105.0, 102.0], [100.0, 100.0], [2000.0, 2000.0], [110.0, 95.0]])
    w, h = 80.0, 90.0
    moved = points + figures._spread(points, w, h)
    for i in range(len(moved)):
        for j in range(i + 1, len(moved)):
            dx, dy = np.abs(moved[i] - moved[j])
            assert dx >= w or dy >= h, (i, j, moved)
    assert (moved[3] == points[3]).all()  # a point far from the others keeps its place


def test_a_search_scatter_plots_its_objective_against_its_parameter(sweep, tmp_path):
    sweep, _ = sweep
    trials = trial_records.load_trials(sweep)
    for i, t in enumerate(trials):  # as a search's trials record it
        t.summary.objective = Score("final_loss", 10.0 - i)
    assert figures.make_scatter(trials, trial_records.swept_axes(trials), tmp_path / "scatter.png")
    with Image.open(tmp_path / "scatter.png") as im:
        assert im.width > 300
    for t in trials:
        t.summary.metrics = {}
        t.summary.objective = None
    assert not figures.make_scatter(trials, trial_records.swept_axes(trials), tmp_path / "none.png")  # nothing to plot
    assert not (tmp_path / "none.png").exists()
