"""Sweeps end to end: aggregation into results.csv, grid, curves, animations and report; rebuild; resume."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import run_in
from nst import report, trial_records
from nst.report import figures

SWEEP = ["-m", "pooling=max,avg", "style_weight=1e3,1e6", "size=32", "steps=6", "frame_every=2", "device=cpu"]


def _sweep_dir(tmp_path: Path) -> Path:
    (d,) = list((tmp_path / "outputs" / "sweeps").iterdir())
    return d


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The two-axis sweep, run once for the tests below; those that change its folder change a copy."""
    cwd = tmp_path_factory.mktemp("sweep")
    r = run_in(cwd, *SWEEP)
    assert r.returncode == 0, r.stderr
    return _sweep_dir(cwd), r


@pytest.fixture
def sweep_copy(sweep, tmp_path) -> Path:
    d = tmp_path / sweep[0].name
    shutil.copytree(sweep[0], d)
    return d


def _referenced(report: Path) -> list[str]:
    return re.findall(r"""(?:src|href)=["'](?!data:)([^"'#]+)["']""", report.read_text())  # data: is in the page


def test_two_axis_sweep_aggregates(sweep):
    d, r = sweep
    table = pd.read_csv(d / "results.csv")
    assert len(table) == 4 and set(table["status"]) == {"completed"}
    assert {"pooling", "style_weight", "final_total", "final_style", "style_swd", "gmsd", "psnr", "ssim", "gram_distance",
            "evaluations", "wall_time", "evals_per_second", "peak_memory_mb"} <= set(table.columns)
    assert sorted(zip(table["pooling"], table["style_weight"], strict=True)) == sorted(
        [("max", 1000.0), ("max", 1000000.0), ("avg", 1000.0), ("avg", 1000000.0)])
    # standardised metrics rank by the same yardstick: more style weight, closer to the style
    for pool in ("max", "avg"):
        rows = table[table["pooling"] == pool].sort_values("style_weight")
        assert rows["style_swd"].iloc[0] > rows["style_swd"].iloc[1]
    # the grid is 2 rows x 2 columns of cells
    trials = trial_records.load_trials(d)
    box = figures._cell_box(trials)
    grid = Image.open(d / "grid.png")
    cell_h = box[1] + 18
    assert (grid.height - 4) // (cell_h + 4) == 2
    assert (grid.width - 4) // (box[0] + 4) in (2, 3)  # two columns plus the row labels' margin
    assert Image.open(d / "curves.png").size[0] > 400
    for t in trials:
        gif = Image.open(t.path / "animation.gif")
        assert gif.n_frames == len(list((t.path / "frames").glob("*.png"))) == 4  # evaluations 1, 2, 4, 6
    refs = _referenced(d / "report.html")
    assert "grid.png" in refs and "curves.png" in refs and "results.csv" in refs
    assert sum(ref.endswith("animation.gif") for ref in refs) == 4
    for ref in refs:
        assert (d / ref).exists(), ref
    assert "python -m nst.run -m pooling=max,avg" in (d / "report.html").read_text()
    assert "sweep report:" in r.stderr + r.stdout


def test_report_rebuilds_the_same_outputs_from_the_folder_alone(sweep_copy, run_nst):
    d = sweep_copy
    before = {n: (d / n).read_bytes() for n in ("results.csv", "grid.png", "report.html")}
    for n in ("results.csv", "grid.png", "curves.png", "report.html"):
        (d / n).unlink()
    r = run_nst(str(d), module="nst.report")
    assert r.returncode == 0, r.stderr
    for n, data in before.items():
        assert (d / n).read_bytes() == data, n
    assert (d / "curves.png").exists()


def test_report_errors(run_nst, tmp_path, capsys):
    from nst import report

    r = run_nst(str(tmp_path / "nope"), module="nst.report")
    assert r.returncode == 2 and "no such folder" in r.stderr
    # what `python -m nst.report` runs and exits with, in this process: a folder with no trials
    assert report.main([str(tmp_path)]) == 2
    assert "no trial folders" in capsys.readouterr().err


