"""Apple's GPU (device=mps) without a Mac: the up-front error where MPS is missing, device=auto's
order, and what MPS validates to where it is."""

import pytest
import torch

from helpers import read_jsonl, run_alone, settings
from nst.errors import InputError
from nst.trial import resolve_device, resolve_precision

NO_MPS = "device: 'mps' asked for, but MPS (Apple's GPU) is not available on this machine; use device=cpu or device=auto"
needs_no_mps = pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")


def _one_line_error(code: int, stderr: str, folder) -> str:
    assert code == 2, (code, stderr)
    lines = [l for l in stderr.splitlines() if l.strip()]
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
    assert settings("device=mps").device == "mps"
    device = resolve_device("mps")
    assert device.type == "mps" and resolve_precision("auto", device) == "fp32"
    for device_setting in ("mps", "auto"):  # auto is mps here
        with pytest.raises(InputError, match="precision: tf32 is a GPU mode .*CUDA only"):
            settings(f"device={device_setting}", "precision=tf32")
    with pytest.raises(InputError, match="precision: tf32 is a GPU mode"):
        resolve_precision("tf32", device)


def test_an_unknown_device_lists_mps():
    with pytest.raises(InputError, match="device: unknown device 'tpu'; allowed: auto, cpu, cuda, cuda:N, mps"):
        settings("device=tpu")
