"""Neural Neighbor Style Transfer's engine pieces and its colour post-process: the matching and losses
against small hand-computed cases, the real Caffe VGG-19 at <= 48 px for the rest."""

import pytest
import torch

from nst import images
from nst.color import ZCA_RIDGE, moments, nnst_color, nnst_color_oklab, rgb_to_oklab, zca
from nst.features import FeatureExtractor, evaluation_flops, get_weights_spec
from nst.metrics import SELF_SIM_LAYERS, SWD_LAYERS
from nst.nnst import (
    CLEAR_OF_RULER,
    LAYERS,
    NNSTParams,
    cosine_loss,
    decompose,
    feature_splitting_loss,
    nearest_centred_cosine,
    nnst_flops,
    optimise_pyramid,
    replace_features,
    style_bank,
    stylize,
    synthesise,
)

CPU = torch.device("cpu")
EXACT = "donot_use_mm_for_euclid_dist"  # distances as differences, not |a|^2 + |b|^2 - 2ab
# A few steps at tiny sizes; the final pass samples relu1_1 (48 px) with stride 3, so that the trial's
# generator is drawn from.
TINY = NNSTParams(steps=4, final_steps=4, scales=2, final_max_side=16)


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor("vgg19", get_weights_spec("vgg19", "caffe"), list(LAYERS), "max", CPU)


def _image(name: str, side: int) -> torch.Tensor:
    img = images.load_image("content", name)
    return images.to_tensor(images.resize(img, images.target_size(*img.size, side)), CPU)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x[0].flatten(1).T  # [1,C,H,W] -> [H*W,C]


# ---------------------------------------------------------------------------------------------
# Matching


def test_nearest_neighbour_is_taken_after_centring_and_returns_the_style_vectors_themselves():
    # Bank: the four unit directions shifted by (5, 5), so its centred vectors are the unit directions.
    # Content: three vectors with mean 0. By centred cosine (2, .5) is nearest to (1, 0), (-.4, 2) to
    # (0, 1), (-1.6, -2.5) to (0, -1) (|-2.5| > |-1.6|); the returned vectors are the uncentred ones.
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]) + 5.0  # [4,2]
    content = torch.tensor([[2.0, 0.5], [-0.4, 2.0], [-1.6, -2.5]])  # [3,2]
    out = replace_features(content.T.reshape(1, 2, 3, 1), bank.T.unsqueeze(0), chunk_elements=10**6)
    assert torch.equal(out.reshape(2, 3).T, torch.tensor([[6.0, 5.0], [5.0, 6.0], [5.0, 4.0]]))
    # uncentred, every content vector would point nearer to (5, 6) or (6, 5) than to (5, 4)
    d, _ = nearest_centred_cosine(content, bank, 10**6)
    assert torch.allclose(d, 1 - torch.tensor([2 / (2**2 + 0.5**2) ** 0.5, 2 / (0.4**2 + 2**2) ** 0.5,
                                               2.5 / (1.6**2 + 2.5**2) ** 0.5]), atol=1e-6)


def test_every_replaced_vector_is_one_of_its_own_trials_style_vectors():
    content, bank = torch.randn(2, 16, 5, 7), torch.randn(2, 16, 40)
    out = replace_features(content, bank, chunk_elements=10**6)
    assert out.shape == content.shape
    for b in range(2):
        vectors = out[b].flatten(1).T  # [35,16]
        gaps = torch.cdist(vectors, bank[b].T, compute_mode=EXACT)  # [35,40]
        assert torch.all(gaps.min(1).values == 0)  # each is exactly one of its own trial's vectors
        assert torch.all(torch.cdist(vectors, bank[1 - b].T, compute_mode=EXACT).min(1).values > 0.1)  # never the other's


def test_with_the_content_as_style_every_vector_is_replaced_by_itself():
    x = torch.randn(2, 32, 6, 6)
    assert torch.equal(replace_features(x, x.flatten(2), chunk_elements=10**6), x)


