"""The losses agree with their reference formulas, per image in a batch."""

import pytest
import torch

from nst.objective import Objective, ObjectiveSpec, content_term, gram, layer_weights, style_term, tv_term
from nst.errors import InputError


def test_gram_matches_the_definition():
    f = torch.randn(2, 3, 4, 5)
    g = gram(f, normalise=False)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                ref = sum(float(f[b, i, y, x] * f[b, j, y, x]) for y in range(4) for x in range(5))
                assert g[b, i, j].item() == pytest.approx(ref, rel=1e-5)
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
    spec = ObjectiveSpec(("l1",), ("l1", "l2"), (0.5, 0.5), "mse", "mse")
    w = lambda *v: torch.tensor(v)  # noqa: E731
    obj = Objective(_Identity(), spec, content=content, style=style, content_weight=w(1.0, 2.0),
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
