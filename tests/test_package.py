"""The package as a user installs it: a wheel built from the sources, installed (not editable) into
a scratch folder and run from a folder outside the clone, by an interpreter that sees the project's
dependencies but not this checkout."""

import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

from conftest import ROOT, nst_env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("package")
    src = tmp / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name) if src.exists() else (src.mkdir(), shutil.copy(ROOT / name, src / name))
    for name in ("nst", "hydra_plugins"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = list((tmp / "dist").glob("nst-*.whl"))
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    # An interpreter with the dependencies (this one's site-packages, added as a plain path, so the
    # editable install's finder there is not loaded) and the wheel's install, nothing of the clone.
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    (purelib,) = {p for p in (env_dir / "lib").glob("python*/site-packages")}
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {**nst_env(elsewhere), "PYTHONPATH": str(site)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(env_dir / "bin" / "python"), *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True, timeout=300)

    return site, elsewhere, run


def test_the_installed_package_is_the_wheel_with_its_configs_and_commands(installed):
    site, _, run = installed
    r = run("-c", "import nst, hydra_plugins.nst_launcher as l; print(nst.__file__); print(l.__file__)")
    assert r.returncode == 0, r.stderr
    assert all(line.startswith(str(site)) for line in r.stdout.split())
    assert (site / "nst" / "conf" / "config.yaml").exists() and len(list((site / "nst" / "conf" / "sweep").glob("*.yaml"))) > 10
    entry_points = next(site.glob("nst-*.dist-info")) / "entry_points.txt"
    assert "nst = nst.run:main" in entry_points.read_text()


def test_a_tiny_transfer_runs_from_another_folder(installed):
    _, elsewhere, run = installed
    r = run("-m", "nst", "device=cpu", "size=32", "steps=2", "logger=none")
    assert r.returncode == 0, r.stderr[-2000:]
    (final,) = list((elsewhere / "outputs" / "runs").glob("*/final.png"))
    assert final.stat().st_size > 0


def test_a_ready_sweep_and_a_search_compose(installed):
    _, _, run = installed
    r = run("-m", "nst", "+sweep=style_weight", "--cfg", "hydra", "-p", "hydra.sweeper")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "style_weight: 1e3,1e4,1e5,1e6,1e7" in r.stdout, r.stdout
    r = run("-m", "nst", "+search=adam_lr", "--cfg", "hydra", "-p", "hydra.sweeper")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "optuna" in r.stdout.lower() and "optimizer.lr" in r.stdout


def test_help_shows_examples_groups_and_where_outputs_go(installed):
    _, _, run = installed
    r = run("-m", "nst", "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    for text in ("Examples", "nst -m style_weight=1e3,1e4,1e5,1e6", "outputs/runs/", "outputs/sweeps/",
                 "sweep: color,", "search: adam_lr, style_weight_for_psnr", "nst -sc install=bash"):
        assert text in r.stdout, text