def test_chunked_search_equals_the_unchunked_one():
    query, bank = torch.randn(53, 24), torch.randn(70, 24)
    d_all, i_all = nearest_centred_cosine(query, bank, 10**9)
    for chunk in (1, 70 * 5, 70 * 17 + 3):  # one row at a time, 5 rows, 17 rows
        d, i = nearest_centred_cosine(query, bank, chunk)
        assert torch.equal(i, i_all)
        assert torch.allclose(d, d_all, atol=1e-6)
    content = torch.randn(2, 24, 9, 11)
    assert torch.equal(replace_features(content, bank.T.unsqueeze(0), 70),
                       replace_features(content, bank.T.unsqueeze(0), 10**9))


def test_rotations_add_the_rotated_styles_hypercolumns_to_the_candidates(extractor):
    style = _image("starry_night", 64)[..., :32, :32]  # square: its rotations have its shape
    plain = style_bank(extractor, style, LAYERS, 4, rotate=False)
    rotated = style_bank(extractor, style, LAYERS, 4, rotate=True)
    assert plain.shape == (1, 2496, 64) and rotated.shape == (1, 2496, 256)
    assert torch.equal(rotated[..., :64], plain)
    for k in (1, 2, 3):  # rotated by torch itself, either way round: each is among the candidates
        content = torch.rot90(style, k, (2, 3))
        own = style_bank(extractor, content, LAYERS, 4, rotate=False)[0].T  # [64,C]
        assert torch.cdist(own, plain[0].T, compute_mode=EXACT).min(1).values.max() > 1e-3  # not there without
        gaps = torch.cdist(own, rotated[0].T, compute_mode=EXACT).min(1).values
        assert gaps.max() <= 1e-5 * own.norm(dim=1).min()
        # and the matches of the rotated content come nearer
        d_plain, _ = nearest_centred_cosine(own, plain[0].T, 10**9)
        d_rot, _ = nearest_centred_cosine(own, rotated[0].T, 10**9)
        assert d_rot.mean() < d_plain.mean()


# ---------------------------------------------------------------------------------------------
# Losses


def test_cosine_loss_by_hand_zero_at_its_target_and_blind_to_feature_scale():
    # positions (1,0) vs (1,0): 0; (0,1) vs (1,0): 1; (1,1) vs (1,0): 1 - 1/sqrt(2); (-1,0) vs (1,0): 2
    cur = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]).T.reshape(1, 2, 2, 2)
    target = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    expected = (0 + 1 + (1 - 2**-0.5) + 2) / 4
    assert torch.allclose(cosine_loss(cur, target), torch.tensor([expected]))
    x, t = torch.randn(2, 10, 4, 3), torch.randn(2, 10, 4, 3)
    assert torch.allclose(cosine_loss(t, t), torch.zeros(2), atol=1e-6)
    assert torch.allclose(cosine_loss(3.7 * x, t), cosine_loss(x, t), atol=1e-6)
    assert torch.allclose(cosine_loss(x, 0.01 * t), cosine_loss(x, t), atol=1e-6)
    assert torch.allclose(cosine_loss(x, t)[1:], cosine_loss(x[1:], t[1:]))  # per trial


def test_feature_splitting_loss_is_zero_against_itself_and_draws_its_offsets_from_each_trials_generator():
    feats = {"relu1_1": torch.randn(2, 8, 12, 12), "relu2_1": torch.randn(2, 16, 6, 6)}
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    # The same features as the bank, sampled on the same grid: each vector finds itself.
    loss = feature_splitting_loss(feats, feats, ["relu1_1", "relu2_1"], gens, max_side=4, chunk_elements=10**6)
    assert torch.allclose(loss, torch.zeros(2), atol=1e-6)
    other = {k: torch.randn_like(v) for k, v in feats.items()}

    def run(seeds):
        g = [torch.Generator().manual_seed(s) for s in seeds]
        return feature_splitting_loss(feats, other, ["relu1_1", "relu2_1"], g, 4, 10**6)

    assert torch.equal(run((3, 4)), run((3, 4)))
    assert torch.equal(run((3, 4))[0], run((3, 5))[0])  # trial 0's draws are its own
    # relu1_1 (12 px) is sampled with stride 3 at an offset drawn from the trial's generator; relu2_1
    # (6 px) with stride 1: other seeds give trial 1 other grids, and other losses
    assert len({run((3, s))[1].item() for s in range(8)}) > 1


