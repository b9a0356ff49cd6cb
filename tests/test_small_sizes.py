"""Small images: a pyramid drops the levels that would be too small for the network (as crowsonkb's
starts at a minimum scale), so every ready sweep runs at size=64."""

import json
import subprocess
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra

from conftest import nst_env
from nst import compose
from nst.stage import load_inputs

SWEEPS = sorted(p.stem for p in (compose.CONF_DIR / "sweep").glob("*.yaml"))


def _settings(*overrides: str):
    GlobalHydra.instance().clear()
    return compose.settings_for(list(overrides))


def test_crowsonkb_keeps_its_levels_where_they_fit_and_drops_the_coarsest_where_not():
    big = _settings("recipe=crowsonkb", "size=512")
    assert big.pyramid_levels == 5 and big.level_long_sides() == [128, 181, 256, 362, 512]  # its own scales
    small = _settings("recipe=crowsonkb", "size=64", "steps=10")
    # 16 and 23 px long sides are dropped: tubingen's short side there is under the 16 px that
    # conv5_1 (four poolings) needs, and starry_night's under the style layers' 16 px
    assert small.pyramid_levels == 3 and small.level_long_sides() == [32, 45, 64]
    # the coarsest level kept gets the coarsest level's budget (2 x steps), the next its own
    assert small.pyramid_steps == (20, 10) and small.steps == 10
    assert min(small.level_sizes()[0]) >= 16
    load_inputs(small)  # the size checks pass


def test_a_pyramid_too_deep_for_the_size_runs_the_levels_that_fit():
    s = _settings("pyramid.levels=3", "pyramid.factor=2", "size=64", "pyramid.steps=[5,7]")
    assert s.pyramid_levels == 2 and s.pyramid_steps == (5,)
    assert _settings("pyramid.levels=3", "pyramid.factor=2", "size=128").pyramid_levels == 3  # 32 px: fits


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_ready_sweep_fits_at_size_64(sweep):
    """Every trial of the sweep passes every check made before any work (sizes included) at size=64."""
    trials = compose.expand_trials([f"+sweep={sweep}", "size=64"], multirun=True)
    assert trials
    for trial in trials:
        load_inputs(_settings(*trial))


def test_crowsonkb_runs_at_size_64(tmp_path):
    """The recipe with a pyramid, as the recipes sweep runs it (budget: steps), at size=64."""
    r = subprocess.run([sys.executable, "-m", "nst.run", "-m", "recipe=crowsonkb", "size=64", "steps=3", "budget=3",
                        "logger=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                       cwd=tmp_path, env=nst_env(tmp_path), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    (trial,) = [d for d in (tmp_path / "sweep").iterdir() if (d / "summary.json").is_file()]
    summary = json.loads((trial / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["config"]["pyramid"]["levels"] == 5 and summary["settings"]["pyramid_levels"] == 3
    assert [max(level["size"]) for level in summary["levels"]] == [32, 45, 64]
