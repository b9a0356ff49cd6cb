"""STROTSS's pieces against small hand-computed cases, and the loop end to end at 48 px on the real VGG."""

import copy
import math

import pytest
import torch

from nst import metrics
from nst import strotss as S
from nst.errors import InputError
from nst.features import FeatureExtractor, evaluation_flops, get_weights_spec
from nst.images import load_image, resize, target_size, to_tensor
from nst.metrics import SWD_LAYERS

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor("vgg19", get_weights_spec("vgg19", "caffe"), list(S.HYPERCOLUMN_LAYERS), "max", CPU)


def bundled(name: str, long_side: int) -> torch.Tensor:
    img = load_image("image", name)
    return to_tensor(resize(img, target_size(*img.size, long_side)), CPU)


def gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# --- layers ---------------------------------------------------------------------------------------


def test_hypercolumn_avoids_the_rulers_layers_where_the_faithful_set_does_not():
    ruler = set(SWD_LAYERS) | set(getattr(metrics, "SELF_SIM_LAYERS", ()))
    assert not set(S.HYPERCOLUMN_LAYERS) & ruler
    assert set(S.PEER_LAYERS) & ruler == {"relu1_2", "relu2_2"}
    # one convolution below a ruler layer in its block: only the two the peer has and VGG-19 leaves no
    # alternative to (blocks 1 and 2 have two convolutions each, the second the ruler's)
    below = {name for name in S.HYPERCOLUMN_LAYERS if f"relu{name[4]}_{int(name[6]) + 1}" in ruler}
    assert below == {"relu1_1", "relu2_1"}
    assert S.hypercolumn_channels(S.HYPERCOLUMN_LAYERS) == 3 + 64 + 128 + 2 * 256 + 2 * 512 == 1731
    assert S.hypercolumn_channels(S.PEER_LAYERS) == 2179  # the peer's


# --- the Laplacian pyramid ------------------------------------------------------------------------


def test_pyramid_synthesis_inverts_decomposition_on_a_batch():
    x = torch.rand(2, 3, 37, 50, dtype=torch.float64)
    pyr = S.decompose(x, 5)
    assert [tuple(p.shape[-2:]) for p in pyr] == [(37, 50), (18, 25), (9, 12), (4, 6), (2, 3), (1, 1)]
    torch.testing.assert_close(S.synthesise(pyr), x, rtol=0, atol=1e-12)
    # each trial's pyramid is its own: decomposing one alone gives the same levels
    for a, b in zip(S.decompose(x[1:], 5), pyr, strict=True):
        torch.testing.assert_close(a[0], b[1], rtol=0, atol=1e-12)


def test_init_is_the_styles_mean_colour_plus_the_contents_finest_band():
    flat = torch.full((1, 3, 16, 20), 0.3)
    assert S.laplacian_band(flat).abs().max() < 1e-6  # a flat image has no detail
    style = torch.zeros(1, 3, 8, 8)
    style[:, 0] = 1.0  # pure red: mean colour (1, 0, 0)
    content = torch.rand(1, 3, 16, 20)
    init = S.initial_image(content, style)
    torch.testing.assert_close(init - S.laplacian_band(content), torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand_as(init))
    up = S.next_scale_image(init, torch.rand(1, 3, 32, 40), last=True)
    assert up.shape[-2:] == (32, 40)


# --- sampling -------------------------------------------------------------------------------------


def test_bilinear_and_nearest_sampling_by_hand():
    # a map whose value is 10*row + col: bilinear interpolation of it is exact
    h, w = 6, 8
    ramp = (10 * torch.arange(h).view(h, 1) + torch.arange(w).view(1, w)).float().view(1, 1, h, w)
    image = torch.zeros(1, 1, 12, 16)
    rows, cols = torch.tensor([[3, 4]]), torch.tensor([[5, 15]])
    got = S.sample_bilinear([image, ramp], rows, cols, [0, 1])  # ramp is one pooling deep
    # (3,5)/2 = (1.5, 2.5) -> 17.5; (4,15)/2 = (2, 7.5): column 8 is clamped to 7 -> 27
    torch.testing.assert_close(got[0, :, 1], torch.tensor([17.5, 27.0]))
    near = S.sample_nearest([image, ramp], rows, cols, [0, 1])
    torch.testing.assert_close(near[0, :, 1], torch.tensor([12.0, 27.0]))  # floor(p / 2)