# ---------------------------------------------------------------------------------------------
# Colour post-process


def test_zca_gives_the_style_mean_and_covariance():
    content = torch.randn(500, 2) @ torch.tensor([[1.0, 0.3], [0.0, 0.2]]) + 4
    style = torch.randn(300, 2) @ torch.tensor([[0.1, -0.05], [0.02, 0.3]]) - 1
    mu, cov = moments(zca(content, style))
    mu_s, cov_s = moments(style)
    assert torch.allclose(mu, mu_s, atol=1e-5)
    assert torch.allclose(cov, cov_s, atol=2e-4)  # the 1e-4 ridge on both covariances
    _, cov = moments(zca(content, style, ridge=1e-10))
    assert torch.allclose(cov, cov_s, atol=1e-8)


def test_colour_post_process_gives_the_styles_chroma_and_keeps_the_luminance_structure():
    content, style = _image("tubingen", 48), _image("starry_night", 48)
    output = (content + 0.05 * torch.randn_like(content)).clamp(0, 1)
    lab_c, lab_s, lab_o = rgb_to_oklab(content), rgb_to_oklab(style), rgb_to_oklab(output)
    mu_s, cov_s = moments(_pixels(lab_s)[:, 1:])
    # Before the filter and the clipping to the RGB cube, with a vanishing ridge: the content's chroma
    # with the style's moments (but for the clamp to the style's own range, which moves 0.1 % of pixels).
    unfiltered = nnst_color_oklab(lab_c, lab_s, lab_o, moment_only=False, filter_iterations=0, ridge=1e-10)
    mu, cov = moments(_pixels(unfiltered)[:, 1:])
    assert torch.allclose(mu, mu_s, atol=1e-3)
    assert torch.allclose(cov, cov_s, rtol=0.05, atol=1e-5)
    # The peer's ridge (1e-4) is of the order of these variances: the mean is still the style's, the
    # variances fall short of the style's, never beyond them
    mu, cov = moments(_pixels(nnst_color_oklab(lab_c, lab_s, lab_o, moment_only=False, filter_iterations=0,
                                               ridge=ZCA_RIDGE))[:, 1:])
    assert torch.allclose(mu, mu_s, atol=1e-3)
    assert torch.all(torch.diagonal(cov) <= 1.02 * torch.diagonal(cov_s))
    # ...and an affine map of the content's chroma (a 2x2 matrix and a shift, fitted by least squares)
    design = torch.cat([_pixels(lab_c)[:, 1:], torch.ones(lab_c[0, 0].numel(), 1)], 1).double()  # [N,3]
    got = _pixels(unfiltered)[:, 1:].double()
    residual = got - design @ torch.linalg.lstsq(design, got).solution
    assert (residual.pow(2).mean(0) < 0.01 * got.var(0)).all()
    final = rgb_to_oklab(nnst_color(content, style, output))
    mu, cov = moments(_pixels(final)[:, 1:])
    assert torch.allclose(mu, mu_s, atol=3e-3)
    # the guided filter smooths the chroma: less variance than the style's, never more
    assert torch.all(torch.diagonal(cov) <= 1.05 * torch.diagonal(cov_s))
    assert torch.all(torch.diagonal(cov) >= 0.2 * torch.diagonal(cov_s))
    # luminance: the output's, clamped to the style's range
    lum = torch.stack([final[0, 0].flatten(), lab_o[0, 0].flatten()])
    assert torch.corrcoef(lum)[0, 1] > 0.99
    inside = (lab_o[0, 0] > lab_s[0, 0].min() + 0.01) & (lab_o[0, 0] < lab_s[0, 0].max() - 0.01)
    assert (final[0, 0] - lab_o[0, 0])[inside].abs().max() < 0.02


