"""What a new user meets first: how long a command will take, refusals that say the fix, the sweep's
progress, where offline W&B runs are and how to upload them, and a --help that does not wait for torch."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import conftest
from nst import run


def _imported(tmp_path: Path, *args: str, env_extra: dict | None = None) -> tuple[subprocess.CompletedProcess, set]:
    env = {**conftest.nst_env(tmp_path), **(env_extra or {})}
    r = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    modules = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    return r, modules


@pytest.mark.parametrize("args, env_extra", [
    (["-m", "nst.run", "--help"], None),
    (["-m", "nst", "--help"], None),
    # what bash's completion function runs on each Tab (nst -sc install=bash)
    (["-m", "nst.run", "-sc", "query=bash"], {"COMP_LINE": "nst sty"}),
])
def test_help_and_tab_completion_import_neither_torch_nor_matplotlib(tmp_path, args, env_extra):
    r, modules = _imported(tmp_path, *args, env_extra=env_extra)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "nst.run" in modules  # the app itself was imported, so the check means something
    assert not {m for m in modules if m.split(".")[0] in ("torch", "matplotlib", "torchvision")}
    assert ("style_weight=" in r.stdout) if env_extra else ("Config groups" in r.stdout)


def test_a_long_cpu_run_is_estimated_before_it_starts(tmp_path):
    # the default transfer (512 px, 500 evaluations) on the CPU: stopped as soon as the line is out
    p = subprocess.Popen([sys.executable, "-m", "nst.run", "device=cpu", "logger=none", "hydra.run.dir=run"],
                         cwd=tmp_path, env=conftest.nst_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    lines, deadline = [], time.monotonic() + 300
    try:
        for line in p.stderr:
            lines.append(line)
            if "will take about" in line or time.monotonic() > deadline:
                # what the run's folder holds when the line is said: at most the up-front claim (.nst/)
                seen = sorted(q.name for q in (tmp_path / "run").iterdir()) if (tmp_path / "run").is_dir() else []
                break
    finally:
        p.terminate()
        p.communicate(timeout=120)
    line = lines[-1]
    assert re.search(r"^nst: this will take about \d+(\.\d)? (min|h) on this CPU \(500 evaluations at 512x\d+: "
                     r"[\d.]+ TFLOP at [\d.]+ GFLOP/s, measured just now\); a CPU-sized run: size=256 steps=150, "
                     r"about \d+ (s|min)$", line), lines
    assert seen in ([], [".nst"]), seen  # said before the trial's files, let alone its network


def test_short_run_has_no_estimate_and_names_its_offline_wandb_run(run_nst, tmp_path):
    r = run_nst("size=32", "steps=2", "device=cpu", "hydra.run.dir=run")  # the default logger: W&B, offline
    assert r.returncode == 0, r.stderr
    assert "will take about" not in r.stdout + r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line == f"W&B: 1 offline run(s) not uploaded yet; to upload them: wandb sync {tmp_path / 'run'}/wandb/offline-run-*"
    assert _would_sync(line, tmp_path) == 1


def _would_sync(line: str, tmp_path: Path) -> int:
    """How many runs W&B's own `wandb sync --dry-run` finds with the command the line gives, run by a shell."""
    wandb = Path(sys.executable).parent / "wandb"
    command = line.split("to upload them: ", 1)[1].replace("wandb sync ", f"{wandb} sync --dry-run ", 1)
    r = subprocess.run(["bash", "-c", command], env=conftest.nst_env(tmp_path), capture_output=True, text=True, timeout=120)
    m = re.search(r"Would sync (\d+) run\(s\)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    return int(m.group(1))


def test_sweep_names_its_offline_wandb_runs_and_the_sync_command(style_weight_sweep, tmp_path):
    sweep, r, _ = style_weight_sweep  # three trials and the aggregate, W&B offline
    line = r.stdout.strip().splitlines()[-1]
    assert line == (f"W&B: 4 offline run(s) not uploaded yet; to upload them: wandb sync {sweep}/wandb/offline-run-* "
                    f"{sweep}/*/wandb/offline-run-*")
    assert _would_sync(line, tmp_path) == 4
    assert "trials done" not in r.stderr  # NST_PROGRESS=0: no sweep bar either


def test_sweep_progress_line_and_the_launchers_line_per_batch(tmp_path):
    env = {**conftest.nst_env(tmp_path), "NST_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "nst.run", "-m", "style_weight=1e3,1e5", "size=32", "steps=3", "device=cpu",
                        "logger=none", "hydra.launcher.max_batch=1", "hydra.sweep.dir=sweep"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    bars = [s for s in re.split(r"[\r\n]", r.stderr) if s.startswith("sweep: ")]
    assert re.search(r"^sweep: 0/2 trials done \|.*\| 0/6 evaluations \[00:\d\d elapsed, \? left\]", bars[0]), bars[:3]
    bar = r"^sweep: 1/2 trials done \|.*\| 3/6 evaluations \[\d\d:\d\d elapsed, \d\d:\d\d left\]"
    assert re.search(bar, "\n".join(bars), re.M)
    assert re.search(r"^sweep: 2/2 trials done \|.*\| 6/6 evaluations", bars[-1]), bars[-3:]
    assert re.search(r"nst launcher: 1/2 jobs done, 0:\d\d:\d\d elapsed, about 0:\d\d:\d\d left", r.stdout + r.stderr)


REFUSED = {
    ("+sweep=style_weight",):
        "nst: error: +sweep: selects a sweep, which runs as a multirun: add -m (nst -m +sweep=style_weight)",
    ("+search=adam_lr", "size=64"):
        "nst: error: +search: selects a search, which runs as a multirun: add -m (nst -m +search=adam_lr size=64)",
    ("-m", "sweep=style_weight"): "nst: error: sweep: a ready sweep is chosen with a leading '+': -m +sweep=style_weight",
    ("-m", "style_weight=1e3,", "1e4"): "nst: error: style_weight: 'style_weight=1e3, 1e4': a space after a comma splits the "
                                        "argument in the shell; write the values without spaces: style_weight=1e3,1e4",
    ("content=/a/my", "photo.jpg"): "nst: error: content: 'photo.jpg' follows 'content=/a/my' as an argument of its own (the "
                                    "shell splits at a space); if it belongs to that value, quote the whole argument: "
                                    "'content=/a/my photo.jpg'",
    ("content=/a/my,photo.jpg",): "nst: error: content: has several values: add -m to run one trial per value; or, if the "
                                  "comma is part of a file name, quote it for Hydra: 'content=\"/a/my,photo.jpg\"'",
    ("-m", "content=/a/my,photo.jpg"): "nst: error: content: no such file '/a/my' (give a path to an image, or one of the "
                                       "bundled examples: durer_lion, great_wave, inokashira_snow, seated-nude, "
                                       "shipwreck, starry_night, the_harvesters, the_scream, tubingen, "
                                       "woman-with-hat-matisse); if the comma is part of the file name, quote it for Hydra: "
                                       "'content=\"/a/my,photo.jpg\"'",
}


@pytest.mark.parametrize("argv", list(REFUSED))
def test_refused_in_one_line_with_the_fix_and_nothing_written(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run.main(list(argv)) == 2
    out = capsys.readouterr()
    assert out.err.strip() == REFUSED[argv] and out.out == ""
    assert list(tmp_path.iterdir()) == []


def test_quoting_a_path_with_a_comma_as_the_hint_says_reads_the_file(tmp_path):
    from PIL import Image

    Image.new("RGB", (48, 40), (120, 80, 40)).save(tmp_path / "my,photo.jpg")
    r = subprocess.run(f"""{sys.executable} -m nst.run 'content="{tmp_path}/my,photo.jpg"' size=32 steps=1 device=cpu """
                       "logger=none hydra.run.dir=run", shell=True, cwd=tmp_path, env=conftest.nst_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "final.png").exists()


def test_sweep_without_m_is_refused_by_the_command(run_nst, tmp_path):
    # the headline mistake, as typed: before, it ran one default transfer for minutes and exited 0
    r = run_nst("+sweep=style_weight")
    assert r.returncode == 2 and r.stdout == ""
    expected = "nst: error: +sweep: selects a sweep, which runs as a multirun: add -m (nst -m +sweep=style_weight)"
    assert r.stderr.strip() == expected
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []


def test_cuda_without_cuda_is_refused_up_front(run_nst, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA here")
    r = run_nst("-m", "device=cuda,cpu", "size=32", "steps=1")  # W&B offline: the default logger
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == ("nst: error: device: 'cuda' asked for, but no CUDA device is available here; "
                                "use device=cpu or device=auto")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []  # no run folder, no W&B run


def test_quick_help_is_hydras_help_word_for_word(run_nst):
    # `--help` alone is answered from the config folder; with an override it is Hydra's own
    quick, hydras = run_nst("--help"), run_nst("--help", "seed=0")
    assert quick.returncode == hydras.returncode == 0
    assert "Config groups" in quick.stdout and "sweep: color, content_by_style," in quick.stdout
    assert quick.stdout == hydras.stdout


def test_only_a_command_that_could_be_long_is_probed(monkeypatch):
    from helpers import settings
    from nst import estimate

    probed = []
    monkeypatch.setattr(estimate, "measure_rate", lambda s: probed.append(s) or 1e11)  # 100 GFLOP/s
    assert estimate.line([settings("size=32", "steps=2", "device=cpu")]) is None and probed == []
    default = settings("device=cpu")  # 512 px, 500 evaluations
    line = estimate.line([default] * 4)
    assert len(probed) == 1
    took = estimate._duration(estimate.seconds([default] * 4, 1e11))
    assert took == "1.7 h"  # 568 TFLOP at 100 GFLOP/s
    assert line.startswith(f"nst: this will take about {took} on this CPU (4 trial(s), 2000 evaluations in all, at 512x")
    assert "; a CPU-sized sweep: size=256 steps=150, about " in line
