"""The standardised metrics on the bundled paintings and photograph (real Caffe VGG-19 weights, <= 64 px)."""

import torch

from helpers import settings
from nst import images, metrics
from nst.inputs import prepare
from nst.stage import load_inputs

CPU = torch.device("cpu")


def picture(name: str, size: tuple[int, int] | None = None, long_side: int = 64) -> torch.Tensor:
    img = images.load_image("style", name)
    return images.to_tensor(images.resize(img, size or images.target_size(*img.size, long_side)), CPU)


def shuffled_tiles(x: torch.Tensor) -> torch.Tensor:
    """The image cut into 2x2 tiles, the left and right columns of tiles swapped. (At 64 px relu4_4's
    receptive field spans a tile, so smaller tiles or more seams move even the painting's own
    distribution there: the metric sees 1-D marginals of features, not pixels.)"""
    w = x.shape[-1] // 2
    return torch.cat([x[..., w:], x[..., :w]], -1)


def test_an_image_against_itself_scores_zero_distance_and_full_similarity():
    star = picture("starry_night")
    m = metrics.standard_metrics(star, star, [star])
    assert m["style_swd"] == 0 and m["style_swd_1x"] == 0 and m["gram_distance"] == 0 and m["content_distance"] == 0
    assert m["gmsd"] == 0 and m["self_sim_dist"] == 0 and abs(m["ssim"] - 1) < 1e-6 and m["psnr"] == float("inf")


def test_the_self_similarity_distance_sees_the_layout_not_the_colours():
    photo = picture("tubingen")  # 64x48
    painting = picture("starry_night", tuple(photo.shape[-1:-3:-1]))
    recoloured = {"channels swapped": photo.flip(1), "darker": 0.6 * photo}
    rearranged = {"halves swapped": shuffled_tiles(photo), "mirrored": photo.flip(-1), "the painting": painting}
    d = {k: metrics.standard_metrics(x, photo, None)["self_sim_dist"] for k, x in {**recoloured, **rearranged}.items()}
    # a photograph in other colours is still the photograph; the same parts elsewhere are not
    assert max(d[k] for k in recoloured) < 0.5 * min(d[k] for k in rearranged), d


def test_the_self_similarity_distance_pools_large_maps_to_a_fixed_grid():
    gen = torch.Generator().manual_seed(0)
    # 4x the grid along the long side, as relu3_4 is at 512 px: pooled 4x4 to 32x24 positions
    f = {layer: torch.rand(1, 8, 96, 128, generator=gen) for layer in metrics.SELF_SIM_LAYERS}
    assert metrics._self_similarity(f[metrics.SELF_SIM_LAYERS[0]]).shape == (32 * 24, 32 * 24)
    # cosine likeness: the scale of the features does not count, their arrangement does
    assert metrics.self_sim_dist({k: 3 * v for k, v in f.items()}, f) < 1e-6
    assert metrics.self_sim_dist({k: v.roll(16, -1) for k, v in f.items()}, f) > 0.01


def test_shuffled_tiles_keep_the_style_but_lose_the_structure():
    star = picture("starry_night")  # 64x40
    shuffled = shuffled_tiles(star)
    mine = metrics.standard_metrics(shuffled, star, [star])
    others = {name: metrics.style_swd(picture(name), [star], [1.0])["style_swd"]
              for name in ("the_scream", "woman-with-hat-matisse", "shipwreck", "tubingen")}
    # the same strokes and colours in another arrangement: far closer than any other picture
    assert 0 < mine["style_swd"] < 0.5 * min(others.values()), (mine, others)
    # while the pixel-aligned measures see a different image
    assert mine["ssim"] < 0.3 and mine["gmsd"] > 0.1, mine


def test_a_stretched_painting_is_farther_than_the_painting_at_its_own_aspect():
    star_img = images.load_image("style", "starry_night")  # 512x320
    reference = picture("starry_night")  # 64x40, its own aspect
    own = picture("starry_night", long_side=60)  # another size, same aspect: 60x38
    pixels = own.shape[-1] * own.shape[-2]
    stretched = picture("starry_night", images.size_at_pixel_count(star_img.height, star_img.width, pixels))  # 38x60
    squashed = picture("starry_night", images.size_at_pixel_count(1, 1, pixels))  # square
    d = {k: metrics.style_swd(x, [reference], [1.0])["style_swd"] for k, x in
         (("own", own), ("stretched", stretched), ("squashed", squashed))}
    # (a square is a milder stretch than the portrait; at 64 px a 6 % change of size, resampled
    # afresh, already moves the finest layers, so the margin there is small)
    assert d["own"] < 0.5 * d["stretched"] and d["own"] < d["squashed"], d


def test_the_metrics_painting_keeps_its_aspect_whatever_the_style_sizing():
    for sizing in (["style_size=match"], ["style_size=match", "style_scale=0.5"], []):
        s = settings("device=cpu", "size=64", *sizing)
        t = prepare(s, load_inputs(s), CPU)
        h, w = t["plain_styles"][0].shape[-2:]
        photo_h, photo_w = t["photo"].shape[-2:]
        assert abs(w / h - 512 / 320) < 0.05, (sizing, w, h)  # starry_night's aspect, not the photograph's
        assert abs(w * h / (photo_w * photo_h) - 1) < 0.05, (sizing, w, h)  # the output's pixel count


def test_the_metrics_are_deterministic_and_blend_like_one_painting():
    star, photo = picture("starry_night"), picture("tubingen")
    result = 0.5 * photo + 0.5 * picture("starry_night", tuple(photo.shape[-1:-3:-1]))  # a stand-in result
    first = metrics.standard_metrics(result, photo, [star])
    assert metrics.standard_metrics(result, photo, [star]) == first
    # a blend of a painting with itself is that painting (up to interpolating between duplicate samples)
    blend = metrics.style_swd(result, [star, star], [0.5, 0.5])
    assert abs(blend["style_swd"] - first["style_swd"]) < 1e-2 * first["style_swd"]
    # and a blend weighs its paintings: mostly the_scream is nearer the_scream
    scream = picture("the_scream")
    near = metrics.style_swd(scream, [star, scream], [0.1, 0.9])["style_swd"]
    far = metrics.style_swd(scream, [star, scream], [0.9, 0.1])["style_swd"]
    assert near < far < metrics.style_swd(scream, [star], [1.0])["style_swd"]


def test_coarse_scales_are_skipped_on_a_small_image():
    def square(kind: str, name: str, n: int) -> torch.Tensor:
        return images.to_tensor(images.resize(images.crop_square(images.load_image(kind, name)), (n, n)), CPU)

    photo, star = square("content", "tubingen", 64), square("style", "starry_night", 64)
    both_square = metrics.style_swd(photo, [star], [1.0])
    assert both_square["style_swd_2x"] is not None and both_square["style_swd_4x"] is None  # 64 / 2 = 32, 64 / 4 = 16
    assert abs(both_square["style_swd"] - (both_square["style_swd_1x"] + both_square["style_swd_2x"]) / 2) < 1e-12
    wide = metrics.style_swd(photo, [picture("starry_night", images.size_at_pixel_count(512, 320, 64 * 64))], [1.0])
    assert wide["style_swd_2x"] is None  # the painting at its own aspect is 81x51: 51 / 2 < 32
    tiny = metrics.standard_metrics(square("content", "tubingen", 32), photo[..., ::2, ::2], [star[..., ::2, ::2]])
    assert tiny["style_swd"] == tiny["style_swd_1x"] > 0
    assert tiny["style_swd_2x"] is None and tiny["style_swd_4x"] is None
