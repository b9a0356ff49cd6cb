"""Full disks and bad files (docs/reliability.md): a write that fails is one line for its
trial, or, when the command cannot go on, one line for the command; the other trials are still
attempted, the report is written if it can be, and no temporary file is left. Files in the sweep's
`.nst/` of the wrong shape, names the system refuses, a launcher that is no launcher and a trial
folder that cannot be read are one line each. Real commands in subprocesses (CPU, 32 px): a full
disk is a small tmpfs (mounting needs root: skipped elsewhere) or a file size limit (`ulimit -f`)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import nst_env

EIGHT = ["style_weight=1e1,1e2,1e3,1e4,1e5,1e6,1e7,1e8", "size=32", "steps=2", "device=cpu", "logger=none"]
TWO = ["style_weight=1e1,1e2", "size=32", "steps=1", "device=cpu", "logger=none"]


def nst(cwd: Path, *args: str, preexec=None, prefix: tuple = ()) -> subprocess.CompletedProcess:
    env = {**nst_env(cwd), "NST_CPU_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*prefix, sys.executable, "-m", "nst.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, preexec_fn=preexec)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert "--- Logging error ---" not in r.stdout + r.stderr


def leftovers(folder: Path) -> list[str]:
    """Temporary files and staging folders: none may be left."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == ".staging")


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs at tmp_path/disk (removed after the test)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip() or r.returncode}): needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_full_disk_fails_trials_one_line_each_and_the_rest_are_attempted(tmp_path, small_disk):
    # one trial per batch: the disk fills part-way through, at whatever file comes next (Hydra's
    # .hydra/config.yaml included: that used to stop the whole command with a traceback)
    args = ["-m", *EIGHT, "hydra.launcher.max_batch=1", f"hydra.sweep.dir={small_disk / 'sweep'}"]
    r = nst(tmp_path, *args)
    assert_no_traceback(r)
    assert r.returncode == 1, r.stderr
    sweep = small_disk / "sweep"
    # every trial was attempted, and each says in one line how it went
    for n, value in enumerate(["10.0", "100.0", "1000.0", "10000.0", "100000.0", "1000000.0", "10000000.0", "100000000.0"]):
        said = [line for line in lines(r.stdout) if f"style_weight={value}," in line and ("done in" in line or "failed:" in line)]
        assert len(said) == 1, (n, r.stdout)
    failed = [line for line in lines(r.stdout) if "failed:" in line and "style_weight=" in line]
    assert failed and all("No space left on device while writing" in line for line in failed)
    # the report: written, or its failure said in one line
    assert ("sweep report:" in r.stdout) or (f"aggregating {sweep} failed: WriteError: No space left on device" in r.stdout)
    err = lines(r.stderr)
    assert len(err) == 1 and err[0].startswith(f"nst: {len(failed)} trial(s) failed"), r.stderr
    assert leftovers(sweep) == []

    # resuming while the disk is still full: the sweep's records cannot be written; one line
    again = nst(tmp_path, *args)
    assert_no_traceback(again)
    assert again.returncode == 2
    assert lines(again.stderr) == [f"nst: error: No space left on device while writing {sweep / '.nst' / 'trials.json'}"]
    assert leftovers(sweep) == []


def limited(size: int):
    """A file size limit of `size` bytes for the command (`ulimit -f`); SIGXFSZ ignored, so that a write
    past it fails with EFBIG rather than killing the process."""

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return preexec


def test_a_file_size_limit_on_hydras_multirun_yaml_is_one_line_for_the_command(tmp_path):
    r = nst(tmp_path, "-m", *TWO, "hydra.sweep.dir=out", preexec=limited(4096))  # multirun.yaml is ~6 KB
    assert_no_traceback(r)
    assert r.returncode == 1
    assert lines(r.stderr) == [f"nst: error: File too large while writing into {(tmp_path / 'out').resolve()}; "
                               "the command stopped (what it had written is kept)"]
    assert leftovers(tmp_path / "out") == []


