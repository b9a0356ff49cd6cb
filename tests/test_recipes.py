"""The peers' recipes (nst/conf/recipe): each composes and runs, the user's own overrides beat the
recipe, and `recipe=pastiche` gives pastiche's own loss on the same image."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_in
from nst import compose, engine, images
from nst.api import stylize
from nst.features import _caffe_post, _caffe_pre
from nst.inputs import prepare
from nst.settings import settings_from_dict
from nst.stage import load_inputs

CONF = compose.CONF_DIR
RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml"))
# Recipes run by another engine (nst.methods) refuse the gatys keys they cannot honour (tests/test_engines.py)
ENGINE_RECIPES = {"strotss", "nnst", "nnst_raw"}
IMAGES = Path(compose.__file__).resolve().parent / "data" / "images"


def _settings(overrides):
    return settings_from_dict(OmegaConf.to_container(compose.config(overrides), resolve=True))


def test_the_recipes_are_there_and_nst_is_the_default():
    assert set(RECIPES) >= {"nst", "gatys2016", "gatys_code", "jcjohnson", "pastiche", "crowsonkb"}
    assert _settings([]) == _settings(["recipe=nst"])


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_recipe_leaves_the_size_and_the_budget_to_the_user(recipe):
    text = (CONF / "recipe" / f"{recipe}.yaml").read_text()
    keys = OmegaConf.create(text)
    assert "steps" not in keys and "size" not in keys and "scale" not in keys
    s = _settings([f"recipe={recipe}", "size=40", "steps=7"])
    assert (s.size, s.steps) == (40, 7)


@pytest.mark.parametrize("recipe", sorted(set(RECIPES) - ENGINE_RECIPES))
def test_the_users_overrides_beat_the_recipe(recipe):
    """Plain keys, keys inside a group's node and the groups the recipe chooses: the command line wins."""
    s = _settings([f"recipe={recipe}", "content_weight=3", "style_weight=7", "pooling=avg", "loss.content=paper",
                   "optimizer=adam", "optimizer.lr=0.5", "init=content_noise", "layers=style2", "pyramid.levels=1",
                   # a recipe's per-level budgets and per-layer weights fit its own pyramid and layers
                   "pyramid.steps=null", "loss.style_layer_weights=null"])
    assert (s.content_weight, s.style_weight, s.pooling, s.objective.content_form) == (3, 7, "avg", "paper")
    assert (s.optimizer.name, s.optimizer.lr, s.init) == ("adam", 0.5, "content_noise")
    assert s.objective.style_layers == ("conv1_1", "conv2_1") and s.pyramid_levels == 1
    s = _settings([f"recipe={recipe}", "optimizer=lbfgs", "init=noise", "style_layers=[relu3_1]",
                   "loss.style_layer_weights=null"])
    assert (s.optimizer.name, s.optimizer.line_search, s.init, s.objective.style_layers) == ("lbfgs", True, "noise",
                                                                                           ("relu3_1",))


def test_a_ready_sweep_after_a_recipe_keeps_its_own_choices():
    """`+sweep=` files come after the recipe: texture_synthesis's white noise start and empty content layers win."""
    s = _settings(["recipe=pastiche", "+sweep=texture_synthesis"])
    assert (s.init, s.objective.content_layers, s.content_weight, s.pooling) == ("noise", (), 0, "max")


def _summaries(root: Path) -> dict:
    """recipe -> summary.json of every trial a command wrote under root/outputs."""
    out = {}
    for summary_file in (root / "outputs").glob("**/summary.json"):
        summary = json.loads(summary_file.read_text())
        (recipe,) = [o.split("=", 1)[1] for o in summary["overrides"] if o.startswith("recipe=")]
        out[recipe] = summary
    return out


def _check(recipe: str, summary: dict, *overrides: str) -> None:
    assert summary["status"] == "completed", (recipe, summary.get("error"))
    want = _settings([f"recipe={recipe}", *overrides])
    got = summary["settings"]
    assert (got["pooling"], got["content_weight"], got["style_weight"], got["tv_weight"], got["objective"]["style_form"],
            got["optimizer"]["name"], got["init"]) == (want.pooling, want.content_weight, want.style_weight, want.tv_weight,
                                                       want.objective.style_form, want.optimizer.name, want.init), recipe
    assert summary["evaluations"] == want.total_steps, recipe