def test_sampler_is_reproducible_per_generator_and_independent_of_the_batch():
    def draws(seeds, steps=3):
        sampler = S.OutputSampler(30, 40, gens(*seeds), samples=256)
        return [sampler.next() for _ in range(steps)]

    a, b, together = draws([1]), draws([2]), draws([1, 2])
    for (ra, ca), (rb, cb), (rt, ct) in zip(a, b, together, strict=True):
        assert ra.shape == (1, 256) and int(ra.max()) < 30 and int(ca.max()) < 40 and int(ra.min()) >= 0
        assert torch.equal(rt[0], ra[0]) and torch.equal(ct[0], ca[0])
        assert torch.equal(rt[1], rb[0]) and torch.equal(ct[1], cb[0])
        assert not torch.equal(ra, rb)
    assert not torch.equal(a[0][0], a[1][0])  # re-shuffled every step
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, draws([1]), strict=True))  # the same seed, the same draws
    # fewer positions than samples: every position once per step (the peer takes min(cnt, grid))
    rows, _ = S.OutputSampler(10, 12, gens(0), samples=1024).next()
    assert rows.shape == (1, 120)


def test_grid_is_strided_above_the_peers_cell_count():
    rows, cols = S.grid_positions(300, 300, 128**2, torch.Generator().manual_seed(0))
    # 300*300 // 128**2 = 5 -> strides floor(sqrt 5) = 2 down, ceil(sqrt 5) = 3 across
    assert len(set(rows.tolist())) == 150 and len(set(cols.tolist())) == 100


def test_style_bank_is_drawn_from_the_style_per_trial():
    style = torch.rand(2, 3, 9, 11)
    bank = S.style_bank([style], [0], gens(5, 6), draws=3, draw_size=40)
    assert bank.shape == (2, 120, 3)
    for t in range(2):
        pixels = {tuple(p) for p in style[t].flatten(1).T.tolist()}
        assert all(tuple(v) in pixels for v in bank[t].tolist())
        assert len({tuple(v) for v in bank[t, :40].tolist()}) == 40  # distinct positions within a draw
    alone = S.style_bank([style[1:]], [0], gens(6), draws=3, draw_size=40)
    assert torch.equal(alone[0], bank[1])


# --- losses ---------------------------------------------------------------------------------------


def test_remd_zero_for_the_same_set_and_by_hand_for_others():
    y = torch.randn(2, 50, 7)
    assert S.remd(y, y).abs().max() < 1e-6
    assert S.remd(y[:, torch.randperm(50)], y).abs().max() < 1e-6  # a set: order does not matter
    x = torch.tensor([[[1.0, 0.0]]])
    yy = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    # costs [[1, 0]]: row minima mean 0, column minima (1, 0) mean 0.5 -> max 0.5
    torch.testing.assert_close(S.remd(x, yy), torch.tensor([0.5]))
    assert S.remd(torch.randn(1, 30, 7), torch.randn(1, 40, 7)).item() > 0


def test_palette_term_by_hand():
    rgb = torch.rand(1, 20, 3) + 0.1
    # identical colours: cosine 0, and L2 at the peer's floor sqrt(1e-5 / 3)
    torch.testing.assert_close(S.palette_remd(rgb, rgb), torch.tensor([math.sqrt(1e-5 / 3)]), rtol=1e-3, atol=1e-6)
    grey, white = torch.full((1, 1, 3), 0.5), torch.ones(1, 1, 3)
    # same direction in YUV (cosine 0); the basis is orthonormal, so L2 = |0.5 * (1,1,1)| / sqrt 3 = 0.5
    torch.testing.assert_close(S.palette_remd(grey, white), torch.tensor([0.5]), rtol=1e-4, atol=1e-6)
    black = torch.zeros(1, 1, 3)
    assert torch.isfinite(S.palette_remd(black, white)).all()


def test_moment_loss_zero_for_the_same_set_and_by_hand():
    y = torch.randn(1, 64, 5)
    assert S.moment_loss(y, S.StyleStats.of(y)).item() < 1e-6
    x = torch.tensor([[[0.0], [2.0]]])  # mean 1, variance 1
    style = S.StyleStats.of(torch.tensor([[[1.0], [1.0]]]))  # mean 1, variance 0
    torch.testing.assert_close(S.moment_loss(x, style), torch.tensor([1.0]))


