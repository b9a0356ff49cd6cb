"""The picture controls: coarse-to-fine pyramid, colour control, several styles, style scale, crop,
Gaussian noise; each a per-trial setting that also works inside a batch. Real VGG-19 at <= 48 px."""

import pytest
import torch
from PIL import Image

from conftest import metrics_apart
from helpers import read_jsonl, run_alone, settings, trial
from nst import engine, images
from nst.errors import InputError
from nst.features import FeatureExtractor, get_weights_spec
from nst.inputs import prepare
from nst.loss import Loss
from nst.stage import load_inputs

CPU = torch.device("cpu")


def _chroma_error(path, content) -> float:
    """Mean absolute difference of Cb and Cr (in [0,1]) between a saved image and the content image."""
    out = images.to_tensor(Image.open(path).convert("RGB"), CPU)
    ref = images.to_tensor(images.resize(content, out.shape[-1:-3:-1]), CPU)
    return float((images.rgb_to_ycbcr(out)[:, 1:] - images.rgb_to_ycbcr(ref)[:, 1:]).abs().mean())


def test_luminance_transfer_keeps_the_content_colours_and_plain_transfer_does_not(tmp_path):
    content = images.load_image("content", "tubingen")
    errors = {}
    for color in ("none", "luminance"):
        s = settings("device=cpu", "size=48", "steps=15", "style_weight=1e6", f"color={color}")
        summary = run_alone(s, tmp_path / color)
        assert summary["status"] == "completed", summary.get("error")
        errors[color] = _chroma_error(tmp_path / color / "final.png", content)
    # 8-bit rounding and clipping to the RGB cube leave a little; the styled image moves far more
    assert errors["luminance"] < 0.01, errors
    assert errors["none"] > 3 * errors["luminance"] and errors["none"] > 0.02, errors


def test_histogram_matching_gives_the_style_the_content_colour_statistics():
    s = settings("device=cpu", "size=48", "color=histogram")
    t = prepare(s, load_inputs(s), CPU)
    style, photo, plain = t["styles"][0], t["photo"], t["plain_styles"][0]
    mean = lambda x: x[0].flatten(1).mean(1)  # noqa: E731 -- a one-line helper, named where it is used
    assert torch.allclose(mean(style), mean(photo), atol=0.02)
    assert not torch.allclose(mean(plain), mean(photo), atol=0.05)  # the painting's own colours differ
    assert torch.allclose(torch.cov(style[0].flatten(1)), torch.cov(photo[0].flatten(1)), atol=0.01)


def test_a_colour_matched_start_has_the_paintings_colours_and_the_photographs_shapes():
    s = settings("device=cpu", "size=48", "init=content_matched")
    t = prepare(s, load_inputs(s), CPU)
    start, photo, plain = t["init"], t["photo"], t["plain_styles"][0]
    mean = lambda x: x[0].flatten(1).mean(1)  # noqa: E731 -- a one-line helper, named where it is used
    assert torch.allclose(mean(start), mean(plain), atol=0.02)  # the painting's palette...
    assert not torch.allclose(mean(start), mean(photo), atol=0.05)
    assert torch.allclose(torch.cov(start[0].flatten(1)), torch.cov(plain[0].flatten(1)), atol=0.01)
    # ...on the photograph's shapes: an affine map of its colours, so its luminance stays its pattern
    y_start, y_photo = (images.rgb_to_ycbcr(x)[0, 0].flatten() for x in (start, photo))
    assert torch.corrcoef(torch.stack([y_start, y_photo]))[0, 1] > 0.9
    assert torch.equal(t["content"], photo)  # the content loss still compares with the photograph
    for color in ("luminance", "histogram"):  # they keep the painting's colours out: refused, naming the key
        with pytest.raises(InputError, match=f"^init: init=content_matched .* color={color}"):
            settings("device=cpu", "size=48", "init=content_matched", f"color={color}")


def test_luminance_mode_feeds_the_network_grey_images():
    s = settings("device=cpu", "size=48", "color=luminance")
    t = prepare(s, load_inputs(s), CPU)
    for x in (t["content"], t["styles"][0], t["init"]):
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    y_style, y_photo = images.rgb_to_ycbcr(t["styles"][0])[:, 0], images.rgb_to_ycbcr(t["photo"])[:, 0]
    assert abs(float(y_style.mean() - y_photo.mean())) < 0.02  # luminance matched to the photograph's


