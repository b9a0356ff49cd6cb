"""Tiny real runs: the real Caffe VGG-19 weights at <= 64 px, on the CPU."""

import json
import math

import pytest
import torch
from PIL import Image

from helpers import psnr, read_jsonl, run_alone, settings
from nst import images
from nst.errors import InputError


def _run(tmp_path, *overrides):
    s = settings("device=cpu", *overrides)
    summary = run_alone(s, tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    return s, summary


def test_content_reconstruction_from_noise_at_conv1_1(tmp_path):
    s, summary = _run(tmp_path, "size=48", "steps=60", "init=noise", "content_layers=[conv1_1]", "style_layers=[]",
                      "style_weight=0")
    content = images.resize(images.load_image("content", "tubingen"), tuple(summary["image_size"]))
    noise = torch.rand((1, 3, content.size[1], content.size[0]), generator=torch.Generator().manual_seed(s.seed))
    start = images.to_pil(noise)
    final = Image.open(tmp_path / "final.png").convert("RGB")
    assert psnr(final, content) > 20.0
    assert psnr(start, content) < 12.0  # it really started from white noise


def test_style_only_run_cuts_the_style_loss_by_90_percent(tmp_path):
    _, summary = _run(tmp_path, "size=48", "steps=40", "init=noise", "content_layers=[]", "content_weight=0")
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    first, last = rows[0]["style"], summary["final"]["style"]
    assert last <= 0.1 * first, (first, last)


def test_a_run_writes_its_files(tmp_path):
    s, summary = _run(tmp_path, "size=40", "steps=12", "optimizer=adam", "tv_weight=1")
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["evaluation"] for r in rows] == list(range(1, 13))  # Adam: one evaluation per step
    assert {"content/conv4_2", "style/conv1_1", "style/conv5_1", "content", "style", "tv", "total", "wall_time"} <= set(rows[0])
    assert rows[-1]["total"] < rows[0]["total"]
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["01.png", "10.png", "12.png"]
    assert Image.open(tmp_path / "final.png").size == tuple(summary["image_size"]) == (40, 30)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("final", "evaluations", "wall_time", "evals_per_second", "device", "peak_memory_mb", "status"):
        assert key in on_disk, key
    assert on_disk["evaluations"] == 12 and on_disk["device"] == "cpu"


def test_lbfgs_counts_evaluations_with_and_without_line_search(tmp_path):
    for ls in ("true", "false"):
        d = tmp_path / ls
        _, summary = _run(d, "size=32", "steps=9", f"optimizer.line_search={ls}")
        assert summary["evaluations"] == 9
        assert [r["evaluation"] for r in read_jsonl(d / "metrics.jsonl")] == list(range(1, 10))


def test_same_seed_same_result(tmp_path):
    finals = []
    for i in range(2):
        _run(tmp_path / str(i), "size=32", "steps=5", "init=content_noise", "seed=3", "deterministic=true")
        finals.append((tmp_path / str(i) / "final.png").read_bytes())
    assert finals[0] == finals[1]


def test_a_non_finite_loss_fails_the_trial_with_a_clear_error(tmp_path):
    # style_weight 1e38 times a style term of order 1 overflows float32 at the first evaluation
    s = settings("device=cpu", "size=32", "steps=5", "init=noise", "style_weight=1e38")
    summary = run_alone(s, tmp_path)
    assert summary["status"] == "failed"
    assert summary["error"].startswith("the loss became inf at evaluation 1; lower the loss weights")
    assert not (tmp_path / "final.png").exists() and not (tmp_path / "error.log").exists()


def test_large_un_normalised_losses_stay_finite_under_lbfgs(tmp_path):
    # the paper's content sum at the default weight overflowed the line search before scaling
    _, summary = _run(tmp_path, "size=48", "steps=8", "loss.content=paper")
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert all(math.isfinite(r["total"]) for r in rows)
    assert summary["final"]["total"] < rows[0]["total"] * 1.01


def test_every_precision_the_cpu_has_runs_and_tf32_is_refused(tmp_path):
    firsts = {}
    for precision in ("fp32", "bf16"):
        s = settings("device=cpu", "size=32", "steps=4", "init=content_noise", f"precision={precision}")
        summary = run_alone(s, tmp_path / precision)
        assert summary["status"] == "completed" and summary["precision"] == precision, summary.get("error")
        rows = read_jsonl(tmp_path / precision / "metrics.jsonl")
        assert all(math.isfinite(r["total"]) for r in rows)
        firsts[precision] = rows[0]
    # bfloat16 convolutions keep about 3 significant digits: the same losses, roughly
    for key in ("content", "style", "total"):
        assert abs(firsts["bf16"][key] - firsts["fp32"][key]) <= 0.05 * firsts["fp32"][key], key
    assert settings("device=cpu").precision == "auto"
    with pytest.raises(InputError, match="precision: tf32 is a GPU mode"):
        settings("device=cpu", "precision=tf32")
