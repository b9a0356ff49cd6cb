"""The losses agree with their reference formulas, per image in a batch."""

import pytest
import torch

from nst.errors import InputError
from nst.loss import Loss, LossSpec, W2Target, content_term, gram, layer_weights, moments, sqrtm, style_term, tv_term, w2_term


def test_gram_matches_the_definition():
    f = torch.randn(2, 3, 4, 5)
    g = gram(f, normalise=False)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                terms = [float(f[b, i, y, x]) * float(f[b, j, y, x]) for y in range(4) for x in range(5)]
                # float32 summation error is bounded by the size of the terms, not of their sum (which can cancel)
                scale = sum(abs(t) for t in terms)
                assert g[b, i, j].item() == pytest.approx(sum(terms), rel=1e-5, abs=1e-6 * scale)
    assert torch.allclose(gram(f, normalise=True), g / (3 * 4 * 5))


def test_gram_of_half_precision_features_is_float32():
    f = (torch.rand(1, 8, 64, 64) * 100).half()  # fp16 Gram would overflow 65504
    g = gram(f, normalise=False)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()


def test_content_forms():
    f, p = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    d = (f - p).flatten(1)
    assert torch.allclose(content_term(f, p, "mse"), (d**2).sum(1) / d.shape[1])
    assert torch.allclose(content_term(f, p, "paper"), 0.5 * (d**2).sum(1))


def test_style_forms():
    f, s = torch.randn(2, 4, 3, 5), torch.randn(1, 4, 3, 5)
    n, m = 4, 15
    g_raw, a_raw = gram(f, False), gram(s, False)
    paper = ((g_raw - a_raw) ** 2).sum((1, 2)) / (4 * n**2 * m**2)  # Gatys et al. eq. 4
    assert torch.allclose(style_term(f, a_raw, "paper"), paper)
    mse = ((g_raw / (n * m) - a_raw / (n * m)) ** 2).sum((1, 2)) / n**2
    assert torch.allclose(style_term(f, gram(s, True), "mse"), mse)


def test_tv():
    x = torch.zeros(1, 3, 4, 4)
    x[..., :, 2:] = 1.0  # one vertical edge: 4 rows x 3 channels differ across 1 of 3 column pairs
    assert tv_term(x).item() == pytest.approx(1 / 3)
    assert tv_term(torch.ones(2, 3, 5, 5)).tolist() == [0.0, 0.0]


def test_style_layer_weights():
    assert layer_weights("k", ["a", "b", "c", "d"], None) == (0.25,) * 4
    assert layer_weights("k", ["a", "b"], [3, 1]) == (0.75, 0.25)
    with pytest.raises(InputError, match="2 style layers"):
        layer_weights("loss.style_layer_weights", ["a", "b"], [1])


class _Identity:
    """A stand-in feature extractor exposing the image itself as two 'layers'."""

    def __call__(self, x):
        return {"l1": x, "l2": x[:, :, ::2, ::2]}


def test_objective_is_per_image_with_per_image_weights():
    torch.manual_seed(0)
    content, style = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    spec = LossSpec(("l1",), ("l1", "l2"), (0.5, 0.5), "mse", "mse")
    w = lambda *v: torch.tensor(v)  # noqa: E731 -- a one-line helper, named where it is used
    obj = Loss(_Identity(), spec, content=content, style=style, content_weight=w(1.0, 2.0),
                    style_weight=w(10.0, 0.0), tv_weight=w(0.0, 3.0))
    batch = torch.rand(2, 3, 8, 8)
    terms = obj(batch)
    assert set(terms) == {"content/l1", "style/l1", "style/l2", "content", "style", "tv", "total"}
    assert all(t.shape == (2,) for t in terms.values())
    for b, (cw, sw, tw) in enumerate([(1.0, 10.0, 0.0), (2.0, 0.0, 3.0)]):
        single = obj(batch[b : b + 1])
        assert terms["style"][b].item() == pytest.approx(single["style"].item(), rel=1e-5)
        c = content_term(batch[b : b + 1], content, "mse").item()
        s = 0.5 * style_term(batch[b : b + 1], gram(style, True), "mse").item() + 0.5 * style_term(
            batch[b : b + 1, :, ::2, ::2], gram(style[:, :, ::2, ::2], True), "mse").item()
        tv = tv_term(batch[b : b + 1]).item()
        assert terms["total"][b].item() == pytest.approx(cw * c + sw * s + tw * tv, rel=1e-5)


