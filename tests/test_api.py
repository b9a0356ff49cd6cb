"""The Python API (nst.api): the same engine without the command line, at tiny sizes with the real weights."""

import json
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import nst_env
from nst import stylize, stylize_batch
from nst.api import Stylized
from nst.errors import InputError
from nst.images import bundled_images, to_tensor

TINY = {"size": 32, "device": "cpu"}


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_stylize_returns_the_picture_with_its_summary_and_loss_curve(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the API's own scratch folder goes
    seen = []
    result = stylize("tubingen", "starry_night", steps=4, style_weight=1e4, optimizer__history_size=5, progress=False,
                     callback=lambda step: seen.append((step.trial, step.evaluation, dict(step.values))), **TINY)
    # still the picture: a PIL image, shown as one in a notebook
    assert isinstance(result, Image.Image) and isinstance(result, Stylized)
    assert result.mode == "RGB" and max(result.size) == 32 and result._repr_png_()[:4] == b"\x89PNG"
    # the summary as typed attributes, not in the image's metadata
    assert "summary" not in result.info
    assert result.summary["status"] == "completed" and result.evaluations == 4
    assert result.settings.style_weight == 1e4 and result.settings.optimizer.history_size == 5
    assert set(result.final) >= {"total", "content", "style", "tv"} and result.final == result.summary["final"]
    assert result.metrics == result.summary["metrics"] and "psnr" in result.metrics
    assert result.wall_time > 0 and result.run_dir is None and result.resumed is False
    # the loss curve: one row per evaluation, what the callback saw
    curve = result.losses
    assert isinstance(curve, pd.DataFrame) and list(curve.index) == [1, 2, 3, 4]
    assert list(curve["total"]) == [v["total"] for _, _, v in seen]
    assert curve["total"].iloc[-1] < curve["total"].iloc[0]
    assert [e for _, e, _ in seen] == [1, 2, 3, 4] and {t for t, _, _ in seen} == {0}
    assert list(tmp_path.iterdir()) == []  # nothing left behind without out_dir


def test_the_batch_form_writes_a_sweep_folder_with_its_report_and_resumes_it(tmp_path):
    out = tmp_path / "out"
    results = stylize_batch("tubingen", "starry_night", [{"style_weight": 1e2}, {"style_weight": 1e6}],
                            steps=3, progress=False, out_dir=out, **TINY)
    assert [r.settings.style_weight for r in results] == [1e2, 1e6]
    assert [r.summary["batch"]["size"] for r in results] == [2, 2]  # one batch, as a sweep runs them
    assert results[0].final["style"] > results[1].final["style"]  # the style weight acts
    assert [r.run_dir.name for r in results] == ["0_style_weight=1e2", "1_style_weight=1e6"]
    for r in results:
        assert (r.run_dir / "final.png").exists()
        assert json.loads((r.run_dir / "summary.json").read_text())["status"] == "completed"
    table = pd.read_csv(out / "results.csv")  # the report, as a command's sweep has it
    assert list(table["style_weight"]) == [1e2, 1e6] and list(table["status"]) == ["completed"] * 2
    assert (out / "grid.png").exists() and (out / "report.html").exists()
    sweep = json.loads((out / ".nst" / "sweep.json").read_text())
    assert sweep["swept"] == ["style_weight"] and "size=32" in sweep["fixed"]

    # the same call again: read back, nothing run (a notebook cell run twice costs nothing)
    calls = []
    again = stylize_batch("tubingen", "starry_night", [{"style_weight": 1e2}, {"style_weight": 1e6}],
                          steps=3, progress=False, out_dir=out, callback=calls.append, **TINY)
    assert calls == [] and [r.resumed for r in again] == [True, True]
    assert [r.final for r in again] == [r.final for r in results]
    curve = again[0].losses  # from metrics.jsonl
    assert list(curve["total"]) == pytest.approx(list(results[0].losses.loc[curve.index, "total"]), rel=1e-6)
    # another value of the swept key extends the sweep, into its own folder
    (more,) = stylize_batch("tubingen", "starry_night", [{"style_weight": 1e4}], steps=3, progress=False, out_dir=out, **TINY)
    assert more.run_dir.name == "2_style_weight=1e4" and not more.resumed
    assert list(pd.read_csv(out / "results.csv")["style_weight"]) == [1e2, 1e6, 1e4]


def test_images_in_memory_are_inputs_as_their_files_are(tmp_path):
    content = Image.open(bundled_images()["tubingen"]).convert("RGB")
    style = to_tensor(Image.open(bundled_images()["starry_night"]).convert("RGB"), torch.device("cpu"))  # [1,3,H,W]
    args = {"steps": 3, "progress": False, **TINY}
    from_files = stylize("tubingen", "starry_night", **args)
    from_memory = stylize(content, style[0], out_dir=tmp_path / "out", **args)
    # the same pixels, the same transfer (PNG keeps 8-bit pixels exactly)
    assert from_memory.final == pytest.approx(from_files.final, rel=1e-5)
    # written inside the run's own folder, and what was given is recorded
    written = sorted((tmp_path / "out" / "inputs").iterdir())
    assert len(written) == 2 and all(p.suffix == ".png" for p in written)
    given = from_memory.summary["inputs"]
    assert given["content"].startswith("a PIL image (RGB, ") and given["style"].startswith("a tensor [3, ")
    assert sorted(tmp_path.iterdir()) == [tmp_path / "out"]
    # bad tensors: one line naming the input, before anything runs
    with pytest.raises(InputError, match=r"^content: a tensor must be one RGB image.*\[2, 3, "):
        stylize(torch.rand(2, 3, 32, 32), **args)
    with pytest.raises(InputError, match=r"^style: a tensor must hold values in \[0, 1\], got values from [0-9.]+ to [0-9.]+"):
        stylize("tubingen", style * 255, **args)
    with pytest.raises(InputError, match=r"^style\[1\]: must be a bundled name, a path, a PIL image or a tensor"):
        stylize("tubingen", ["starry_night", 42], **args)


def test_bad_keywords_are_one_line_errors_before_anything_runs(tmp_path):
    with pytest.raises(InputError, match=r"^size"):
        stylize(size=-3, device="cpu", out_dir=tmp_path / "a")
    with pytest.raises(InputError, match=r"^content"):
        stylize("no_such_picture.jpg", device="cpu", size=32, steps=1, out_dir=tmp_path / "b")
    with pytest.raises(InputError, match=r"^hydra.run.dir: the Python API takes the config's own keys"):
        stylize(**{"hydra.run.dir": "x"})
    assert list(tmp_path.iterdir()) == []  # refused before out_dir was made


def test_values_from_python_are_data_never_interpolated(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_TEST_SECRET", "hunter2")
    for call in (lambda: stylize(content="/x/${oc.env:NST_TEST_SECRET}.jpg", **TINY),
                 lambda: stylize(style=["starry_night", "${oc.env:NST_TEST_SECRET}"], **TINY),
                 lambda: stylize(size="${oc.env:NST_TEST_SECRET}", device="cpu"),
                 lambda: stylize(device="${oc.env:NST_TEST_SECRET}", size=32)):
        with pytest.raises(InputError) as e:
            call()
        assert "hunter2" not in str(e.value) and "${oc.env:NST_TEST_SECRET}" in str(e.value)
    with pytest.raises(InputError, match=r"^content: no such file '/x/\$\{oc.env:NST_TEST_SECRET\}.jpg'"):
        stylize(content="/x/${oc.env:NST_TEST_SECRET}.jpg", **TINY)
    # a file whose name holds the very characters is found and used, backslash and quotes included
    odd = tmp_path / "it's a \\${oc.env:NST_TEST_SECRET}, [x].jpg"
    Image.open(bundled_images()["tubingen"]).convert("RGB").save(odd)
    result = stylize(str(odd), steps=1, progress=False, **TINY)
    assert result.settings.content == str(odd)


def test_out_dir_that_is_not_nsts_is_refused_and_left_as_it_was(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("my own numbers\n")
    before = _listing(mine)
    with pytest.raises(InputError, match=rf"^out_dir: {mine} is a folder nst did not make .* not empty"):
        stylize(steps=1, out_dir=mine, **TINY)
    assert _listing(mine) == before and (mine / "results.csv").read_text() == "my own numbers\n"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for where in (a_file, a_file / "below"):
        with pytest.raises(InputError, match=r"^out_dir: "):
            stylize(steps=1, out_dir=where, **TINY)
    assert a_file.read_text() == "x"
    run = tmp_path / "run"  # a single run's folder (hydra.run.dir) holds one trial, not a sweep
    (run / ".hydra").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    with pytest.raises(InputError, match=rf"^out_dir: {run} is a single run's folder, not a sweep folder"):
        stylize(steps=1, out_dir=run, **TINY)
    assert _listing(run) == [".hydra", "summary.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert stylize(steps=1, progress=False, out_dir=empty, **TINY).run_dir.parent == empty


def test_out_dir_of_another_sweep_is_refused(tmp_path):
    out = tmp_path / "out"
    stylize_batch(variants=[{"style_weight": 1e2}], steps=1, progress=False, out_dir=out, **TINY)
    before = _listing(out)
    with pytest.raises(InputError, match=rf"^out_dir: {out} holds another sweep"):
        stylize_batch(variants=[{"style_weight": 1e2}], steps=2, progress=False, out_dir=out, **TINY)  # other fixed settings
    with pytest.raises(InputError, match=rf"^out_dir: {out} holds another sweep"):
        stylize_batch(variants=[{"tv_weight": 1.0}], steps=1, progress=False, out_dir=out, **TINY)  # another swept key
    assert _listing(out) == before


FIXED = ["logger=none", "content=tubingen", "style=starry_night", "size=32", "device=cpu"]


def test_out_dir_a_command_is_running_is_refused(tmp_path):
    """A command's sweep folder is refused while the command runs (its owner holds the lock), even
    for a call that would extend that very sweep."""
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "nst.run", "-m", *FIXED, "steps=100000", "style_weight=1e2,1e6",
                             f"hydra.sweep.dir={out}"], cwd=tmp_path, env=nst_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (out / ".nst" / "lock").exists() or not (out / ".nst" / "lock").read_text().strip():
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
            time.sleep(0.2)
        with pytest.raises(InputError, match=rf"^out_dir: {out} is being run by another command \(pid {proc.pid} "):
            stylize_batch(variants=[{"style_weight": 1e4}], steps=100000, progress=False, out_dir=out, **TINY)
    finally:
        proc.terminate()  # stopped as SIGTERM stops a command: the trials are left unfinished
        proc.communicate(timeout=120)
    assert not list(out.glob("*style_weight=1e4*"))


def test_a_commands_trials_are_read_back_from_python(tmp_path, run_nst):
    """Once the command has ended, the same trial asked from Python is found in the command's own folder
    (under the number and name the command gave it), not run again beside it."""
    out = tmp_path / "sweep"
    done = run_nst("-m", *FIXED, "steps=2", "style_weight=1e2,1e6", f"hydra.sweep.dir={out}")
    assert done.returncode == 0, done.stderr
    folders = sorted(d.name for d in out.iterdir() if d.is_dir() and not d.name.startswith("."))
    calls = []
    (again,) = stylize_batch(variants=[{"style_weight": 1e6}], steps=2, progress=False, out_dir=out, callback=calls.append,
                             **TINY)
    assert again.resumed and calls == [] and again.run_dir.name == folders[1]
    assert sorted(d.name for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")) == folders


def test_progress_is_on_by_default_and_can_be_turned_off(tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("NST_PROGRESS", raising=False)
    stylize(steps=2, **TINY)
    assert "nst: 100%|" in capfd.readouterr().err
    stylize(steps=2, progress=False, **TINY)
    assert "eval" not in capfd.readouterr().err
    monkeypatch.setenv("NST_PROGRESS", "0")
    stylize(steps=2, **TINY)
    assert "eval" not in capfd.readouterr().err
