"""What a sweep's files survive: a file that cannot be read is that trial's problem (a marked row and
cell, one warning naming it, the report still written); a full disk fails a trial with one line and
leaves no temporary file; a trial's files are written as a unit (an earlier attempt's files stay as
they were until the new attempt ends, then are replaced all together)."""

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import nst_env, run_in
from helpers import read_jsonl, settings, trial
from nst import engine, records, report, trial_records
from nst import summary as trial_summary
from nst.report import figures

BASE = ("device=cpu", "size=32", "steps=4")
FULL = "No space left on device while writing "


# ------------------------------------------------------------------------------- unreadable files


def _fake_sweep(root: Path) -> Path:
    """Three completed trials of a one-axis sweep, with every file a report reads (no run needed)."""
    sweep = root / "sweep"
    for i, w in enumerate(("1e3", "1e4", "1e5")):
        d = sweep / f"{i}_style_weight={w}"
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(f"- style_weight={w}\n")
        (d / "frames").mkdir()
        for n in (1, 2, 3):
            Image.new("RGB", (32, 24), (60 * i, 40 * n, 150)).save(d / "frames" / f"{n}.png")
        shutil.copy(d / "frames" / "3.png", d / "final.png")
        rows = [{"evaluation": n, "wall_time": 0.1 * n, "total": 10.0 / n, "content": 1.0 / n, "style": 2.0 / n, "tv": 0.0}
                for n in (1, 2, 3)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = {"status": "completed", "label": f"style_weight={w}", "overrides": [f"style_weight={w}"],
                   "final": rows[-1], "metrics": {"content_distance": 1.0 + i, "style_distance": 3.0 - i, "psnr": 20.0,
                                                  "ssim": 0.8}, "evaluations": 3, "wall_time": 0.5, "device": "cpu"}
        (d / "summary.json").write_text(json.dumps(summary, indent=2))
    return sweep


def _damage(sweep: Path) -> tuple[Path, Path]:
    """Cut trial 1's summary.json short and trial 2's last metrics.jsonl line; returns both files."""
    t1, t2 = sorted(d for d in sweep.iterdir() if d.is_dir())[1:3]
    summary = t1 / "summary.json"
    summary.write_bytes(summary.read_bytes()[:60])
    metrics = t2 / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-25])
    return summary, metrics


