"""The Gatys et al. objective: content, style (Gram) and total-variation terms, per image, named.

Batch-first: images are [B,3,H,W]; every term comes back as a [B] tensor, and the loss weights
are [B] tensors, so compatible sweep points can share one pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from nst.errors import InputError

CONTENT_FORMS = ("mse", "paper")
STYLE_FORMS = ("mse", "paper")


@dataclass(frozen=True)
class ObjectiveSpec:
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    style_layer_weights: tuple[float, ...]  # one per style layer, summing to 1
    content_form: str  # "mse" | "paper"
    style_form: str  # "mse" | "paper"


def layer_weights(key: str, layers: list[str], weights: list[float] | None) -> tuple[float, ...]:
    """Equal weights summing to 1 by default (Gatys et al.: w_l = 1/5 for five layers)."""
    if not layers:
        return ()
    if weights is None:
        return tuple(1.0 / len(layers) for _ in layers)
    if len(weights) != len(layers):
        raise InputError(key, f"has {len(weights)} values but there are {len(layers)} style layers; give one weight per layer, or null for equal weights")
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


def content_term(f: torch.Tensor, p: torch.Tensor, form: str) -> torch.Tensor:
    """[B,C,H,W] features vs target -> [B]."""
    d = (f.float() - p.float()).flatten(1)  # [B,C*H*W]
    if form == "paper":
        return 0.5 * d.pow(2).sum(1)  # Gatys et al. eq. 1: 1/2 sum (F - P)^2
    return d.pow(2).mean(1)


def style_term(f: torch.Tensor, target_gram: torch.Tensor, form: str) -> torch.Tensor:
    """[B,C,H,W] features vs a target Gram [1 or B,C,C] -> [B]."""
    b, c, h, w = f.shape
    if form == "paper":
        # Gatys et al. eq. 4: E_l = 1/(4 N^2 M^2) sum (G - A)^2, N = C, M = H*W; the target Gram
        # comes from a style image of (about) the same pixel count, as both style sizings give.
        g = gram(f, normalise=False)
        return (g - target_gram).pow(2).sum((1, 2)) / (4.0 * c**2 * (h * w) ** 2)
    g = gram(f, normalise=True)
    return (g - target_gram).pow(2).mean((1, 2))


def tv_term(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels, [B,3,H,W] -> [B]. Not in Gatys et al."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return dh + dw


class Objective:
    """Keeps the targets; called on images [B,3,H,W], returns named [B] terms, weighted in one place."""

    def __init__(self, extractor, spec: ObjectiveSpec, *, content: torch.Tensor | None, style: torch.Tensor | list | None,
                 content_weight: torch.Tensor, style_weight: torch.Tensor, tv_weight: torch.Tensor,
                 style_blend: tuple[float, ...] = (1.0,)):
        self.extractor, self.spec = extractor, spec
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight
        # Whether any trial has a TV term, read once here (a host synchronisation when the weights are on a
        # GPU) rather than at every evaluation.
        self.tv_on = bool((tv_weight > 0).any())
        with torch.no_grad():
            self.content_targets = {}
            if spec.content_layers:
                assert content is not None, "content layers need a content image"
                feats = extractor(content)
                self.content_targets = {l: feats[l].detach() for l in spec.content_layers}
            self.style_targets = {}
            if spec.style_layers:
                assert style is not None, "style layers need a style image"
                styles = [style] if isinstance(style, torch.Tensor) else list(style)
                assert len(styles) == len(style_blend), (len(styles), style_blend)
                # Several style images: their Gram matrices blended by weight (the weights sum to 1).
                for image, w in zip(styles, style_blend):
                    feats = extractor(image)
                    for l in spec.style_layers:
                        g = w * gram(feats[l], normalise=spec.style_form != "paper").detach()
                        self.style_targets[l] = self.style_targets[l] + g if l in self.style_targets else g

    def reweighted(self, *, content_weight: torch.Tensor, style_weight: torch.Tensor, tv_weight: torch.Tensor) -> Objective:
        """The same targets under other loss weights: trials of a batch with the same images and layers share them."""
        other = copy.copy(self)
        other.content_weight, other.style_weight, other.tv_weight = content_weight, style_weight, tv_weight
        other.tv_on = bool((tv_weight > 0).any())  # once per batch, not per evaluation (see __init__)
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
        for layer, w in zip(self.spec.style_layers, self.spec.style_layer_weights):
            t = style_term(feats[layer], self.style_targets[layer], self.spec.style_form)
            terms[f"style/{layer}"] = t
            style = style + w * t
        tv = tv_term(image) if self.tv_on else zero
        terms["content"], terms["style"], terms["tv"] = content, style, tv
        # The one place where the loss weights are applied.
        terms["total"] = self.content_weight * content + self.style_weight * style + self.tv_weight * tv
        return terms