def test_a_file_size_limit_on_the_report_is_one_line_and_the_trials_complete(tmp_path):
    r = nst(tmp_path, "-m", *TWO, "hydra.sweep.dir=out", preexec=limited(7000))  # grid.png is larger
    assert_no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert "aggregating out failed: WriteError: File too large while writing out/" in r.stdout
    assert len([line for line in lines(r.stdout) if ": done in " in line]) == 2
    assert leftovers(tmp_path / "out") == []


# ------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize("name, content, expected", [
    ("trials.json", [1, 2], "an object mapping each trial's overrides to its number"),
    ("sweep.json", {"fixed": 3}, "an object with the lists `fixed`, `swept` and `history`"),
])
def test_a_sweep_record_of_the_wrong_shape_is_one_line_naming_it(tmp_path, name, content, expected):
    state = tmp_path / "out" / ".nst"
    state.mkdir(parents=True)
    (state / name).write_text(json.dumps(content))
    r = nst(tmp_path, "-m", *TWO, "hydra.sweep.dir=out")
    assert_no_traceback(r)
    assert r.returncode == 2
    assert lines(r.stderr) == [f"nst: error: hydra.sweep.dir: out/.nst/{name} is not as nst writes it (expected "
                               f"{expected}); move it away, or leave hydra.sweep.dir unset for a new folder"]
    assert json.loads((state / name).read_text()) == content  # left as it was
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".nst"]


@pytest.mark.parametrize("where", ["hydra.sweep.dir", "hydra.run.dir", "content"])
def test_a_name_longer_than_the_system_allows_is_one_line(tmp_path, where):
    long = tmp_path / ("a" * 300)
    args = {"hydra.sweep.dir": ["-m", *TWO, f"hydra.sweep.dir={long}"],
            "hydra.run.dir": ["size=32", "steps=1", "device=cpu", "logger=none", f"hydra.run.dir={long}"],
            "content": ["size=32", "steps=1", "device=cpu", "logger=none", f"content={long}.jpg"]}[where]
    r = nst(tmp_path, *args)
    assert_no_traceback(r)
    assert r.returncode in (1, 2)
    assert len(lines(r.stderr)) == 1 and lines(r.stderr)[0].startswith("nst: error: ") and "File name too long" in r.stderr


def test_a_launcher_target_that_is_no_launcher_is_one_line(tmp_path):
    r = nst(tmp_path, "-m", *TWO, "hydra.launcher._target_=os.system", "hydra.sweep.dir=out")
    assert r.returncode == 2
    assert lines(r.stderr) == ["nst: error: hydra.launcher._target_: 'os.system' is not a Hydra launcher class; choose "
                               "a launcher with hydra/launcher=nst, slurm or basic"]
    assert not (tmp_path / "out").exists()


def without_root_powers() -> tuple:
    """A command prefix under which permissions apply to this user (root reads any folder otherwise)."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("as root, permissions need setpriv (util-linux) to take effect")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def test_resuming_with_a_trial_folder_that_cannot_be_read_fails_that_trial_in_one_line(tmp_path):
    prefix = without_root_powers()
    first = nst(tmp_path, "-m", *TWO, "hydra.sweep.dir=out")
    assert first.returncode == 0, first.stderr
    locked = next((tmp_path / "out").glob("0_*"))
    locked.chmod(0)
    try:
        r = nst(tmp_path, "-m", *TWO, "hydra.sweep.dir=out", prefix=prefix)
    finally:
        locked.chmod(0o755)
    assert_no_traceback(r)
    assert r.returncode == 1
    assert "resumed: 1 trial(s)" in r.stdout  # the readable one
    said = [line for line in lines(r.stdout) if "style_weight=10.0," in line and "failed:" in line]
    assert len(said) == 1 and "Permission denied while writing" in said[0], r.stdout
    unreadable = f"{locked / 'summary.json'} is unreadable (Permission denied)"
    assert lines(r.stderr) == [f"nst: 1 trial(s) failed: {locked.name}: {unreadable}"]
