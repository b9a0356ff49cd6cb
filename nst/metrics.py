"""Standardised metrics: one fixed evaluator scores every final image, whatever the trial's settings.

Trials differ in layers, loss forms and weights, so their own losses are on different scales.
Here every image is compared by the same yardstick: VGG-19 with the Caffe weights, average pooling,
the paper's layers (content conv4_2; style conv1_1 ... conv5_1, equal weights), MSE forms, plus
PSNR and SSIM against the content image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nst.features import FeatureExtractor, get_weights_spec
from nst.objective import content_term, gram, style_term

CONTENT_LAYERS = ("conv4_2",)
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
_evaluators: dict[str, FeatureExtractor] = {}  # one per device, reused across the trials of a sweep


def _evaluator(device: torch.device) -> FeatureExtractor:
    key = str(device)
    if key not in _evaluators:
        spec = get_weights_spec("vgg19", "caffe")
        _evaluators[key] = FeatureExtractor("vgg19", spec, list(CONTENT_LAYERS + STYLE_LAYERS), "avg", device)
    return _evaluators[key]


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """[1,3,H,W] in [0,1]; on 8-bit values, as images are saved."""
    x, y = (x * 255).round(), (y * 255).round()
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5) over the RGB channels."""
    c1, c2 = 0.01**2, 0.03**2
    size = min(11, x.shape[-1], x.shape[-2])
    coords = torch.arange(size, dtype=torch.float32, device=x.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()  # [3,1,k,k], depthwise

    def blur(t):
        return F.conv2d(t, window, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


@torch.no_grad()
def standard_metrics(final: torch.Tensor, content: torch.Tensor, style: torch.Tensor | None,
                     style_blend: tuple[float, ...] = (1.0,)) -> dict[str, float]:
    """final, content: [1,3,H,W]; style: [1,3,h,w], a list of them (blended by style_blend), or None.
    All in [0,1], on one device. Scored in fp32 whatever the trial's precision (TF32 off meanwhile)."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        return _standard_metrics(final, content, style, style_blend)
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def _standard_metrics(final, content, style, style_blend) -> dict[str, float]:
    ev = _evaluator(final.device)
    f_final, f_content = ev(final), ev(content)
    out = {
        "content_distance": float(sum(content_term(f_final[l], f_content[l], "mse") for l in CONTENT_LAYERS) / len(CONTENT_LAYERS)),
        "psnr": psnr(final, content),
        "ssim": ssim(final.float(), content.float()),
    }
    if style is not None and len(style):
        styles = [style] if isinstance(style, torch.Tensor) else list(style)
        feats = [ev(s) for s in styles]
        target = {l: sum(w * gram(f[l], True) for f, w in zip(feats, style_blend)) for l in STYLE_LAYERS}
        out["style_distance"] = float(sum(style_term(f_final[l], target[l], "mse") for l in STYLE_LAYERS) / len(STYLE_LAYERS))
    return out