def test_self_similarity_loss_by_hand_and_its_invariances():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    c = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    # column-normalised cosine distances: x [[0,.5,0],[1,0,1],[0,.5,0]], c [[0,0,.5],[0,0,.5],[1,1,0]];
    # |difference| sums to 4 over 9 entries, times N = 3
    torch.testing.assert_close(S.self_similarity_loss(x, c), torch.tensor([4 / 3]))

    feats = torch.rand(2, 40, 16) + 0.05  # positive, as ReLU features are
    content = torch.rand(2, 40, 16) + 0.05
    assert S.self_similarity_loss(feats, feats).abs().max() < 1e-5  # an image against itself
    base = S.self_similarity_loss(feats, content)
    # It sees only angles between hypercolumns: a global or per-position positive scaling of the
    # features, or a rotation of the feature space, leaves it unchanged. (A colour shift of the image
    # does not: it changes the features themselves.)
    scaled = feats * 7.0
    per_position = feats * (torch.rand(2, 40, 1) + 0.5)
    q, _ = torch.linalg.qr(torch.randn(16, 16))
    for variant in (scaled, per_position, feats @ q):
        torch.testing.assert_close(S.self_similarity_loss(variant, content), base, rtol=1e-4, atol=1e-6)
    # but it does see the arrangement
    assert (S.self_similarity_loss(feats[:, torch.randperm(40)], content) - base).abs().max() > 1e-3


def test_objective_combines_the_terms_with_alpha():
    x, c, bank = torch.rand(2, 30, 9), torch.rand(2, 30, 9), torch.rand(2, 50, 9)
    alpha = torch.tensor([16.0, 0.5])
    t = S.objective(x, c, bank, S.StyleStats.of(bank), alpha)
    a = alpha
    want = (a * t["content"] + t["remd"] + t["moment"] + t["palette"] / torch.tensor([16.0, 1.0])) / (a + 2.0)
    torch.testing.assert_close(t["total"], want)
    alone = S.objective(x[1:], c[1:], bank[1:], S.StyleStats.of(bank[1:]), alpha[1:])
    torch.testing.assert_close(alone["total"][0], t["total"][1])


# --- the optimiser and the schedule ---------------------------------------------------------------


def test_rmsprop_step_is_torchs_per_trial():
    start = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    mine = start.clone().requires_grad_(True)
    square = [torch.zeros_like(mine)]
    refs = [start[t : t + 1].clone().requires_grad_(True) for t in range(2)]
    opts = [torch.optim.RMSprop([refs[0]], lr=2e-3), torch.optim.RMSprop([refs[1]], lr=1e-3)]
    for _ in range(3):
        mine.grad = None
        (mine**3).sum().backward()
        S.rmsprop_step([mine], square, torch.tensor([2e-3, 1e-3], dtype=torch.float64))
        for r, o in zip(refs, opts, strict=True):
            o.zero_grad()
            (r**3).sum().backward()
            o.step()
    torch.testing.assert_close(mine.detach(), torch.cat([r.detach() for r in refs]), rtol=0, atol=1e-12)


def test_schedule_holds_the_peers_defaults():
    peer = S.Schedule()
    assert S.Schedule.for_size(512) == peer
    assert peer.long_sides == (64, 128, 256, 512) and peer.lrs[-1] == 1e-3 and set(peer.iterations) == {250}
    assert peer.content_weights() == [16.0, 8.0, 4.0, 2.0]
    assert S.Schedule.for_size(256).long_sides == (64, 128, 256)
    with pytest.raises(InputError, match="strotss.schedule"):
        S.Schedule(long_sides=(64, 128), lrs=(1e-3,), iterations=(1, 1))
    with pytest.raises(InputError, match="strotss.layers: rectified VGG-19 layers only"):
        S.Schedule(layers=("relu1_1", "conv3_1"))


# --- cost ------------------------------------------------------------------------------------------


def test_step_cost_counts_the_losses_with_the_network():
    n, m, c = 2, 3, 5
    assert S.loss_flops(n, m, c) == 4 * n * m * c + 24 * n * m + 6 * n * n * c + 4 * n * c * c
    net = evaluation_flops("vgg19", "relu5_4", 512, 384)
    step = S.step_flops(384, 512, samples=1024, bank=5000)
    assert step == net + S.loss_flops(1024, 5000, 1731)
    # at 256 px, with the peer's sample and bank counts, the losses cost about three quarters of what
    # the network does: a budget in network FLOPs alone would undercount a step by over 40 %
    net256 = evaluation_flops("vgg19", "relu5_4", 256, 192)
    assert S.step_flops(192, 256, samples=1024, bank=5000) - net256 > 0.7 * net256
    run = S.run_flops(S.Schedule(), 384, 512)
    assert run > 250 * step  # the last scale alone


