"""The CUDA path (skipped where there is no GPU): same objective values as the CPU, GPU summary fields, bf16 near
fp32, the vectorised L-BFGS on the device."""

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
    for key in ("style_swd", "gmsd", "psnr", "ssim"):
        assert metrics["bf16"][key] == pytest.approx(metrics["fp32"][key], rel=0.05), key


def test_the_vectorised_lbfgs_on_the_gpu_asks_for_the_cpu_points():
    """The optimiser's device path (float64, so rounding stays below the tolerance): Rosenbrock trials of
    different history sizes and line-search modes ask for the same points on cuda as on the CPU."""
    from nst.optimizers import BatchLBFGS

    gen = torch.Generator().manual_seed(0)
    x0 = (torch.rand(4, 6, generator=gen, dtype=torch.float64) * 2 - 1.2)
    hyper = dict(lr=1.0, max_iter=30, max_eval=60, history_size=[100, 5, 3, 10], line_search=[True, True, False, True])

    def drive(device):
        opt = BatchLBFGS(x0.to(device), **hyper)
        points = {i: [] for i in range(4)}
        while opt.running:
            asked = opt.ask()
            x = torch.stack([p for _, p in asked])
            for i, p in asked:
                points[i].append(p.cpu().clone())
            x0_, x1 = x[:, :-1], x[:, 1:]
            f = (100 * (x1 - x0_**2) ** 2 + (1 - x0_) ** 2).sum(1)
            g = torch.zeros_like(x)
            g[:, :-1] += -400 * x0_ * (x1 - x0_**2) - 2 * (1 - x0_)
            g[:, 1:] += 200 * (x1 - x0_**2)
            for i in opt.tell(f.tolist(), g):
                points[i].pop()
            opt.finished()
        return points

    cpu, cuda = drive("cpu"), drive("cuda")
    for i in range(4):
        assert len(cpu[i]) == len(cuda[i]) > 5
        assert max(float((a - b).abs().max()) for a, b in zip(cpu[i], cuda[i], strict=True)) < 1e-6
