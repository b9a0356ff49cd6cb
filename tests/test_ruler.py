"""The ruler stays independent: no recipe and not nst's defaults optimise a layer the fair judges
measure (style_swd's SWD_LAYERS, self_sim_dist's SELF_SIM_LAYERS), and the ruler keeps real layers.

Every recipe file in nst/conf/recipe/ is composed (a new one is checked without being named here),
with nst's plain defaults and every layers/ preset. The check reads every layer name anywhere in the
composed settings, whatever its key (content_layers, style_layers, or a key a future recipe adds),
and the statistic its loss takes there from the sibling `<role>_form` (loss.<role> in the config):

- on a ruler layer, any statistic fails: a distribution distance (W2, sliced Wasserstein, EMD) is
  the ruler's own kind and the worst case, a Gram matrix or a mean constrains the same features, a
  content term matches them outright. The pre-ReLU conv of a ruler layer counts as the same layer
  (the ReLU is all that separates them), and so does the pooling that follows it. On another network
  (model=vgg16) the last layer of a block counts as the ruler's last layer of that block: relu3_3
  and relu4_3 of VGG-16 sit where relu3_4 and relu4_4 of VGG-19 do;
- a distribution distance one convolution below a ruler layer, in its block (relu1_1 under relu1_2),
  fails unless ALLOWED_BELOW_RULER names it with the reason: matching the whole distribution of a
  layer's only input pins most of the ruler's distribution there. A form this test does not know is
  taken for a distribution distance (the worst case) until STATISTICS names it.
"""

import dataclasses
import functools
import re
from pathlib import Path

import pytest

import nst
from helpers import settings
from nst import features, metrics

RULER_ARCH = "vgg19"  # the evaluator's network (nst.metrics._evaluator)
RECIPES = sorted(p.stem for p in (Path(nst.__file__).parent / "conf" / "recipe").glob("*.yaml"))
LAYER_PRESETS = sorted(p.stem for p in (Path(nst.__file__).parent / "conf" / "layers").glob("*.yaml"))

# What each loss form matches at its layers; a form missing here is taken for a distribution distance.
STATISTICS = {
    ("style", "mse"): "Gram",
    ("style", "paper"): "Gram",
    ("style", "w2"): "distribution",  # Gaussian W2: means and covariances, the ruler's kind of distance
    ("content", "mse"): "features",
    ("content", "paper"): "features",
}

# Optimised ruler layers that a port must keep, with why. None today: a port whose original uses a
# ruler layer (STROTSS's and NNST's hypercolumns include relu1_2 and relu2_2) maps it off the ruler
# and says so in its recipe header, or is listed here and scored by a ruler that leaves it out.
ALLOWED_ON_RULER: dict[tuple[str, str], str] = {}

# Distribution distances one convolution below a ruler layer: {(config, layer): why}.
ALLOWED_BELOW_RULER = {
    # crowsonkb/style-transfer-pytorch's own layers and loss: W2 at relu1_1 ... relu5_1 with 75 % of the
    # style weight at relu1_1. relu1_2 = ReLU(conv1_2(relu1_1)) and relu2_2 = ReLU(conv2_2(relu2_1)):
    # the ruler's finest two layers are one convolution from what it matches. Moving its layers would
    # stop it being that peer, so its ruler scores carry this caveat (docs/quality.md, "The ruler
    # guarded").
    ("recipe=crowsonkb", "relu1_1"): "the peer's own W2 layer, one convolution below relu1_2",
    ("recipe=crowsonkb", "relu2_1"): "the peer's own W2 layer, one convolution below relu2_2",
    # STROTSS's hypercolumn (nst/strotss.py, its layer table): the peer's relu1_2 and relu2_2 are the
    # ruler's and are dropped; relu1_1 and relu2_1 are its own layers too, and every other layer of
    # VGG-19's blocks 1 and 2 is the ruler's or one convolution below it, so without them nothing finer
    # than relu3_1 would be left but the RGB. REMD and the moment loss there are distribution distances.
    ("recipe=strotss", "relu1_1"): "the peer's own hypercolumn layer (REMD), block 1 has no other off the ruler",
    ("recipe=strotss", "relu2_1"): "the peer's own hypercolumn layer (REMD), block 2 has no other off the ruler",
    # NNST's hypercolumn (nst/nnst.py, its layer table): relu1_1 and relu2_1 stand for blocks 1 and 2 (the
    # peer's relu1_2 and relu2_2 are the ruler's), relu3_3 and relu4_3 are the peer's blocks' last convs
    # (VGG-19's last, relu3_4 and relu4_4, are the ruler's). The per-scale passes match them to fixed
    # targets (a feature match); the final pass by nearest neighbours, a distribution distance: the
    # recipe keeps the peer's final pass, nnst.final_layers=[relu3_1,relu3_2,relu4_1,relu4_2] keeps it off.
    **{(f"recipe={recipe}", layer):
       f"the peer's hypercolumn layer standing for {where}; its final pass matches it by nearest neighbours"
       for recipe in ("nnst", "nnst_raw")
       for layer, where in (("relu1_1", "block 1"), ("relu2_1", "block 2"), ("relu3_3", "VGG-16's relu3_3"),
                            ("relu4_3", "VGG-16's relu4_3"))},
}