# --- the Wasserstein-2 style form ------------------------------------------------------------------

def _features_with(mean: torch.Tensor, cov: torch.Tensor, m: int) -> torch.Tensor:
    """[1,C,m,1] features whose mean over the m positions is exactly `mean` and whose population
    covariance is exactly `cov`: mean + L z, with z's rows orthonormal, orthogonal to the ones vector
    and scaled by sqrt(m) (zero mean, identity second moment), L L^T = cov."""
    c = mean.shape[0]
    g = torch.Generator().manual_seed(1)
    a = torch.cat([torch.ones(m, 1, dtype=torch.float64), torch.randn(m, c, generator=g, dtype=torch.float64)], 1)
    q, _ = torch.linalg.qr(a)  # [m, c+1]; column 0 along the ones vector
    z = q[:, 1:].T * m**0.5  # [c, m]
    f = mean[:, None] + torch.linalg.cholesky(cov) @ z
    return f.reshape(1, c, m, 1)


def _w2_2x2(m1, s1, m2, s2) -> float:
    """W2^2 of two 2-dimensional Gaussians in closed form, without a matrix square root:
    tr sqrt(S2^1/2 S1 S2^1/2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)) for 2 x 2 matrices."""
    cross = (torch.trace(s1 @ s2) + 2 * (torch.det(s1) * torch.det(s2)).sqrt()).sqrt()
    return float((m1 - m2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross)


def test_features_have_the_statistics_asked_for():
    mean, cov = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    mu, srm = moments(_features_with(mean, cov, 50))
    assert torch.allclose(mu[0], mean) and torch.allclose(srm[0] - torch.outer(mu[0], mu[0]), cov)


def test_w2_matches_the_closed_form_for_non_commuting_covariances():
    m1, s1 = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    m2, s2 = torch.tensor([1.5, 0.0], dtype=torch.float64), torch.tensor([[0.5, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    assert not torch.allclose(s1 @ s2, s2 @ s1)
    target = W2Target.of(m2[None], (s2 + torch.outer(m2, m2))[None], ridge=0.0)
    got = w2_term(_features_with(m1, s1, 40), target, iterations=30)
    # the term is per channel: W2^2 / C
    assert got.item() == pytest.approx(_w2_2x2(m1, s1, m2, s2) / 2, rel=1e-9)
    # one dimension: (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    f = _features_with(torch.tensor([1.0], dtype=torch.float64), torch.tensor([[4.0]], dtype=torch.float64), 9)
    t = W2Target.of(torch.tensor([[3.0]], dtype=torch.float64), torch.tensor([[[9.0 + 9.0]]], dtype=torch.float64), ridge=0.0)
    assert w2_term(f, t).item() == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2, rel=1e-9)


def test_w2_matches_an_eigendecomposition_in_higher_dimension_with_the_ridge():
    g = torch.Generator().manual_seed(2)
    c = 6
    a, b = torch.randn(c, c, generator=g, dtype=torch.float64), torch.randn(c, c, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T / c + 0.1 * torch.eye(c, dtype=torch.float64), b @ b.T / c + 0.1 * torch.eye(c, dtype=torch.float64)
    m1, m2 = torch.randn(c, generator=g, dtype=torch.float64), torch.randn(c, generator=g, dtype=torch.float64)
    target = W2Target.of(m2[None], (s2 + torch.outer(m2, m2))[None])
    ridge = 1e-4 * float(torch.diagonal(s2).mean())  # W2_RIDGE x the target's mean variance
    assert target.ridge == pytest.approx(ridge)
    s1r, s2r = s1 + ridge * torch.eye(c, dtype=torch.float64), s2 + ridge * torch.eye(c, dtype=torch.float64)

    def root(s):
        v, q = torch.linalg.eigh(s)
        return q @ torch.diag(v.sqrt()) @ q.T

    r2 = root(s2r)
    expected = ((m1 - m2).pow(2).sum() + torch.trace(s1r + s2r - 2 * root(r2 @ s1r @ r2))) / c
    got = w2_term(_features_with(m1, s1, 30), target, iterations=40)
    assert got.item() == pytest.approx(expected.item(), rel=1e-8)


def test_w2_is_zero_for_identical_statistics_and_batches_per_image():
    torch.manual_seed(0)
    style = torch.rand(1, 4, 6, 6) * 3
    target = W2Target.of(*moments(style))
    assert abs(w2_term(style, target).item()) < 1e-4 * float(target.cov.diagonal(dim1=-2, dim2=-1).mean())
    batch = torch.rand(2, 4, 6, 6) * 3
    both = style_term(batch, target, "w2")
    assert both.shape == (2,)
    for b in range(2):
        assert both[b].item() == pytest.approx(style_term(batch[b:b + 1], target, "w2").item(), rel=1e-5)


def test_sqrtm_and_w2_gradients():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    spd = (a @ a.transpose(1, 2) + torch.eye(3, dtype=torch.float64)).requires_grad_(True)
    root = sqrtm(spd, 30)
    assert torch.allclose(root @ root, spd, atol=1e-10)
    # the Lyapunov backward is the gradient of the converged square root
    assert torch.autograd.gradcheck(lambda x: sqrtm(x @ x.transpose(1, 2) + torch.eye(3, dtype=x.dtype), 30),
                                    (a.clone().requires_grad_(True),))
    style = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64)
    target = W2Target.of(*moments(style))
    f = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: w2_term(x, target, iterations=30), (f,))
    # at the default iterations, the gradient on real-sized statistics is finite
    f32 = torch.rand(1, 8, 5, 5, requires_grad=True)
    w2_term(f32, W2Target.of(*moments(torch.rand(1, 8, 5, 5)))).sum().backward()
    assert torch.isfinite(f32.grad).all() and f32.grad.abs().sum() > 0


def test_w2_targets_blend_the_moments_of_several_styles():
    torch.manual_seed(0)
    content, s1, s2 = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.rand(1, 3, 6, 10) * 2
    spec = LossSpec(("l1",), ("l1",), (1.0,), "mse", "w2")
    obj = Loss(_Identity(), spec, content=content, style=[s1, s2], style_blend=(0.25, 0.75),
                    content_weight=torch.tensor([1.0]), style_weight=torch.tensor([1.0]), tv_weight=torch.tensor([0.0]))
    (m1, r1), (m2, r2) = moments(s1), moments(s2)
    expected = W2Target.of(0.25 * m1 + 0.75 * m2, 0.25 * r1 + 0.75 * r2)
    t = obj.style_targets["l1"]
    assert torch.allclose(t.mean, expected.mean) and torch.allclose(t.cov, expected.cov)
    assert torch.allclose(t.cov_sqrt @ t.cov_sqrt, t.cov, atol=1e-5)
    x = torch.rand(1, 3, 8, 8)
    assert obj(x)["style"].item() == pytest.approx(w2_term(x, expected).item(), rel=1e-5)


def test_w2_statistics_are_float32_for_bfloat16_features():
    f = (torch.rand(1, 4, 8, 8) * 100).bfloat16()
    mean, srm = moments(f)
    assert mean.dtype == srm.dtype == torch.float32
    assert w2_term(f, W2Target.of(*moments(torch.rand(1, 4, 8, 8) * 100))).dtype == torch.float32


# --- the total-variation forms ---------------------------------------------------------------------

def test_tv_forms_on_a_step_edge():
    # 4 x 4, 3 channels, a vertical edge of height 1 between columns 1 and 2: of the 3 x 4 horizontal
    # neighbour pairs per channel, the 4 across the edge differ by 1; no vertical pair differs.
    x = torch.zeros(1, 3, 4, 4)
    x[..., :, 2:] = 1.0
    assert tv_term(x, "mse").item() == pytest.approx(4 / 12)  # mean dx^2 = 4/12, mean dy^2 = 0
    assert tv_term(x, "l1").item() == pytest.approx(4 / 12)
    # sum over rows 0..2, columns 0..2: the edge pair (column 1) in 3 rows x 3 channels, halved
    assert tv_term(x, "sum").item() == pytest.approx(0.5 * 9)
    # stencil, padded to 6 x 6 by replication: horizontal pairs across the edge: 4 rows of 4 pixels
    # (16 of 48 pixel-channel values per channel: 4/16); the diagonals: each of the 5 x 5 pairs, those
    # crossing the edge are the 5 rows x 1 column in both diagonal directions (5/25 each)
    h, v, d, a = 4 / 16, 0.0, 5 / 25, 5 / 25
    assert tv_term(x, "stencil").item() == pytest.approx(2 * (h / 3 + v / 3 + d / 12 + a / 12))


def test_tv_forms_on_a_ramp():
    # x[i, j] = 0.1 j: every horizontal difference 0.1, every vertical one 0
    x = (0.1 * torch.arange(5.0)).expand(2, 3, 4, 5).clone()
    assert tv_term(x, "mse").tolist() == pytest.approx([0.01, 0.01])
    assert tv_term(x, "l1").tolist() == pytest.approx([0.1, 0.1])
    assert tv_term(x, "sum").tolist() == pytest.approx([0.5 * 3 * 3 * 4 * 0.01] * 2)  # 3 channels x 3 rows x 4 columns
    # stencil: the image padded to 6 x 7 repeats its edge columns; of the 5 horizontal pairs per row
    # the last (into the padding) is 0: 4/5 of 0.01; of the 6 column pairs of a diagonal, the first and
    # the last are: 4/6 of 0.01
    h, d = 0.01 * 4 / 5, 0.01 * 4 / 6
    assert tv_term(x, "stencil").tolist() == pytest.approx([2 * (h / 3 + d / 12 + d / 12)] * 2)


def test_tv_sum_gradient_is_neural_styles():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 5, 6, requires_grad=True)
    tv_term(x, "sum").sum().backward()
    # jcjohnson/neural-style's TVLoss:updateGradInput, strength 1
    v = x.detach()
    x_diff = v[:, :, :-1, :-1] - v[:, :, :-1, 1:]
    y_diff = v[:, :, :-1, :-1] - v[:, :, 1:, :-1]
    grad = torch.zeros_like(v)
    grad[:, :, :-1, :-1] += x_diff + y_diff
    grad[:, :, :-1, 1:] -= x_diff
    grad[:, :, 1:, :-1] -= y_diff
    assert torch.allclose(x.grad, grad, atol=1e-6)


def test_tv_stencil_is_crowsonkbs_formula_per_image():
    torch.manual_seed(0)
    batch = torch.rand(2, 3, 5, 7)
    for b in range(2):
        # crowsonkb's TVLoss, written out as in style_transfer.py
        p = torch.nn.functional.pad(batch[b:b + 1], (1, 1, 1, 1), "replicate")
        s1, s2, s3, s4 = slice(1, -1), slice(2, None), slice(None, -1), slice(1, None)
        ref = 2 * ((p[..., s1, s2] - p[..., s1, s1]).pow(2).mean() / 3 + (p[..., s2, s1] - p[..., s1, s1]).pow(2).mean() / 3
                   + (p[..., s4, s4] - p[..., s3, s3]).pow(2).mean() / 12 + (p[..., s4, s3] - p[..., s3, s4]).pow(2).mean() / 12)
        assert tv_term(batch, "stencil")[b].item() == pytest.approx(ref.item(), rel=1e-6)


def test_tv_form_reaches_the_objective():
    x = torch.zeros(1, 3, 4, 4)
    x[..., :, 2:] = 1.0
    for form in ("mse", "l1", "sum", "stencil"):
        spec = LossSpec(("l1",), (), (), "mse", "mse", form)
        obj = Loss(_Identity(), spec, content=x, style=None, content_weight=torch.tensor([0.0]),
                        style_weight=torch.tensor([0.0]), tv_weight=torch.tensor([2.0]))
        assert obj(x)["total"].item() == pytest.approx(2 * tv_term(x, form).item())


def test_w2_of_a_flat_style_is_finite():
    flat = torch.full((1, 4, 6, 6), 2.0)  # features that do not vary: a zero covariance
    f = torch.rand(1, 4, 6, 6, requires_grad=True)
    t = w2_term(f, W2Target.of(*moments(flat)))
    t.sum().backward()
    assert torch.isfinite(t).all() and torch.isfinite(f.grad).all()
