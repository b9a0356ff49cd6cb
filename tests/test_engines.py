"""engine=strotss and engine=nnst (nst.methods) as recipes: real commands that run them through nst's
runner and leave what a gatys trial leaves, batches that share one pass, the budget mapping, and the
one-line refusals of what these methods cannot honour."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_in
from helpers import psnr, read_jsonl, settings
from nst import engine
from nst.errors import InputError

TINY = ("size=48", "logger=none", "device=cpu", "frame_every=2")
FEW = "strotss.samples=128"  # STROTSS's losses, not its network, dominate a tiny step: fewer positions keep it quick


def _runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / "outputs").glob("**/summary.json"))


def _completed(run_dir: Path, recipe: str) -> dict:
    """The trial's summary, after checking it left what a gatys trial leaves."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary.get("error")
    assert summary["settings"]["engine"] == recipe.removesuffix("_raw")
    want = settings(*summary["overrides"])
    rows = read_jsonl(run_dir / "metrics.jsonl")
    # every step of every scale is a record; the budget mapping's count is what the sinks counted to
    assert summary["evaluations"] == want.total_steps == len(rows) == rows[-1]["evaluation"]
    assert all(np.isfinite(r["total"]) for r in rows)
    assert summary["final"]["total"] == rows[-1]["total"]
    final = Image.open(run_dir / "final.png")
    assert final.size == tuple(summary["image_size"]) and max(final.size) == 48
    assert (run_dir / "frames" / "1.png").exists() and (run_dir / "frames" / "2.png").exists()
    m = summary["metrics"]
    assert all(np.isfinite(m[k]) for k in ("style_swd", "self_sim_dist", "gmsd", "psnr", "ssim"))
    return summary