def test_every_recipe_runs_end_to_end(tmp_path):
    """One real `-m recipe=...` command over the recipes without a pyramid (they batch and launch
    together), and crowsonkb, whose five levels need about 96 px, with two levels at 48 px: each trial
    completes with its recipe's settings and budget."""
    flat = [r for r in RECIPES if r != "crowsonkb" and r not in ENGINE_RECIPES]  # those: tests/test_engines.py
    common = ("size=40", "steps=4", "logger=none", "device=cpu", "frame_every=2")
    (tmp_path / "flat").mkdir()
    (tmp_path / "crowsonkb").mkdir()
    r = run_in(tmp_path / "flat", "-m", f"recipe={','.join(flat)}", *common, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = _summaries(tmp_path / "flat")
    assert sorted(summaries) == flat
    for recipe, summary in summaries.items():
        _check(recipe, summary, *common)
    pyramid = ("recipe=crowsonkb", "size=48", "steps=3", "pyramid.levels=2", "pyramid.steps=[4]", "logger=none",
               "device=cpu")
    r = run_in(tmp_path / "crowsonkb", *pyramid, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    (summary,) = _summaries(tmp_path / "crowsonkb").values()
    _check("crowsonkb", summary, *pyramid[1:])


def test_the_recipe_sweeps_compose_and_expand():
    trials = compose.expand_trials(["+sweep=recipes", "size=40", "steps=9"], multirun=True)
    assert sorted(t for trial in trials for t in trial if t.startswith("recipe=")) == sorted(
        f"recipe={r}" for r in ("nst", "fast", "more_style", "gatys2016", "gatys_code", "jcjohnson", "pastiche", "crowsonkb",
                                "strotss", "nnst", "nnst_raw"))
    for trial in trials:
        cfg = OmegaConf.to_container(compose.config(trial), resolve=True)
        assert cfg["budget"] == 9  # every recipe at the cost of `steps` full-size evaluations
        settings_from_dict(cfg)

    trials = compose.expand_trials(["+sweep=style_sizing", "size=40"], multirun=True)
    sizes = set()
    for trial in trials:
        s = _settings(trial)
        photo = images.oriented_size("content", s.content)
        painting = images.oriented_size("style", s.style[0])
        assert (photo[0] > photo[1]) != (painting[0] > painting[1])  # one landscape, one portrait
        sizes.add(tuple(prepare(s, load_inputs(s), torch.device("cpu"))["styles"][0].shape))
    assert len(sizes) == 3  # three different style image sizes

    trials = compose.expand_trials(["+sweep=rectified", "size=40"], multirun=True)
    layers = {_settings(t).objective.style_layers[0] for t in trials}
    assert layers == {"conv1_1", "relu1_1"}


# ------------------------------------------------------------------------- pastiche's own loss


def _pastiche_total(tv_weight: float, tmp_path: Path, monkeypatch) -> tuple[float, float, float]:
    """(pastiche's _calc_loss, the same without its TV term, nst's total at its first evaluation) on the same image: pastiche's
    result after two draws, from its own PasticheArtist on a landscape photo and a portrait painting
    at 48 px, with the images pastiche loaded; nst composed from `recipe=pastiche`."""
    from pastiche.pastiche import PasticheArtist, load_image

    content, style = IMAGES / "tubingen.jpg", IMAGES / "the_scream.jpg"
    torch.manual_seed(0)
    artist = PasticheArtist(str(content), [str(style)], device="cpu", size=48)
    artist.draw()
    artist.draw()
    artist.tv_weight = tv_weight  # its loss at the image two of its steps reached
    # The same image on both sides, inside [0, 1] (nst evaluates L-BFGS's points clamped).
    image = _caffe_post(artist.pastiche.detach()).clamp(0, 1)
    artist.pastiche.data = _caffe_pre(image)
    assert not torch.allclose(image, _caffe_post(load_image(str(content), size=48)), atol=1e-3)
    expected = float(artist._calc_loss().detach())
    artist.tv_weight, without_tv = 0.0, expected
    if tv_weight:
        without_tv = float(artist._calc_loss().detach())
    (content_size,) = {tuple(artist.content_size)}
    theirs = {"content": _caffe_post(load_image(str(content), size=48)),
              "styles": [_caffe_post(load_image(str(style), pixels=content_size[0] * content_size[1]))]}

    real_prepare = engine.prepare

    def with_pastiches_pixels(s, inputs, device, long_side=None):
        out = real_prepare(s, inputs, device, long_side)
        # nst's own sizing (size, style_size: keep_aspect) gives pastiche's sizes; only the resampling differs
        assert out["content"].shape == theirs["content"].shape
        assert [t.shape for t in out["styles"]] == [t.shape for t in theirs["styles"]]
        out.update(photo=theirs["content"], content=theirs["content"], styles=theirs["styles"],
                   plain_styles=theirs["styles"], init=image.clone())
        return out

    monkeypatch.setattr(engine, "prepare", with_pastiches_pixels)
    totals = []

    def first(step):
        if step.evaluation == 1:
            totals.append(step.values["total"])

    stylize(str(content), str(style), recipe="pastiche", size=48, steps=1, device="cpu", callback=first,
            tv_weight=127.5 * tv_weight)
    (total,) = totals
    return expected, without_tv, total


def test_recipe_pastiche_gives_pastiches_own_loss(tmp_path, monkeypatch):
    expected, _, total = _pastiche_total(0.0, tmp_path, monkeypatch)
    assert total == pytest.approx(expected, rel=1e-4)



def test_recipe_pastiche_gives_pastiches_own_loss_with_its_tv_term(tmp_path, monkeypatch):
    """pastiche's TV term, 0.5 x its tv_weight x (mean|dx| + mean|dy|) on [0, 255] pixels, is nst's
    l1 form (recipe=pastiche sets it) with tv_weight = 127.5 x pastiche's."""
    expected, without_tv, total = _pastiche_total(1e7, tmp_path, monkeypatch)
    assert expected > without_tv * 1.01  # the TV term counts
    assert total == pytest.approx(expected, rel=1e-4)