def test_report_marks_a_cut_summary_and_a_cut_metrics_line_and_writes_the_rest(tmp_path, capsys):
    sweep = _fake_sweep(tmp_path)
    summary, metrics = _damage(sweep)
    assert report.main([str(sweep)]) == 0
    err = capsys.readouterr().err
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and "Traceback" not in err
    assert warnings[0].startswith(f"nst.report: warning: {summary}: unreadable (")
    assert warnings[1].startswith(f"nst.report: warning: {metrics}: line 3 is not a JSON row (cut short?)")

    table = pd.read_csv(sweep / "results.csv", keep_default_na=False, dtype={"style_weight": str})
    assert list(table["status"]) == ["completed", "unreadable", "completed"]
    assert list(table["style_weight"]) == ["1e3", "1e4", "1e5"]  # from .hydra/ when the summary is cut
    assert table["problem"][0] == ""
    assert table["problem"][1].startswith("summary.json: unreadable (")
    assert table["problem"][2].startswith("metrics.jsonl: line 3")
    assert float(table["psnr"][2]) == 20.0  # the trial with a cut metrics line keeps its results

    page = (sweep / "report.html").read_text()
    assert page.count("<tr class='completed'>") == 1
    assert page.count("<tr class='unreadable problem'>") == 1 and page.count("<tr class='completed problem'>") == 1
    assert "Unreadable files" in page and "2 with unreadable files (marked)" in page
    for name in ("grid.png", "curves.png"):
        assert (sweep / name).stat().st_size > 0

    # the grid: one row of cells 4 px apart from x=4, y=22; the damaged trials' cells wear the orange mark
    grid = Image.open(sweep / "grid.png").convert("RGB")
    w = figures._cell_box(trial_records.load_trials(sweep, warn=lambda m: None))[0]
    marked = [grid.getpixel((4 + j * (w + 4) + 1, 22 + 1)) == figures.PROBLEM for j in range(3)]
    assert marked == [False, True, True]
    # the cut summary is an empty, crossed cell; the trial with a cut metrics line keeps its image
    assert grid.getpixel((4 + (w + 4) + w // 2, 22 + 30)) == (235, 235, 235)
    assert grid.getpixel((4 + 2 * (w + 4) + w // 2, 22 + 72)) == (120, 120, 150)


def test_python_m_nst_report_exits_0_with_one_warning_line_per_bad_file(tmp_path, run_nst):
    sweep = _fake_sweep(tmp_path)
    summary, metrics = _damage(sweep)
    # a damaged frame and overrides file too: marked, never a crash
    (sweep / "0_style_weight=1e3" / "frames" / "2.png").write_bytes(b"\x89PNG\r\n")
    (sweep / "0_style_weight=1e3" / "summary.json").write_text("[]")  # JSON, but not a summary
    r = run_nst(str(sweep), module="nst.report")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert all(line.startswith("nst.report: warning: ") for line in lines), lines
    assert {str(summary), str(metrics), str(sweep / "0_style_weight=1e3" / "summary.json"),
            str(sweep / "0_style_weight=1e3" / "frames")} == {line.split(": ")[2] for line in lines}
    assert "report: " in r.stdout and (sweep / "report.html").exists()
    table = pd.read_csv(sweep / "results.csv")
    assert list(table["status"]) == ["unreadable", "unreadable", "completed"]


def test_outcome_reads_an_unreadable_summary_as_unreadable(tmp_path):
    sweep = _fake_sweep(tmp_path)
    summary, _ = _damage(sweep)
    (sweep / "2_style_weight=1e5" / "summary.json").write_text('{"status": "completed", "finished_unix": "soon"}')
    out = trial_summary.outcome([sweep], since=0.0)
    assert out.completed == 2
    assert len(out.failed) == 1 and out.failed[0].startswith(f"1_style_weight=1e4: {summary} is unreadable (")
    assert trial_summary.load(summary)[0] is None and trial_summary.read(summary).status is None


def test_a_sweep_beside_a_trial_with_a_cut_summary_reports_it_and_aggregates(tmp_path):
    """A sweep run into a folder where another trial's summary.json is cut: the report is still
    written, with that trial marked; the command's own trial completes."""
    sweep = tmp_path / "sweep"
    other = sweep / "7_style_weight=5"
    (other / ".hydra").mkdir(parents=True)
    (sweep / ".nst").mkdir()  # a folder nst made (nst writes into no other)
    (other / "summary.json").write_text('{"status": "compl')
    r = run_in(tmp_path, "-m", "style_weight=1e3", *BASE, "logger=none", f"hydra.sweep.dir={sweep}")
    assert "Traceback" not in r.stderr and "no summary.json" not in r.stderr
    table = pd.read_csv(sweep / "results.csv")
    assert list(table["status"]) == ["completed", "unreadable"]
    assert f"{other / 'summary.json'}: unreadable" in r.stdout + r.stderr  # the aggregation's warning


# ------------------------------------------------------------------------------------- full disk


def _full_disk(monkeypatch, where: str, *, then: Path | None = None):
    """Writes whose file name contains `where` hit a full disk (half their bytes written, then ENOSPC);
    after the first, so does every write into the folder `then`."""
    real = records._write_all
    state = {"full": False}

    def write_all(f, data):
        name = str(getattr(f, "name", ""))
        if where in name or (state["full"] and then is not None and name.startswith(f"{then}/")):
            state["full"] = True
            real(f, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(records, "_write_all", write_all)


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name == records.STAGING]


def test_a_full_disk_fails_the_trial_with_one_line_and_the_others_go_on(tmp_path, monkeypatch):
    ss = [settings(*BASE, "steps=10"), settings(*BASE, "steps=10", "style_weight=1e5")]
    _full_disk(monkeypatch, str(tmp_path / "a" / "frames" / ".06.png.tmp"))
    out = engine.run_trials([trial(ss[0], tmp_path / "a", frame_every=1), trial(ss[1], tmp_path / "b", frame_every=1)])
    assert out[0]["status"] == "failed"
    assert out[0]["error"] == f"{FULL}{tmp_path / 'a' / 'frames' / '06.png'}"
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["error"] == out[0]["error"]  # recorded
    assert not (tmp_path / "a" / "error.log").exists()  # one line says it all
    assert [r["evaluation"] for r in read_jsonl(tmp_path / "a" / "metrics.jsonl")] == list(range(1, 7))
    assert out[1]["status"] == "completed" and out[1]["evaluations"] == 10
    assert _tmp_files(tmp_path) == []


def test_a_disk_that_stays_full_prints_the_error_it_cannot_record(tmp_path, monkeypatch):
    s = settings(*BASE, "steps=10")
    _full_disk(monkeypatch, str(tmp_path / "a" / "metrics.jsonl"), then=tmp_path / "a")
    out = engine.run_trials([trial(s, tmp_path / "a", frame_every=1), trial(s, tmp_path / "b", frame_every=1)])
    metrics = tmp_path / "a" / "metrics.jsonl"
    assert out[0]["status"] == "failed"
    assert out[0]["error"] == f"{FULL}{metrics} (not recorded: {FULL}{tmp_path / 'a' / 'summary.json'})"
    assert not (tmp_path / "a" / "summary.json").exists()  # resume runs it again
    assert metrics.read_bytes() == b""  # the row that did not fit is not left cut
    assert out[1]["status"] == "completed"
    assert _tmp_files(tmp_path) == []


_INJECT = """
import errno, sys
from nst import records
real, where = records._write_all, sys.argv[1]
def write_all(f, data):
    if where in str(getattr(f, "name", "")):
        real(f, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    real(f, data)
records._write_all = write_all
from nst.run import main
sys.argv = ["nst.run", *sys.argv[2:]]
sys.exit(main())
"""


def test_a_sweep_on_a_full_disk_fails_the_trial_with_one_line_and_goes_on(tmp_path):
    """The command as a user runs it, with the disk full at the first trial's sixth frame."""
    (tmp_path / "inject.py").write_text(_INJECT)
    sweep = tmp_path / "sweep"
    args = ["-m", "style_weight=1e3,1e5", "device=cpu", "size=32", "steps=10", "frame_every=1", "logger=none",
            f"hydra.sweep.dir={sweep}"]
    r = subprocess.run([sys.executable, "inject.py", "style_weight=1e3/frames/.06.png.tmp", *args], cwd=tmp_path,
                       env=nst_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    (first,) = sweep.glob("0_*")
    error = f"{FULL}{first / 'frames' / '06.png'}"
    assert f"failed: {error}" in r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("nst: 1 trial(s) failed: ") and line.endswith(f": {error}")
    assert json.loads((first / "summary.json").read_text())["error"] == error
    table = pd.read_csv(sweep / "results.csv")
    assert list(table["status"]) == ["failed", "completed"]
    assert _tmp_files(sweep) == []


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=150k tmpfs $d"],
                       capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="no private mount namespace for a small tmpfs here")
def test_a_sweep_on_a_real_150_kb_tmpfs_ends_with_one_line_per_trial(tmp_path):
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    command = " ".join([sys.executable, "-m", "nst.run", "-m", "style_weight=1e3,1e5", "device=cpu", "size=32",
                        "steps=10", "frame_every=1", "logger=none", f"hydra.sweep.dir={disk}/sweep"])
    # a private mount namespace: the tmpfs, and what the sweep left on it, are copied out before it goes
    script = f"mount -t tmpfs -o size=150k tmpfs {disk} && {command}; rc=$?; cp -a {disk}/sweep {kept}; exit $rc"
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, env=nst_env(tmp_path),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout and "Logging error" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("nst: 2 trial(s) failed")
    failures = [line for line in r.stdout.splitlines() if ": failed: " in line]
    assert len(failures) == 2 and all(FULL in line for line in failures), r.stdout
    assert _tmp_files(kept) == []


# ------------------------------------------------------------------------------- files as a unit


def _checksums(d: Path) -> dict[str, str]:
    """Every file of the trial's folder but its staging folder, by path, with its SHA-256."""
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and records.STAGING not in p.relative_to(d).parts}


class _Watch:
    """A sink that checks, at every evaluation of the new attempt, that the trial's folder still holds
    exactly the earlier attempt's files; it can stop the run (Ctrl-C) at a given evaluation."""

    def __init__(self, run_dir: Path, expected: dict, interrupt_at: int | None = None):
        self.run_dir, self.expected, self.interrupt_at, self.seen = run_dir, expected, interrupt_at, 0

    def on_step(self, rec):
        assert _checksums(self.run_dir) == self.expected, rec.evaluation
        assert (self.run_dir / records.STAGING / "metrics.jsonl").exists()  # the new attempt writes beside them
        self.seen += 1
        if rec.evaluation == self.interrupt_at:
            raise KeyboardInterrupt

    def close(self, summary):
        pass


def _rerun(s, run_dir: Path, watch: _Watch, frame_every: int):
    from nst.sinks import FileSink
    from nst.stage import load_inputs

    def open_sinks(pos):
        return [FileSink(run_dir, log_every=1, frame_every=frame_every, steps=s.total_steps), watch]

    return engine.run_together([engine.Trial(s, load_inputs(s), run_dir, open_sinks)])[0]


def test_a_rerun_keeps_the_earlier_files_until_it_completes_then_replaces_them_as_a_unit(tmp_path):
    d = tmp_path / "t"
    first = engine.run_together([trial(settings(*BASE), d, frame_every=1)])[0]
    assert first["status"] == "completed"
    (d / "error.log").write_text("an earlier attempt's traceback\n")  # stale: must go with the rest
    before = _checksums(d)
    assert {"final.png", "animation.gif", "metrics.jsonl", "summary.json", "frames/1.png", "frames/4.png"} <= set(before)

    watch = _Watch(d, before)
    second = _rerun(settings(*BASE, "steps=6", "style_weight=1e5"), d, watch, frame_every=5)
    assert second["status"] == "completed", second.get("error")
    assert watch.seen == 6
    after = _checksums(d)
    # all the new attempt's: its frames only (1, 5, 6; none of the earlier 2, 3, 4), its rows, its summary
    assert sorted(p for p in after if p.startswith("frames/")) == ["frames/1.png", "frames/5.png", "frames/6.png"]
    assert "error.log" not in after
    assert [r["evaluation"] for r in read_jsonl(d / "metrics.jsonl")] == list(range(1, 7))
    assert json.loads((d / "summary.json").read_text())["evaluations"] == 6
    assert after["final.png"] != before["final.png"] and after["animation.gif"] != before["animation.gif"]
    assert not (d / records.STAGING).exists() and _tmp_files(d) == []


def test_a_rerun_that_fails_replaces_the_earlier_files_as_a_unit_and_one_interrupted_leaves_them(tmp_path):
    d = tmp_path / "t"
    engine.run_together([trial(settings(*BASE), d, frame_every=1)])
    before = _checksums(d)

    # Ctrl-C in the middle: the earlier attempt's files, summary.json included, stay as they were
    watch = _Watch(d, before, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        _rerun(settings(*BASE, "steps=6", "seed=1", "init=noise"), d, watch, frame_every=1)
    assert _checksums(d) == before and not (d / records.STAGING).exists()

    # a failure: the failed attempt's record replaces the earlier one whole (no earlier final.png left
    # beside a summary that says failed)
    watch = _Watch(d, before)
    failed = _rerun(settings(*BASE, "init=noise", "style_weight=1e38"), d, watch, frame_every=1)
    assert failed["status"] == "failed" and failed["error"].startswith("the loss became inf")
    after = _checksums(d)
    assert set(after) == {"metrics.jsonl", "summary.json"}
    assert json.loads((d / "summary.json").read_text())["status"] == "failed"
    assert not (d / records.STAGING).exists()


def test_a_failure_recorded_without_a_run_replaces_the_earlier_files_as_a_unit(tmp_path):
    """record_failure: a refused input or a lost batch ends the trial's attempt as the runner would."""
    def folder(name, files):
        d = tmp_path / name
        for f, text in files.items():
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            (d / f).write_text(text)
        return d

    failed = trial_summary.Summary(status="failed", error="worker process died")
    # a finished earlier attempt: all its files go
    done = folder("done", {"summary.json": "{}", "final.png": "x", "metrics.jsonl": "{}\n", "frames/1.png": "x"})
    trial_summary.record_failure(done, failed)
    assert _checksums(done).keys() == {"summary.json"} and trial_summary.read(done / "summary.json") == failed
    # a staged attempt that was lost: its files replace the earlier ones
    staged = folder("staged", {"summary.json": "{}", "final.png": "x", f"{records.STAGING}/metrics.jsonl": "{}\n"})
    trial_summary.record_failure(staged, failed)
    assert _checksums(staged).keys() == {"summary.json", "metrics.jsonl"}
    # an attempt that wrote in place (a first attempt): its own files stay beside its failure
    first = folder("first", {"metrics.jsonl": "{}\n", "frames/1.png": "x"})
    trial_summary.record_failure(first, failed)
    assert _checksums(first).keys() == {"summary.json", "metrics.jsonl", "frames/1.png"}
    assert _tmp_files(tmp_path) == []