def test_recipe_strotss_runs_end_to_end_and_batches_its_trials(tmp_path):
    """One command alone, then a two-trial sweep of the content weight: the sweep's trials share one
    batch (one network, one pass per step), each keeps its own weight, and the trial that runs alone
    gives the picture it gives in the batch."""
    alone, sweep = tmp_path / "alone", tmp_path / "sweep"
    alone.mkdir(), sweep.mkdir()
    r = run_in(alone, "recipe=strotss", "steps=3", "content_weight=4", FEW, *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = _runs(alone)
    summary = _completed(run, "strotss")
    assert set(summary["final"]) == {"content", "remd", "moment", "palette", "total"}
    assert "remd" in r.stdout + r.stderr  # the command's line names the method's own terms

    r = run_in(sweep, "-m", "recipe=strotss", "steps=3", "content_weight=0.25,4", FEW, *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {json.loads((p / "summary.json").read_text())["settings"]["content_weight"]: p for p in _runs(sweep)}
    assert sorted(runs) == [0.25, 4.0]
    summaries = {w: _completed(p, "strotss") for w, p in runs.items()}
    assert len({s["batch"]["id"] for s in summaries.values()}) == 1
    assert all(s["batch"]["size"] == 2 for s in summaries.values())
    assert psnr(Image.open(runs[4.0] / "final.png"), Image.open(run / "final.png")) > 40  # as alone, up to float noise
    assert psnr(Image.open(runs[4.0] / "final.png"), Image.open(runs[0.25] / "final.png")) < 40  # its own weight


def test_recipe_nnst_runs_end_to_end_with_and_without_its_colour(tmp_path):
    r = run_in(tmp_path, "-m", "recipe=nnst,nnst_raw", "steps=3", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    by_recipe = {}
    for run in _runs(tmp_path):
        (recipe,) = [o.split("=", 1)[1] for o in json.loads((run / "summary.json").read_text())["overrides"]
                     if o.startswith("recipe=")]
        by_recipe[recipe] = (_completed(run, recipe), run)
    assert sorted(by_recipe) == ["nnst", "nnst_raw"]
    (coloured, a), (raw, b) = by_recipe["nnst"], by_recipe["nnst_raw"]
    assert (coloured["settings"]["color"], raw["settings"]["color"]) == ("nnst", "none")
    # the same optimisation (same seed, same losses), the post-process on the saved picture only
    assert coloured["final"] == raw["final"]
    assert psnr(Image.open(a / "final.png"), Image.open(b / "final.png")) < 40


def test_a_refused_combination_stops_the_command_in_one_line_before_any_work(tmp_path):
    r = run_in(tmp_path, "recipe=strotss", "optimizer=lbfgs", *TINY)
    assert r.returncode != 0
    (line,) = [x for x in r.stderr.splitlines() if "error" in x]
    assert "optimizer:" in line and "L-BFGS" in line and "optimizer=adam" in line
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(("overrides", "key"), [
    (("recipe=strotss", "optimizer=lbfgs"), "optimizer"),
    (("recipe=nnst", "optimizer=lbfgs"), "optimizer"),
    (("recipe=nnst", "content_weight=3"), "content_weight"),  # NNST's alpha is a share of the content
    (("recipe=strotss", "init=noise"), "init"),
    (("recipe=strotss", "pyramid.levels=2"), "pyramid.levels"),
    (("recipe=strotss", "tv_weight=1"), "tv_weight"),
    (("recipe=strotss", "color=luminance"), "color"),
    (("recipe=strotss", "color=nnst"), "color"),  # NNST's post-process, not STROTSS's
    (("color=nnst",), "color"),
    (("recipe=strotss", "style=[starry_night,the_scream]"), "style"),
    (("recipe=strotss", "model=vgg16"), "model"),
    (("recipe=strotss", "strotss.layers=[relu1_1,conv2_1]"), "strotss.layers"),
    (("recipe=nnst", "nnst.final_layers=[pool2]"), "nnst.final_layers"),
    (("recipe=nnst", "nnst.betas=[0.9]"), "nnst.betas"),
    (("recipe=strotss", "size=16"), "size"),  # relu5_4 needs 16 px on the short side at the coarsest scale
    (("recipe=nnst", "size=8"), "size"),
])
def test_what_the_methods_cannot_honour_is_refused_naming_the_key(overrides, key):
    with pytest.raises(InputError) as e:
        settings(*overrides)
    assert str(e.value).startswith(f"{key}:")


def test_steps_are_full_size_evaluations_spread_over_the_scales():
    # STROTSS at 512 px: scales 64, 128, 256, 512 px, n x (1/64 + 1/16 + 1/4 + 1) = 332 -> n = 250, the peer's
    s = settings("recipe=strotss", "size=512", "steps=332")
    assert s.method.schedule(s.long_side, s.steps).iterations == (250,) * 4 and s.total_steps == 1000
    # NNST at 512 px: four scales and the final pass, n x (1/64 + 1/16 + 1/4 + 1 + 1) = 466 -> n = 200, the peer's
    s = settings("recipe=nnst", "size=512", "steps=466")
    p = s.method.params(s.image_size, s.steps, s.content_weight)
    assert (p.scales, p.steps, p.final_steps, s.total_steps) == (4, 200, 200, 1000)
    # one scale at 48 px: STROTSS runs `steps`; NNST splits them between its scale and its final pass
    assert settings("recipe=strotss", "size=48", "steps=6").total_steps == 6
    assert settings("recipe=nnst", "size=48", "steps=6").total_steps == 6


def test_only_trials_one_pass_can_serve_share_a_batch():
    key = engine.group_key
    base = settings("recipe=strotss", "size=48", "steps=3")
    assert key(base) == key(settings("recipe=strotss", "size=48", "steps=3", "content_weight=5", "seed=3",
                                     "style=the_scream"))
    for other in (("steps=4",), ("strotss.samples=64",), ("strotss.lr=0.01",)):
        assert key(base) != key(settings("recipe=strotss", "size=48", "steps=3", *other)), other
    assert key(base) != key(settings("optimizer=adam", "size=48", "steps=3"))
    nnst = settings("recipe=nnst", "size=48", "steps=3")
    assert key(nnst) != key(settings("recipe=nnst_raw", "size=48", "steps=3"))  # the post-process is the batch's
    assert key(nnst) != key(base)
