"""OkLab, and the colour post-process of Neural Neighbor Style Transfer (Kolkin et al., ECCV 2022): the
output keeps its own luminance, takes the content's chroma mapped by ZCA to the style's chroma mean and
covariance, and that chroma is smoothed by a bilateral filter guided by the luminance.

On tensors [B,3,H,W], RGB in [0,1]; each image of a batch is transformed with its own statistics.

Follows nkolkin13/NeuralNeighborStyleTransfer at commit 290976a: utils/colorization.py
(linear_2_oklab, oklab_2_linear, filter, clamp_range, color_match) and utils/zca.py (zca, zca_tensor).
Departures:
- The peer's zca_tensor flattens the whole batch into one set of pixels; here each image of the batch
  is matched to its own style (one trial's colours never depend on another's).
- Eigen-decompositions in float64 with torch.linalg.eigh instead of float32 torch.svd of the
  (symmetric) covariances; the same 1e-4 ridge.
- As in the peer, sRGB values go into OkLab's matrices without the sRGB transfer curve (the peer calls
  them "linear"); kept, since the post-process is defined by what the peer computes.
- The peer's last lines build Laplacian pyramids of the result and never use them; not ported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Ottosson's OkLab (https://bottosson.github.io/posts/oklab/), the constants the peer uses.
_RGB_TO_LMS = ((0.4121656120, 0.5362752080, 0.0514575653),
               (0.2118591070, 0.6807189584, 0.1074065790),
               (0.0883097947, 0.2818474174, 0.6302613616))
_LMS_TO_LAB = ((0.2104542553, 0.7936177850, -0.0040720468),
               (1.9779984951, -2.4285922050, 0.4505937099),
               (0.0259040371, 0.7827717662, -0.8086757660))
_LAB_TO_LMS = ((1.0, 0.3963377774, 0.2158037573),
               (1.0, -0.1055613458, -0.0638541728),
               (1.0, -0.0894841775, -1.2914855480))
_LMS_TO_RGB = ((4.0767245293, -3.3072168827, 0.2307590544),
               (-1.2681437731, 2.6093323231, -0.3411344290),
               (-0.0041119885, -0.7034763098, 1.7068625689))

# Styles whose chroma covariance is below this are treated as grey (the peer's threshold): their
# chroma cannot be whitened, so the output's own colours are moment-matched instead.
GREY_STYLE_COVARIANCE = 6e-5


def _mix(x: torch.Tensor, m: tuple[tuple[float, float, float], ...]) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", x.new_tensor(m), x)


def rgb_to_oklab(x: torch.Tensor) -> torch.Tensor:
    lms = _mix(x.clamp(0, 1), _RGB_TO_LMS)
    return _mix(lms.pow(1.0 / 3.0), _LMS_TO_LAB)  # [B,3,H,W]: L, a, b


def oklab_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return _mix(_mix(x, _LAB_TO_LMS).pow(3), _LMS_TO_RGB).clamp(0, 1)


def _sqrt_and_inverse(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    vals, vecs = torch.linalg.eigh(cov)
    s = vals.clamp(1e-8, 1e8).sqrt()
    return vecs @ torch.diag(s) @ vecs.T, vecs @ torch.diag(1 / s) @ vecs.T


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and covariance [D,D] (divided by N, as the peer's) of the rows of x [N,D], in float64."""
    x = x.double()
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / x.shape[0]


# The peer's ridge on both covariances. OkLab chroma variances of photographs and paintings are 1e-4 to
# 1e-3, so it is not negligible: a content whose chroma varies little along some direction is whitened
# only partly there, and the result has less than the style's variance along it.
ZCA_RIDGE = 1e-4


def zca(content: torch.Tensor, style: torch.Tensor, ridge: float = ZCA_RIDGE) -> torch.Tensor:
    """content [N,D] whitened and recoloured so that its mean is the style's [M,D], and its covariance
    the style's as the ridge tends to 0."""
    mu_c, cov_c = moments(content)
    mu_s, cov_s = moments(style)
    eye = ridge * torch.eye(cov_c.shape[0], dtype=cov_c.dtype, device=cov_c.device)
    _, whiten = _sqrt_and_inverse(cov_c + eye)
    color, _ = _sqrt_and_inverse(cov_s + eye)
    out = (content.double() - mu_c) @ (color @ whiten).T + mu_s  # symmetric matrices: ZCA, no rotation
    return out.to(content.dtype)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).T  # [C,H,W] -> [H*W, C]


