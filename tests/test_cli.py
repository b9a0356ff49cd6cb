"""The command line, as a user runs it: real Hydra runs and multiruns in a subprocess."""

from pathlib import Path

import pytest

from helpers import summary

TINY = ["size=32", "steps=8", "device=cpu", "frame_every=4"]


def _trials_of(sweep: Path) -> list[Path]:
    return sorted((d for d in sweep.iterdir() if d.is_dir() and (d / ".hydra").is_dir()), key=lambda d: int(d.name.split("_")[0]))


def test_single_run(run_nst, tmp_path):
    r = run_nst(*TINY)
    assert r.returncode == 0, r.stderr
    (run_dir,) = list((tmp_path / "outputs" / "runs").iterdir())
    assert str(run_dir) in r.stdout  # says where the outputs are
    for name in ("final.png", "metrics.jsonl", "summary.json", ".hydra/config.yaml", "frames/8.png"):
        assert (run_dir / name).exists(), name
    assert summary(run_dir)["status"] == "completed"
    assert summary(run_dir)["batch"]["size"] == 1  # a single run is a batch of one through the same runner


def test_style_weight_sweep_one_folder_per_trial_and_style_loss_falls(style_weight_sweep):
    sweep, r, _ = style_weight_sweep  # -m style_weight=1e2,1e4,1e6, 6 evaluations each
    assert r.returncode == 0, r.stderr
    dirs = _trials_of(sweep)
    assert len(dirs) == 3
    summaries = [summary(d) for d in dirs]
    assert all(s["status"] == "completed" for s in summaries)
    weights = [s["settings"]["style_weight"] for s in summaries]
    assert weights == [1e2, 1e4, 1e6]
    style = [s["final"]["style"] for s in summaries]
    assert style[0] > style[1] > style[2], style


def test_a_failing_trial_does_not_stop_the_others(failing_trial_sweep):
    sweep, r = failing_trial_sweep  # -m style_weight=1e39,1e5: the failing trial runs first
    assert r.returncode == 1
    failed, ok = (summary(d) for d in _trials_of(sweep))
    assert failed["status"] == "failed" and "the loss became inf" in failed["error"]
    assert ok["status"] == "completed"
    assert "1 trial(s) failed" in r.stderr and "Traceback" not in r.stderr


BAD = {
    "content=missing.jpg": "content: no such file 'missing.jpg'",
    "content=empty.jpg": "content: 'empty.jpg' is an empty file",
    "style=text.jpg": "style: 'text.jpg' is not an image file",
    "content=trunc.jpg": "content: 'trunc.jpg' could not be decoded",
    "content=bomb.png": "content: 'bomb.png' is too large",
    "style_layers=[conv1_1,conv9_9]": "style_layers: unknown layer 'conv9_9' for vgg19; valid layers: conv1_1,",
    "content_layers=[pool6]": "content_layers: unknown layer 'pool6'",
    "size=0": "size: must be positive",
    "size=-5": "size: must be positive",
    "size=16": "size: the image would be 16x12 px; its short side must be at least 16 px",
    "steps=0": "steps: must be positive",
    "style_weight=-1": "style_weight: must be zero or positive",
    "content_weight=-0.1": "content_weight: must be zero or positive",
    "tv_weight=-3": "tv_weight: must be zero or positive",
    "optimizer=sgd": "optimizer: unknown choice 'sgd'; allowed: adam, adam_099, lbfgs, lbfgs_fixed",
    "model=resnet": "model: unknown choice 'resnet'; allowed: vgg16, vgg19",
    "init=zeros": "init: unknown choice 'zeros'; allowed: content, content_matched, content_noise, image, noise",
    "pooling=median": "pooling: unknown value 'median'; allowed: max, avg",
    "loss.style=gatys": "loss.style: unknown value 'gatys'; allowed: mse, paper, w2",
    "loss.tv=huber": "loss.tv: unknown value 'huber'; allowed: mse, l1, sum, stencil",
    "average_decay=1": "average_decay: must be in [0, 1)",
    "budget=0": "budget: must be positive",
    "average_decay=-0.5": "average_decay: must be zero or positive",
    "device=tpu": "device: unknown device 'tpu'",
    "stlye_weight=1": "stlye_weight: is not a config key; did you mean 'style_weight'?",
    "+sweep=nope": "sweep: unknown choice 'nope'",
    "style_blend=[1,2]": "style_blend: must be null or 1 non-negative number(s)",
    "color=sepia": "color: unknown value 'sepia'; allowed: none, luminance, histogram",
    "crop=circle": "crop: unknown value 'circle'; allowed: none, square",
    "pyramid.steps=[5]": "pyramid.steps: must be null or 0 positive whole number(s)",
    "pyramid.factor=1": "pyramid.factor: must be greater than 1",
    "init.noise=pink": "init.noise: unknown value 'pink'; allowed: uniform, gaussian",
    "precision=fp16": "precision: unknown value 'fp16'; allowed: auto, fp32, tf32, bf16",
    "style=[starry_night,nope.jpg]": "style[1]: no such file 'nope.jpg'",
}


@pytest.fixture
def bad_files(tmp_path):
    from test_images import _bomb

    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    data = (Path(__file__).parent.parent / "nst" / "data" / "images" / "tubingen.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    _bomb(tmp_path / "bomb.png")


def _assert_one_line_error(code: int, stderr: str, override: str, folder: Path) -> None:
    assert code == 2, (code, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("nst: error: " + BAD[override]), lines[0]
    assert not (folder / "outputs").exists()  # nothing ran, nothing was written


@pytest.mark.parametrize("override", list(BAD))
def test_bad_input_gets_one_line_and_exit_2_before_any_work(tmp_path, bad_files, monkeypatch, capsys, override):
    # main() is what `python -m nst.run` runs and exits with; in this process, each case costs no
    # interpreter and torch start-up (the subprocess test below runs a few of them as a user does)
    from nst.run import main

    monkeypatch.chdir(tmp_path)
    code = main([override])
    _assert_one_line_error(code, capsys.readouterr().err, override, tmp_path)


# one of each kind: an image file, a setting's value, a key Hydra does not know
@pytest.mark.parametrize("override", ["content=trunc.jpg", "size=16", "stlye_weight=1"])
def test_bad_input_from_the_command_line(run_nst, tmp_path, bad_files, override):
    r = run_nst(override)
    _assert_one_line_error(r.returncode, r.stderr, override, tmp_path)


def test_bad_value_in_one_trial_of_a_sweep_stops_the_sweep_before_it_starts(run_nst, tmp_path):
    r = run_nst("-m", "style_weight=1e3,-1", *TINY)
    assert r.returncode == 2 and "style_weight: must be zero or positive, got -1" in r.stderr
    assert not (tmp_path / "outputs").exists()