# --- end to end -----------------------------------------------------------------------------------


def fixed_objective(extractor, image, content, style, schedule, alpha, seed):
    """The objective at one fixed draw of positions and bank, to compare images without sampling noise."""
    depths = S._depths(schedule.layers)
    with torch.no_grad():
        bank = S.style_bank(S.hypercolumn_maps(extractor, style, schedule.layers), depths, gens(seed), draws=2, draw_size=400)
        rows, cols = S.OutputSampler(*image.shape[-2:], gens(seed), samples=512).next()
        xs = S.sample_bilinear(S.hypercolumn_maps(extractor, image, schedule.layers), rows, cols, depths)
        cs = S.sample_bilinear(S.hypercolumn_maps(extractor, content, schedule.layers), rows, cols, depths)
        return S.objective(xs, cs, bank, S.StyleStats.of(bank), torch.tensor([alpha]))["total"].item()


def test_stylize_lowers_the_objective_at_48px(extractor):
    content, style = bundled("tubingen", 48), bundled("the_scream", 48)
    schedule = S.Schedule(long_sides=(48,), lrs=(2e-3,), iterations=(8,), samples=256, bank_draws=2, bank_draw_size=300)
    out = S.stylize(content, style, extractor, schedule=schedule, generators=gens(0))
    assert out.images.shape == content.shape and out.losses.shape == (8, 1)
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0
    init = S.initial_image(content, S.resize_long_side(style, 48))
    before = fixed_objective(extractor, init, content, style, schedule, 16.0, seed=9)
    after = fixed_objective(extractor, out.images, content, style, schedule, 16.0, seed=9)
    assert after < 0.9 * before, (before, after)


def test_batched_trials_equal_trials_alone(extractor):
    """Two trials (own content weights and generators) in one batch give what each gives alone. In
    float64: in float32 the convolutions round differently for batches of 1 and 2 (~1e-7), and
    RMSprop's first step (lr * sign of the gradient, whatever its size) turns those into whole steps
    where a gradient is near zero."""
    ex64 = copy.deepcopy(extractor)
    ex64.net.double()
    ex64.dtype = torch.float64
    content, style = bundled("tubingen", 48).double(), bundled("the_scream", 48).double()
    schedule = S.Schedule.for_size(48, coarsest=24, iterations=2, samples=128, bank_draws=2, bank_draw_size=200)
    assert schedule.long_sides == (24, 48)
    both = S.stylize(content.expand(2, -1, -1, -1), style, ex64, schedule=schedule, alpha=[16.0, 2.0], generators=gens(3, 4))
    for t, (a, seed) in enumerate([(16.0, 3), (2.0, 4)]):
        alone = S.stylize(content, style, ex64, schedule=schedule, alpha=[a], generators=gens(seed))
        torch.testing.assert_close(both.images[t], alone.images[0], rtol=0, atol=1e-9)
        torch.testing.assert_close(both.losses[:, t], alone.losses[:, 0], rtol=1e-9, atol=1e-12)
    assert not torch.allclose(both.images[0], both.images[1])


def test_too_small_an_image_is_refused_before_any_work(extractor):
    content, style = bundled("tubingen", 48), bundled("starry_night", 48)  # 48 x 30: 15 px at long side 24
    schedule = S.Schedule.for_size(48, coarsest=24, iterations=1)
    with pytest.raises(InputError, match="style.*under 16 px"):
        S.stylize(content, style, extractor, schedule=schedule)


def test_batched_trials_in_float32_see_the_same_first_objective(extractor):
    content, style = bundled("tubingen", 48), bundled("the_scream", 48)
    schedule = S.Schedule(long_sides=(48,), lrs=(2e-3,), iterations=(1,), samples=128, bank_draws=2, bank_draw_size=200)
    both = S.stylize(content.expand(2, -1, -1, -1), style, extractor, schedule=schedule, alpha=[16.0, 2.0], generators=gens(3, 4))
    for t, (a, seed) in enumerate([(16.0, 3), (2.0, 4)]):
        alone = S.stylize(content, style, extractor, schedule=schedule, alpha=[a], generators=gens(seed))
        torch.testing.assert_close(both.losses[0, t], alone.losses[0, 0], rtol=1e-5, atol=1e-7)
