"""The CUDA path (skipped where there is no GPU): same objective values as the CPU, GPU summary fields."""

import pytest
import torch

from helpers import read_jsonl, run_alone, settings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cuda_run_matches_cpu_objective(tmp_path):
    firsts = {}
    for device in ("cpu", "cuda"):
        s = settings(f"device={device}", "size=64", "steps=5", "init=content_noise", "seed=1")
        d = tmp_path / device
        summary = run_alone(s, d, frame_every=5)
        assert summary["status"] == "completed", summary.get("error")
        firsts[device] = read_jsonl(d / "metrics.jsonl")[0]
        if device == "cuda":
            assert summary["device"].startswith("cuda") and summary["peak_memory_kind"] == "cuda_max_allocated"
            assert summary["peak_memory_mb"] > 0
    # the first evaluation sees the same seeded start on both devices (TF32 convolutions: loose tolerance)
    for key in ("content", "style", "total"):
        assert firsts["cuda"][key] == pytest.approx(firsts["cpu"][key], rel=2e-2), key


def test_bf16_on_the_gpu_stays_close_to_fp32(tmp_path):
    metrics = {}
    for precision in ("fp32", "bf16"):
        s = settings("device=cuda", "size=128", "steps=50", f"precision={precision}")
        summary = run_alone(s, tmp_path / precision)
        assert summary["status"] == "completed" and summary["precision"] == precision, summary.get("error")
        metrics[precision] = summary["metrics"]
    for key in ("content_distance", "style_distance", "psnr", "ssim"):
        assert metrics["bf16"][key] == pytest.approx(metrics["fp32"][key], rel=0.05), key