def position(layer: str, arch: str) -> tuple[int, int, bool]:
    """(block, index in the block, whether it is the block's last) of a conv, relu or pool layer;
    pool{b} is what follows the block's last layer."""
    m = re.fullmatch(r"(conv|relu)(\d+)_(\d+)|pool(\d+)", layer)
    assert m, layer
    names = features.layer_names(arch)
    if m.group(4):
        block = int(m.group(4))
        index = max(int(n.split("_")[1]) for n in names if n.startswith(f"conv{block}_"))
    else:
        block, index = int(m.group(2)), int(m.group(3))
    return block, index, f"conv{block}_{index + 1}" not in names


def ruler_positions() -> dict[tuple[int, int], tuple[str, bool]]:
    """{(block, index): (ruler layer, whether it is its block's last)}; fails on an empty ruler or on a
    name that is not a rectified layer of the evaluator's network."""
    ruler = {*metrics.SWD_LAYERS, *metrics.SELF_SIM_LAYERS}
    assert metrics.SWD_LAYERS and metrics.SELF_SIM_LAYERS, "the ruler measures no layer"
    valid = features.layer_names(RULER_ARCH)
    unknown = sorted(n for n in ruler if n not in valid or not n.startswith("relu"))
    assert not unknown, f"ruler layers {unknown} are not rectified {RULER_ARCH} layers"
    out = {}
    for name in sorted(ruler):
        block, index, last = position(name, RULER_ARCH)
        out[(block, index)] = (name, last)
    return out


def optimised_layers(s) -> list[tuple[str, str, str]]:
    """[(key, layer, statistic)] for every layer name anywhere in the composed settings."""
    found = []
    names = set(features.layer_names(s.arch))

    def walk(node, path: str, parent: dict | None):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else k, node)
        elif isinstance(node, list | tuple):
            for v in node:
                walk(v, path, parent)
        elif isinstance(node, str) and node in names:
            key = path.rsplit(".", 1)[-1]
            role = key.removesuffix("_layers") if key.endswith("_layers") else key
            form = (parent or {}).get(f"{role}_form")
            found.append((path, node, STATISTICS.get((role, form), f"{role}: {form} (taken for a distribution distance)")))

    # the trial's record (Settings.to_dict: its keys by name, the loss with its forms, an engine's keys), as
    # summary.json has it; the typed config it is read from repeats the layer lists without their forms
    walk(s.to_dict() if hasattr(s, "to_dict") else dataclasses.asdict(s), "", None)
    return found


def violations(label: str, s) -> list[str]:
    ruler = ruler_positions()
    out = []
    for key, layer, statistic in optimised_layers(s):
        block, index, last = position(layer, s.arch)
        same_net = s.arch == RULER_ARCH
        on = (block, index) in ruler if same_net else \
            any(b == block and ruler_last and last for (b, _), (_, ruler_last) in ruler.items())
        # the layer feeding a ruler layer through one convolution of the same block
        names = features.layer_names(s.arch)
        next_is_last = f"conv{block}_{index + 1}" in names and f"conv{block}_{index + 2}" not in names
        below = (block, index + 1) in ruler if same_net else \
            any(b == block and ruler_last and next_is_last for (b, _), (_, ruler_last) in ruler.items())
        if on and (label, layer) not in ALLOWED_ON_RULER:
            out.append(f"{label}: {key} optimises {layer} ({statistic}), a layer the ruler measures")
        elif below and statistic not in ("Gram", "features") and (label, layer) not in ALLOWED_BELOW_RULER:
            out.append(f"{label}: {key} matches a distribution ({statistic}) at {layer}, one convolution below a ruler layer")
    return out