def test_colour_post_process_of_a_grey_style_is_grey_and_each_trial_uses_its_own_style():
    content, style = _image("tubingen", 48), _image("starry_night", 48)
    grey = images.luminance(style)
    output = content.flip(3)
    out = nnst_color(content.expand(2, -1, -1, -1), torch.cat([style, grey]), output.expand(2, -1, -1, -1))
    assert torch.allclose(out[:1], nnst_color(content, style, output), atol=1e-6)
    assert torch.allclose(out[1:], nnst_color(content, grey, output), atol=1e-6)
    chroma = rgb_to_oklab(out[1:])[:, 1:]
    assert chroma.abs().max() < 2e-3  # grey in, grey out (within OkLab's rounding of grey)


# ---------------------------------------------------------------------------------------------
# The loop


def test_laplacian_pyramid_synthesises_back_to_the_image():
    x = torch.rand(2, 3, 36, 48)
    pyr = decompose(x, 5)
    assert [p.shape[2:] for p in pyr] == [(36, 48), (18, 24), (9, 12), (4, 6), (2, 3), (1, 1)]
    assert torch.allclose(synthesise(pyr), x, atol=1e-6)


def test_stylize_lowers_its_losses_at_48px_and_a_batch_of_two_equals_two_runs_alone(extractor):
    content = torch.cat([_image("tubingen", 48), _image("tubingen", 48).flip(3)])  # [2,3,36,48]
    style = _image("starry_night", 48)
    params = [TINY, NNSTParams(**{**TINY.__dict__, "alpha": 0.3, "lr": 4e-3})]
    seeds = (7, 8)
    both = stylize(content, style, extractor, params, [torch.Generator().manual_seed(s) for s in seeds])
    assert both.image.shape == content.shape and both.raw.shape == content.shape
    assert both.image.min() >= 0 and both.image.max() <= 1 and torch.isfinite(both.image).all()
    assert [stage for stage, _ in both.history] == ["scale 0 (24 px)", "scale 1 (48 px)", "final"]
    for stage, losses in both.history:
        assert losses.shape == (4, 2)
        assert torch.all(losses[-1] < losses[0]), (stage, losses)
    assert (both.image - both.raw).abs().mean() > 1e-3  # the colour post-process was applied
    for b in range(2):
        alone = stylize(content[b:b + 1], style, extractor, params[b], [torch.Generator().manual_seed(seeds[b])])
        for (_, la), (_, lb) in zip(alone.history, both.history, strict=True):
            assert torch.allclose(la[:, 0], lb[:, b], rtol=1e-4, atol=1e-6)
        # Adam steps by m/sqrt(v): where a gradient is at float-noise level its step can still be up to
        # lr, so batch noise reaches a few pixels at lr's scale; on average it stays a small share of
        # one step (the CPU's kernels decide how small: 1.9e-5, lr / 216, on an AMD EPYC)
        gap = (alone.image - both.image[b:b + 1]).abs()
        assert gap.max() < params[b].lr and gap.mean() < params[b].lr / 100, (gap.max(), gap.mean())


def test_bad_settings_are_refused_in_one_line_naming_the_key_before_any_work():
    content, style = torch.rand(2, 3, 48, 48), torch.rand(1, 3, 48, 48)
    gens = [torch.Generator(), torch.Generator()]

    def extractor(image):
        raise AssertionError("the network ran before the settings were checked")
    with pytest.raises(ValueError, match="nnst.steps: must be the same for every trial"):
        stylize(content, style, extractor, [TINY, NNSTParams(**{**TINY.__dict__, "steps": 5})], gens)
    with pytest.raises(ValueError, match="nnst.alpha: must be between 0 and 1"):
        stylize(content, style, extractor, NNSTParams(**{**TINY.__dict__, "alpha": 1.5}), gens)
    # relu4_x lies behind three poolings: 8 px at least; 48 px over 4 scales is 6 px
    with pytest.raises(ValueError, match=r"nnst.scales: 4 scales: the coarsest of a 48x48 image is 6 px .* at least 8 px"):
        stylize(content, style, extractor, NNSTParams(**{**TINY.__dict__, "scales": 4}), gens)
    with pytest.raises(ValueError, match="nnst.layers: unknown VGG-19 layer"):
        stylize(content, style, extractor, NNSTParams(**{**TINY.__dict__, "layers": ("relu9_1",)}), gens)
    with pytest.raises(ValueError, match="nnst.final_layers: unknown VGG-19 layer"):
        stylize(content, style, extractor, NNSTParams(**{**TINY.__dict__, "final_layers": ("relu9_1",)}), gens)


