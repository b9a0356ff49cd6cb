"""Apple's GPU (device=mps) without a Mac: the up-front error where MPS is missing, device=auto's
order, and the L-BFGS path for a device without float64, forced on the CPU."""

import pytest
import torch

from helpers import read_jsonl, run_alone, settings
from nst.device import lbfgs_products_on_host, resolve_device, resolve_precision
from nst.errors import InputError
from nst.optimizers import BatchLBFGS

NO_MPS = "device: 'mps' asked for, but MPS (Apple's GPU) is not available on this machine; use device=cpu or device=auto"
needs_no_mps = pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")


def _one_line_error(code: int, stderr: str, folder) -> str:
    assert code == 2, (code, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert not (folder / "outputs").exists()  # nothing ran, nothing was written
    return lines[0]


@needs_no_mps
@pytest.mark.parametrize("argv", [["device=mps"], ["-m", "device=cpu,mps", "size=32", "steps=2"]])
def test_mps_without_mps_is_one_line_naming_the_key_before_any_work(tmp_path, monkeypatch, capsys, argv):
    from nst.run import main

    monkeypatch.chdir(tmp_path)
    line = _one_line_error(main(argv), capsys.readouterr().err, tmp_path)
    assert line == f"nst: error: {NO_MPS}"
    with pytest.raises(InputError) as e:  # a trial that gets past validation says the same
        resolve_device("mps")
    assert str(e.value) == NO_MPS


@needs_no_mps
def test_mps_without_mps_from_the_command_line(run_nst, tmp_path):
    r = run_nst("device=mps")
    assert _one_line_error(r.returncode, r.stderr, tmp_path) == f"nst: error: {NO_MPS}"


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (True, False, "cuda"),
                                                 (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert resolve_device("auto").type == expected


def test_where_mps_is_available_it_validates_and_runs_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.delenv("NST_LBFGS_HOST_PRODUCTS", raising=False)
    assert settings("device=mps").device == "mps"
    device = resolve_device("mps")
    assert device.type == "mps" and resolve_precision("auto", device) == "fp32"
    assert lbfgs_products_on_host(device) and not lbfgs_products_on_host(torch.device("cpu"))
    for device_setting in ("mps", "auto"):  # auto is mps here
        with pytest.raises(InputError, match="precision: tf32 is a GPU mode .*CUDA only"):
            settings(f"device={device_setting}", "precision=tf32")
    with pytest.raises(InputError, match="precision: tf32 is a GPU mode"):
        resolve_precision("tf32", device)


def test_an_unknown_device_lists_mps():
    with pytest.raises(InputError, match="device: unknown device 'tpu'; allowed: auto, cpu, cuda, cuda:N, mps"):
        settings("device=tpu")


def _rosenbrock(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x0, x1 = x[:, :-1], x[:, 1:]
    f = (100 * (x1 - x0**2) ** 2 + (1 - x0) ** 2).sum(1)
    g = torch.zeros_like(x)
    g[:, :-1] += -400 * x0 * (x1 - x0**2) - 2 * (1 - x0)
    g[:, 1:] += 200 * (x1 - x0**2)
    return f, g


def _drive(x0: torch.Tensor, small_on_host: bool, **hyper) -> dict[int, list[torch.Tensor]]:
    """Every point each trial asks for (void evaluations left out), with its in-place clamp."""
    opt = BatchLBFGS(x0, small_on_host=small_on_host, **hyper)
    if small_on_host:
        assert opt._SY.device.type == opt._YY.device.type == opt._ro.device.type == "cpu"
        assert opt._SY.dtype == torch.float64
    points = {i: [] for i in range(x0.shape[0])}
    while opt.running:
        asked = opt.ask()
        x = torch.stack([p for _, p in asked])
        for i, p in asked:
            points[i].append(p.clone())
        f, g = _rosenbrock(x)
        for i in opt.tell(f.tolist(), g):
            points[i].pop()
        opt.finished()
    return points


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_lbfgs_with_its_products_on_the_host_asks_for_the_same_points(dtype, atol):
    """The path for a device without float64 (its small matrices and solves in float64 on the host),
    forced on the CPU: trials of different history sizes (a full ring included) and line-search modes
    ask for the points of the on-device path, as many of them."""
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.rand(4, 6, generator=gen, dtype=torch.float64) * 2 - 1.2).to(dtype)
    hyper = dict(lr=1.0, max_iter=30, max_eval=60, history_size=[100, 5, 3, 10], line_search=[True, True, False, True])
    device, host = _drive(x0, False, **hyper), _drive(x0, True, **hyper)
    for i in range(4):
        assert len(device[i]) == len(host[i]) > 5
        assert max(float((a - b).abs().max()) for a, b in zip(device[i], host[i], strict=True)) <= atol


def test_a_tiny_transfer_with_the_lbfgs_products_on_the_host_matches_the_device_path(tmp_path, monkeypatch):
    import nst.engine

    made = []

    class Recorded(BatchLBFGS):  # the real optimiser, its small_on_host recorded
        def __init__(self, *args, **kw):
            made.append(kw.get("small_on_host"))
            super().__init__(*args, **kw)

    monkeypatch.setattr(nst.engine, "BatchLBFGS", Recorded)
    runs = {}
    for forced in ("0", "1"):
        monkeypatch.setenv("NST_LBFGS_HOST_PRODUCTS", forced)
        s = settings("device=cpu", "size=32", "steps=12", "init=content_noise", "seed=3")
        summary = run_alone(s, tmp_path / forced, frame_every=12)
        assert summary["status"] == "completed", summary.get("error")
        runs[forced] = summary, read_jsonl(tmp_path / forced / "metrics.jsonl")
    assert made == [False, True]
    (plain, plain_rows), (host, host_rows) = runs["0"], runs["1"]
    def untimed(row):
        return {k: v for k, v in row.items() if k != "wall_time"}

    assert untimed(host_rows[0]) == untimed(plain_rows[0])  # the same start, to the bit
    assert host["evaluations"] == plain["evaluations"]
    for key in ("style_swd", "gmsd", "psnr", "ssim"):
        assert host["metrics"][key] == pytest.approx(plain["metrics"][key], rel=0.02), key