@functools.cache
def composed(*overrides: str):
    return settings(*overrides)


CONFIGS = [("defaults", ()), *((f"recipe={r}", (f"recipe={r}",)) for r in RECIPES),
           *((f"layers={p}", (f"layers={p}",)) for p in LAYER_PRESETS)]


def test_the_recipes_and_presets_are_all_found():
    # a moved folder would leave nothing to check
    assert {"nst", "pastiche", "crowsonkb"} <= set(RECIPES) and {"paper", "paper_relu"} <= set(LAYER_PRESETS)


@pytest.mark.parametrize(("label", "overrides"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_no_recipe_or_default_optimises_what_the_ruler_measures(label, overrides):
    s = composed(*overrides)
    assert optimised_layers(s), f"{label}: no optimised layer found: the check would see nothing"
    assert not violations(label, s)


def test_every_allowance_is_still_needed():
    used = set()
    for label, overrides in CONFIGS:
        s = composed(*overrides)
        ruler = ruler_positions()
        for _, layer, _ in optimised_layers(s):
            block, index, _ = position(layer, s.arch)
            if (block, index) in ruler or (block, index + 1) in ruler:
                used.add((label, layer))
    stale = (set(ALLOWED_ON_RULER) | set(ALLOWED_BELOW_RULER)) - used
    assert not stale, f"allowances no config needs any more: {sorted(stale)}"


@pytest.mark.parametrize(("overrides", "expected"), [
    (("style_layers=[relu1_1,relu1_2]",), "optimises relu1_2 (Gram)"),
    (("style_layers=[conv3_4]",), "optimises conv3_4 (Gram)"),  # pre-ReLU: the same layer
    (("style_layers=[pool2]",), "optimises pool2 (Gram)"),  # the pooled relu2_2
    (("content_layers=[relu4_4]", "style_layers=[relu1_1]"), "optimises relu4_4 (features)"),
    (("loss.style=w2", "style_layers=[relu3_3]"), "matches a distribution (distribution) at relu3_3"),
    (("recipe=crowsonkb", "style_layers=[relu4_3]", "loss.style_layer_weights=null"), "at relu4_3, one convolution below"),
    (("model=vgg16", "style_layers=[relu3_3]"), "optimises relu3_3 (Gram)"),  # VGG-16's last of block 3
    # STROTSS's hypercolumn mapped to VGG-19 by name, under a distribution distance
    (("recipe=crowsonkb", "style_layers=[relu1_1,relu1_2,relu2_1,relu2_2,relu3_1,relu3_2,relu3_3,relu4_3,relu5_3]",
      "loss.style_layer_weights=null"), "optimises relu2_2 (distribution)"),
])
def test_the_check_catches_a_config_that_touches_the_ruler(overrides, expected):
    found = violations("probe", settings(*overrides))
    assert any(expected in v for v in found), found


def test_a_layer_under_a_key_or_form_the_check_does_not_know_is_the_worst_case():
    # what a new recipe's settings might carry: hypercolumn layers under their own key, a new loss form
    part = dataclasses.make_dataclass("Part", [("hypercolumn_layers", tuple), ("hypercolumn_form", str)])
    probe = dataclasses.make_dataclass("Probe", [("arch", str), ("strotss", part)])
    s = probe("vgg19", part(("relu1_1", "relu3_1"), "remd"))
    worst = "hypercolumn: remd (taken for a distribution distance)"
    assert optimised_layers(s) == [("strotss.hypercolumn_layers", "relu1_1", worst),
                                   ("strotss.hypercolumn_layers", "relu3_1", worst)]
    assert violations("probe", s) == [f"probe: strotss.hypercolumn_layers matches a distribution ({worst}) at relu1_1, "
                                      "one convolution below a ruler layer"]


@pytest.mark.parametrize("name", ["SWD_LAYERS", "SELF_SIM_LAYERS"])
@pytest.mark.parametrize("ruler", [(), ("relu9_9",), ("conv1_2",)])
def test_the_check_fails_when_the_ruler_loses_its_layers(monkeypatch, name, ruler):
    monkeypatch.setattr(metrics, name, ruler)
    with pytest.raises(AssertionError, match="ruler"):
        violations("defaults", composed())