def test_pyramid_runs_every_level_and_ends_at_full_size(tmp_path):
    s = settings("device=cpu", "size=48", "steps=6", "pyramid.levels=2", "pyramid.steps=[4]", "frame_every=3")
    summary = run_alone(s, tmp_path, frame_every=3)
    assert summary["status"] == "completed", summary.get("error")
    assert [lv["size"] for lv in summary["levels"]] == [[24, 18], [48, 36]]
    assert [lv["evaluations"] for lv in summary["levels"]] == [4, 6] and summary["evaluations"] == 10
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["evaluation"] for r in rows] == list(range(1, 11))
    assert [r["level"] for r in rows] == [0] * 4 + [1] * 6
    assert Image.open(tmp_path / "final.png").size == (48, 36) == tuple(summary["image_size"])
    frames = sorted((tmp_path / "frames").iterdir(), key=lambda p: int(p.stem))
    assert [int(p.stem) for p in frames] == [1, 3, 6, 9, 10]
    assert Image.open(frames[0]).size == (24, 18) and Image.open(frames[-1]).size == (48, 36)
    # the fine level starts from the coarse result, not from the photograph: its first loss is not
    # the photograph's (content loss 0 at the content image)
    assert rows[4]["content"] > 0


def test_a_two_style_blend_at_one_zero_has_the_single_styles_targets():
    extractor = FeatureExtractor("vgg19", get_weights_spec("vgg19", "caffe"), ["conv1_1", "conv3_1", "conv4_2"], "avg", CPU)
    one = torch.ones(1)
    targets = []
    for overrides in (["style=starry_night"], ["style=[starry_night,the_scream]", "style_blend=[1,0]"]):
        s = settings("device=cpu", "size=32", "style_layers=[conv1_1,conv3_1]", *overrides)
        t = prepare(s, load_inputs(s), CPU)
        obj = Loss(extractor, s.objective, content=t["content"], style=t["styles"], style_blend=s.style_blend,
                        content_weight=one, style_weight=one, tv_weight=0 * one)
        targets.append(obj.style_targets)
    assert targets[0].keys() == targets[1].keys()
    for layer in targets[0]:
        assert torch.equal(targets[0][layer], targets[1][layer]), layer
    # and an even blend is the mean of the two styles' Gram matrices
    s = settings("device=cpu", "size=32", "style_layers=[conv1_1]", "style=[starry_night,the_scream]")
    assert s.style_blend == (0.5, 0.5)


def test_style_scale_crop_and_gaussian_noise():
    s = settings("device=cpu", "size=48", "style_scale=0.5", "crop=square", "init=noise", "init.noise=gaussian")
    t = prepare(s, load_inputs(s), CPU)
    assert t["photo"].shape[-2:] == (48, 48)  # a centre square
    assert t["styles"][0].shape[-2:] == (24, 24) and t["plain_styles"][0].shape[-2:] == (48, 48)
    noise = t["init"]
    assert abs(float(noise.mean()) - 0.5) < 0.02 and abs(float(noise.std()) - 0.25) < 0.02
    uniform = prepare(settings("device=cpu", "size=48", "init=noise"), load_inputs(s), CPU)["init"]
    assert float(uniform.min()) >= 0 and abs(float(uniform.std()) - (1 / 12) ** 0.5) < 0.02