def test_the_layers_are_none_of_the_rulers():
    # the style ruler's (sliced W2) and the content ruler's self-similarity layers
    ruler = set(SWD_LAYERS) | set(SELF_SIM_LAYERS)
    assert not set(LAYERS) & ruler
    # and the final pass's ruler-clear choice does not feed one through a single convolution either
    for name in CLEAR_OF_RULER:
        block, index = name.removeprefix("relu").split("_")
        assert name not in ruler and f"relu{block}_{int(index) + 1}" not in ruler, name
    assert {f"relu{b}_{i + 1}" for b, i in ((1, 1), (2, 1), (3, 3), (4, 3))} <= ruler  # why the others are left out
    assert NNSTParams().layers == LAYERS and NNSTParams().final_layers is None  # the final pass: the same


def test_flops_count_the_distance_matrices_as_well_as_the_network():
    p = NNSTParams(steps=10, final_steps=5, scales=1, rotations=False, layers=("relu1_1", "relu2_1"))
    f = nnst_flops(p, 64, 64, 64, 64)
    assert f["network_steps"] == 15 * evaluation_flops("vgg19", "relu2_1", 64, 64)
    # one search: 16x16 content hypercolumns against 16x16 style ones, 64 + 128 channels
    assert f["nn_search"] == 2 * 256 * 256 * 192
    # final pass, per step: relu1_1 is 64 px (not sampled), relu2_1 32 px; forward and backward
    assert f["final_distances"] == 5 * 4 * (4096 * 4096 * 64 + 1024 * 1024 * 128)
    assert nnst_flops(p, 64, 64, 64, 64, batch=3)["nn_search"] == 3 * f["nn_search"]
    shallow = nnst_flops(NNSTParams(**{**p.__dict__, "final_layers": ("relu1_1",)}), 64, 64, 64, 64)
    assert shallow["final_distances"] == 5 * 4 * 4096 * 4096 * 64
    assert shallow["network_steps"] == (10 * evaluation_flops("vgg19", "relu2_1", 64, 64)
                                        + 5 * evaluation_flops("vgg19", "relu1_1", 64, 64))
    # the peer's setting at 512 px: the final pass's distances rival the network
    big = nnst_flops(NNSTParams(), 512, 512, 512, 512)
    assert big["final_distances"] > 0.5 * big["network_steps"]


def test_pyramid_adam_takes_torch_adams_steps_for_each_trial():
    target = torch.rand(2, 3, 8, 10)  # the image at scale 1: half the size
    pyr = decompose(torch.rand(2, 3, 16, 20), 3)
    params = [NNSTParams(lr=0.05), NNSTParams(lr=0.01, betas=(0.8, 0.99), eps=1e-6)]

    def loss_fn(image, _step, target=target):
        return (image - target).pow(2).flatten(1).mean(1) + image.pow(3).flatten(1).mean(1)  # [B]

    out, losses = optimise_pyramid(pyr, 1, loss_fn, 6, params)
    assert losses.shape == (6, 2) and torch.equal(out[0], pyr[0])  # levels finer than the scale untouched
    for b, p in enumerate(params):
        levels = [x[b:b + 1].clone().requires_grad_(True) for x in pyr[1:]]
        opt = torch.optim.Adam(levels, lr=p.lr, betas=p.betas, eps=p.eps)
        for _ in range(6):
            opt.zero_grad()
            loss_fn(synthesise(levels), 0, target[b:b + 1]).sum().backward()
            opt.step()
        with torch.no_grad():
            expected = synthesise([pyr[0][b:b + 1]] + levels)
        assert torch.allclose(synthesise(out)[b:b + 1], expected, atol=1e-5)