def test_resume_runs_only_what_is_missing(sweep_copy, run_nst):
    d = sweep_copy
    trials = trial_records.load_trials(d)
    # one trial never finished, one failed: both must run again; the other two are skipped
    (trials[1].path / "summary.json").unlink()
    (trials[1].path / "final.png").unlink()
    s = json.loads((trials[2].path / "summary.json").read_text())
    s["status"] = "failed"
    (trials[2].path / "summary.json").write_text(json.dumps(s))
    kept = {t.path.name: (t.path / "final.png").stat().st_mtime_ns for t in (trials[0], trials[3])}
    batches = {t.path.name: t.summary.batch.id for t in trials if t.summary.batch}
    r = run_nst(*SWEEP, f"hydra.sweep.dir={d}")
    assert r.returncode == 0, r.stderr
    assert (r.stdout + r.stderr).count("already completed with this config, skipped") == 2
    assert "resumed: 2 trial(s) had already completed" in r.stdout
    for name, mtime in kept.items():
        assert (d / name / "final.png").stat().st_mtime_ns == mtime
    assert all(t.status == "completed" for t in trial_records.load_trials(d))
    # the launcher ran just the two missing trials (they differ in pooling: a batch each); the
    # skipped ones keep the batch they ran in the first time
    after = {t.path.name: t.summary.batch.id for t in trial_records.load_trials(d) if t.summary.batch}
    assert {after[name] for name in kept} == {batches[name] for name in kept}
    assert not {after[t.path.name] for t in trials[1:3]} & set(batches.values())


def test_a_failed_trial_is_a_marked_cell(failing_trial_sweep):
    d, r = failing_trial_sweep  # -m style_weight=1e39,1e5
    assert r.returncode == 1
    table = pd.read_csv(d / "results.csv")
    assert list(table["status"]) == ["failed", "completed"]
    assert "the loss became inf" in table["error"].iloc[0]
    grid = Image.open(d / "grid.png").convert("RGB")
    box = figures._cell_box(trial_records.load_trials(d))
    # the first cell is the grey "failed" cell with its red cross
    pixels = [grid.getpixel((x, y)) for x in range(0, grid.width // 2) for y in range(0, grid.height, 3)]
    assert (235, 235, 235) in pixels and any(p[0] > 150 and p[1] < 80 for p in pixels)
    assert box[0] <= grid.width


def test_one_axis_sweep_and_sorting(tmp_path, run_nst):
    r = run_nst("-m", "+sweep=pooling", "size=32", "steps=3", "device=cpu")
    assert r.returncode == 0, r.stderr
    d = _sweep_dir(tmp_path)
    assert d.name.split("_")[-2] == "pooling"  # the sweep's name is in its folder
    out = report.aggregate(d, annotate=["ssim"], sort_by="style_swd")
    assert Image.open(out["grid"]).size[0] > 2 * figures.CELL


def test_an_interrupted_sweep_leaves_no_half_written_files_and_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import conftest

    # 40 evaluations of the batch take seconds: the signal, sent within 0.2 s of the first row, finds it running
    args = ["-m", "style_weight=1e3,1e5", "size=48", "steps=40", "device=cpu", "logger=none"]
    env = conftest.nst_env(tmp_path)
    # Ctrl-C's default action even where pytest itself runs with SIGINT ignored (started in the background)
    proc = subprocess.Popen([sys.executable, "-m", "nst.run", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    metrics = []
    while time.time() < deadline and not metrics:  # wait until the first trial is optimising
        metrics = [m for m in tmp_path.glob("outputs/sweeps/*/0_*/metrics.jsonl") if m.stat().st_size > 0]
        time.sleep(0.2)
    assert metrics, "the first trial never started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    trial = metrics[0].parent
    assert not (trial / "summary.json").exists() and not (trial / "final.png").exists()
    assert not list(trial.rglob("*.tmp"))
    # the same command into the same folder runs the interrupted trial and the one never started
    r = subprocess.run([sys.executable, "-m", "nst.run", *args, f"hydra.sweep.dir={trial.parent}"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    trials = trial_records.load_trials(trial.parent)
    assert [t.status for t in trials] == ["completed", "completed"]
    assert (trial / "final.png").exists()