def test_the_controls_are_per_trial_settings_inside_one_batch(tmp_path):
    base = ("device=cpu", "size=32", "steps=4")
    trials = [(), ("color=luminance",), ("color=histogram",), ("style=[starry_night,the_scream]", "style_blend=[3,1]"),
              ("style_scale=0.75", "style_layers=[conv1_1,conv2_1,conv3_1]"), ("init=noise", "init.noise=gaussian")]
    ss = [settings(*base, *o) for o in trials]
    together = engine.run_trials([trial(s, tmp_path / "b" / str(i)) for i, s in enumerate(ss)])
    assert [t["batch"]["size"] for t in together] == [len(ss)] * len(ss)
    for i, (t, s) in enumerate(zip(together, ss, strict=True)):
        alone = run_alone(s, tmp_path / "a" / str(i))
        assert t["status"] == alone["status"] == "completed", (i, t.get("error"))
        assert not metrics_apart(alone["metrics"], t["metrics"]), (i, metrics_apart(alone["metrics"], t["metrics"]))
    # the pyramid and the crop change image sizes: their trials go to batches of their own
    base = ("device=cpu", "size=48", "steps=3")
    ss = [settings(*base), settings(*base, "pyramid.levels=2", "pyramid.steps=[2]"), settings(*base, "crop=square")]
    out = engine.run_trials([trial(s, tmp_path / "c" / str(i)) for i, s in enumerate(ss)])
    assert len({o["batch"]["id"] for o in out}) == 3 and all(o["status"] == "completed" for o in out)
    assert out[2]["image_size"] == [48, 48]


def test_style_sizes():
    # content tubingen 512 x 384 at size 48: 48 x 36; style the_scream, portrait 402 x 512
    assert images.load_image("style", "the_scream").size == (402, 512)
    sizes = {}
    for how in ("match", "keep_aspect", "long_side"):
        for scale in (1, 0.5):
            s = settings("device=cpu", "size=48", "style=the_scream", f"style_size={how}", f"style_scale={scale}")
            sizes[how, scale] = tuple(prepare(s, load_inputs(s), CPU)["styles"][0].shape[-1:-3:-1])  # (W, H)
    assert sizes["match", 1] == (48, 36)
    # 48 * 36 = 1728 px at 402:512: h = round(sqrt(1728 * 512 / 402)) = 47, w = round(47 * 402 / 512) = 37
    assert sizes["keep_aspect", 1] == (37, 47)
    # the long side is the content's 48: w = round(402 * 48 / 512) = round(37.69) = 38
    assert sizes["long_side", 1] == (38, 48)
    assert sizes["long_side", 0.5] == (19, 24) and sizes["match", 0.5] == (24, 18)
    # a landscape style on a portrait content: the style's long side (its width) is the content's (its height)
    s = settings("device=cpu", "size=48", "content=the_scream", "style=starry_night", "style_size=long_side")
    t = prepare(s, load_inputs(s), CPU)
    assert tuple(t["photo"].shape[-2:]) == (48, 38) and tuple(t["styles"][0].shape[-2:]) == (30, 48)  # 320 * 48 / 512 = 30


def test_a_budget_scales_every_level_to_cost_that_many_full_size_evaluations():
    from nst.features import evaluation_flops

    base = ("device=cpu", "size=512", "steps=200", "pyramid.levels=3", "pyramid.steps=[400,300]")
    plain = settings(*base)
    assert (plain.pyramid_steps, plain.steps, plain.budget) == ((400, 300), 200, None)  # null: as given
    s = settings(*base, "budget=150")
    # tubingen 512 x 384: levels 128 x 96, 256 x 192, 512 x 384; the deepest layer is conv5_1
    cost = [evaluation_flops("vgg19", "conv5_1", w, h) for w, h in ((128, 96), (256, 192), (512, 384))]
    relative = [c / cost[-1] for c in cost]
    steps = (*s.pyramid_steps, s.steps)
    spent = sum(n * r for n, r in zip(steps, relative, strict=True))
    assert abs(spent - 150) <= 0.5 * sum(relative)  # each level rounded to whole evaluations
    # one factor for all: the given proportions 400 : 300 : 200, up to the rounding
    factor = 150 / sum(n * r for n, r in zip((400, 300, 200), relative, strict=True))
    assert all(abs(n - g * factor) <= 0.5 for n, g in zip(steps, (400, 300, 200), strict=True))
    assert s.to_dict()["steps"] == s.steps and s.to_dict()["budget"] == 150  # what summary.json records
    assert s.total_steps == sum(steps)
    # without a pyramid the budget is the steps; a level never gets fewer than 1 evaluation
    assert settings("device=cpu", "size=512", "budget=75.4").steps == 75
    assert settings(*base, "budget=0.01").level_steps == (1, 1, 1)