def guided_chroma_filter(lab: torch.Tensor, iterations: int = 5, sharpness: float = 5.0) -> torch.Tensor:
    """The chroma (a, b) of lab [B,3,H,W] averaged over 3x3 neighbourhoods `iterations` times, each
    neighbour weighted by exp(-|dL| * sharpness)^2 of its luminance difference (L itself unchanged):
    colour spreads along surfaces of equal lightness and stops at edges."""
    h, w = lab.shape[2:]
    lum, chroma = lab[:, :1], lab[:, 1:]
    lum_pad = F.pad(lum, (1, 1, 1, 1), mode="replicate")
    weights = [torch.exp(-(lum - lum_pad[:, :, i:i + h, j:j + w]).abs() * sharpness).pow(2)
               for i in range(3) for j in range(3)]  # the guide stays fixed across iterations
    weight = torch.stack(weights)  # [9,B,1,H,W]
    cur = chroma
    for _ in range(iterations):
        pad = F.pad(cur, (1, 1, 1, 1), mode="replicate")
        shifted = torch.stack([pad[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)])  # [9,B,2,H,W]
        cur = (shifted * weight).sum(0) / weight.sum(0)
    return torch.cat([lum, cur], 1)


def _clamp_to_range(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Each channel of x [3,H,W] clamped to that channel's range in ref [3,H',W']."""
    lo, hi = ref.flatten(1).min(1).values, ref.flatten(1).max(1).values
    return torch.maximum(torch.minimum(x, hi.view(3, 1, 1)), lo.view(3, 1, 1))


def nnst_color(content: torch.Tensor, style: torch.Tensor, output: torch.Tensor, *, moment_only: bool = False,
               filter_iterations: int = 5, ridge: float = ZCA_RIDGE) -> torch.Tensor:
    """The output [B,3,H,W] recoloured: its luminance, clamped to the style's range, with the content's
    chroma ZCA-matched to the style's and filtered along the luminance (the peer's color_match).
    For a grey style, or with moment_only, the output's own L, a, b are ZCA-matched to the style's
    instead, unfiltered. `style` may hold one image for the whole batch. filter_iterations: the peer's 5;
    0 leaves the ZCA-matched chroma as it is. Colours outside the RGB cube are clipped to it."""
    with torch.no_grad():
        lab = nnst_color_oklab(rgb_to_oklab(content), rgb_to_oklab(style), rgb_to_oklab(output),
                               moment_only=moment_only, filter_iterations=filter_iterations, ridge=ridge)
        return oklab_to_rgb(lab)


def nnst_color_oklab(lab_c: torch.Tensor, lab_s: torch.Tensor, lab_o: torch.Tensor, *, moment_only: bool,
                     filter_iterations: int, ridge: float) -> torch.Tensor:
    """nnst_color in OkLab, before the clipping to the RGB cube."""
    out = []
    for b in range(lab_o.shape[0]):
        c, s, o = lab_c[b], lab_s[b if lab_s.shape[0] > 1 else 0], lab_o[b]
        new = _clamp_to_range(o, s)
        _, cov_s = moments(_pixels(s))
        if moment_only or cov_s[1:, 1:].abs().max() < GREY_STYLE_COVARIANCE:
            new = torch.cat([new[:1], o[1:]], 0)
            new = zca(_pixels(new), _pixels(s), ridge).T.reshape(new.shape)
        else:
            chroma = zca(_pixels(c[1:]), _pixels(s[1:]), ridge).T.reshape(c[1:].shape)
            new = guided_chroma_filter(torch.cat([new[:1], chroma], 0).unsqueeze(0), filter_iterations)[0]
        out.append(_clamp_to_range(new, s))
    return torch.stack(out)
