"""Neural Neighbor Style Transfer, the optimisation variant (NNST-Opt; Kolkin, Kučera, Paris, Sýkora,
Shechtman, Shakhnarovich, ECCV 2022), as engine pieces on batches of trials [B,...], and `stylize`, a
plain loop that composes them.

The method: at each scale (coarse to fine) every content hypercolumn is replaced by its nearest style
hypercolumn under centred cosine distance; the image, held as a Laplacian pyramid, is then moved by
Adam towards those fixed targets (1 - cosine per position). A final pass matches each layer on its own,
at every step. The colour post-process is `nst.color.nnst_color`.

Follows nkolkin13/NeuralNeighborStyleTransfer at commit 290976a: styleTransfer.py (the defaults),
utils/stylize.py (produce_stylization, replace_features, optimize_output_im), utils/featureExtract.py
(phi_cat, extract_feats, get_feat_norms), utils/distance.py (pairwise_distances_cos_center),
utils/imagePyramid.py (dec_lap_pyr, syn_lap_pyr), pretrained/vgg.py.

Layers. The peer uses torchvision's VGG-16 (RGB, ImageNet mean/std), blocks 1-4; here the Caffe
VGG-19 (offline; its spec owns its preprocessing). nst's fair ruler measures relu1_2, relu2_2,
relu3_4 and relu4_4 (nst.metrics.SWD_LAYERS), with a content measure at relu3_4 and relu4_4, and no
recipe may optimise those layers:

| VGG-16 (peer) | VGG-19 here | why |
| --- | --- | --- |
| relu1_1 | relu1_1 | same layer |
| relu1_2 | (none) | VGG-19's relu1_2 is the ruler's; relu1_1 already stands for block 1 |
| relu2_1 | relu2_1 | same layer |
| relu2_2 | (none) | VGG-19's relu2_2 is the ruler's; relu2_1 already stands for block 2 |
| relu3_1 | relu3_1 | same layer |
| relu3_2 | relu3_2 | same layer |
| relu3_3 | relu3_3 | the last conv of VGG-16's block 3; VGG-19's last, relu3_4, is the ruler's |
| relu4_1 | relu4_1 | same layer |
| relu4_2 | relu4_2 | same layer |
| relu4_3 | relu4_3 | the last conv of VGG-16's block 4; VGG-19's last, relu4_4, is the ruler's |

So the hypercolumn has 8 layers (64+128+256*3+512*3 = 2496 channels) instead of 10 (2688): blocks 1
and 2 weigh half as much in the cosine as in the peer's. `NNSTParams.layers` holds the set as data.
relu1_1, relu2_1, relu3_3 and relu4_3 each feed a ruler layer through one convolution. The per-scale
passes match them position by position against fixed targets (a feature match, as a content loss);
the final pass by nearest neighbours, a distribution distance: `final_layers=CLEAR_OF_RULER` keeps it
off them (and off blocks 1-2 altogether), at a cost to the picture not yet measured.

Could not be matched, or departs on purpose:
- The network (above), and with it the features' magnitudes: each layer is divided by its channel
  count as in the peer, but the Caffe layers' relative scales differ from torchvision's.
- Pooling is max, as VGG-16's; the network is run by nst.features.FeatureExtractor.
- The content features are centred by the mean of all of the content's hypercolumns. The peer centres
  each chunk of rows by the chunk's own mean, so its matches depend on the chunk size (a memory
  setting); here chunked and unchunked searches agree.
- The peer's final pass, for a layer no larger than 64 px per side, compares the style's features
  with the previous layer's sampled output (a stale variable, `cs_tmp`, viewed with the layer's
  channel count); here it uses the layer's own. So at its default 512 px the peer's relu4_x terms
  compare the style's relu4 features with relu3_3's values regrouped (and below 512 px more layers are
  affected): its final pass as run matches blocks 1-3 only, and is gentler on the content than the pass
  it describes, which is the one here. `final_layers` picks the layers, so both can be tried
  (blocks 1-3: relu1_1, relu2_1, relu3_1, relu3_2, relu3_3).
- Each scale ends with the pyramid after Adam's last step; the peer re-decomposes the image from
  before its last step.
- The peer's 8-level pyramid and 4 scales assume a 512 px image; at small sizes the pyramid's levels
  are capped so the coarsest level keeps at least 1 px, and the scales default to the peer's rule
  (the coarsest scale's long side 64 px: 512 -> 4, 1024 -> 5) with at least one.
- The optional self-similarity content loss (`--content_loss`, off by default upstream; its README
  says it causes periodic artefacts) is not ported.
- Randomness (the final pass's offsets) comes from each trial's own torch.Generator, not Python's
  global `random`.
- Adam is written out per trial (torch's update rule, per-trial lr/betas/eps), so trials of a batch
  may differ in them; it is element-wise, as torch's, so a trial in a batch takes the steps it takes
  alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from nst.color import nnst_color
from nst.errors import InputError
from nst.features import evaluation_flops, layer_names, layer_table
from nst.images import from_laplacian_pyramid, laplacian_pyramid

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu3_2", "relu3_3", "relu4_1", "relu4_2", "relu4_3")
# The final pass's distance (each output vector to its nearest style vector) is a distribution
# distance: matched one convolution below a ruler layer it pins much of the ruler's distribution there
# (relu1_1, relu2_1, relu3_3 and relu4_3 feed relu1_2, relu2_2, relu3_4 and relu4_4). These layers are
# neither the ruler's nor below them: a `final_layers` for a recipe judged by that ruler.
CLEAR_OF_RULER = ("relu3_1", "relu3_2", "relu4_1", "relu4_2")

Extractor = Callable[[torch.Tensor], dict[str, torch.Tensor]]  # [B,3,H,W] RGB [0,1] -> {layer: [B,C,h,w]}


@dataclass(frozen=True)
class NNSTParams:
    """The peer's defaults (styleTransfer.py, produce_stylization, optimize_output_im)."""

    alpha: float = 0.75  # share of the content image in the features searched (1: all content); per trial
    lr: float = 2e-3  # Adam, per trial
    betas: tuple[float, float] = (0.9, 0.999)  # per trial
    eps: float = 1e-8  # per trial
    steps: int = 200  # Adam steps per scale
    final_steps: int = 200  # Adam steps of the final, per-layer pass
    scales: int | None = None  # None: the coarsest scale's long side is 64 px (512 -> 4 scales)
    pyramid_levels: int = 8  # Laplacian levels of the image (capped so the coarsest keeps >= 1 px)
    rotations: bool = True  # search the style rotated by 90, 180 and 270 degrees too
    layers: tuple[str, ...] = LAYERS
    final_layers: tuple[str, ...] | None = None  # the final pass's layers; None: `layers`
    hypercolumn_stride: int = 4  # hypercolumns at 1/4 of the image's side
    final_max_side: int = 64  # the final pass samples each layer with a stride down to this side
    chunk_elements: int = 128 ** 4  # distance-matrix entries computed at once (the peer's 128^2 rows per 128^2 style vectors)


# Fields that may differ between the trials of one batch; the others shape the computation and must agree.
PER_TRIAL = ("alpha", "lr", "betas", "eps")


@dataclass
class NNSTResult:
    image: torch.Tensor  # [B,3,H,W] in [0,1], after the colour post-process when it was asked for
    raw: torch.Tensor  # [B,3,H,W] in [0,1], the optimised image
    history: list[tuple[str, torch.Tensor]]  # (stage, losses [steps,B]) per scale, then "final"


# ---------------------------------------------------------------------------------------------
# Laplacian pyramid (utils/imagePyramid.py): finest detail first, the coarse image last.


def max_pyramid_levels(height: int, width: int) -> int:
    return max(0, int(math.floor(math.log2(min(height, width)))))


def decompose(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The Laplacian pyramid as utils/imagePyramid.py resamples it (bilinear, no align_corners)."""
    return laplacian_pyramid(x, levels, align_corners=False)


def synthesise(pyr: Sequence[torch.Tensor]) -> torch.Tensor:
    return from_laplacian_pyramid(pyr, align_corners=False)


# ---------------------------------------------------------------------------------------------
# Features (utils/featureExtract.py)


def rotations(x: torch.Tensor) -> list[torch.Tensor]:
    """x and its rotations by 90, 180 and 270 degrees, written as the peer writes them."""
    return [x, x.flip(2).transpose(2, 3), x.flip((2, 3)), x.flip(3).transpose(2, 3)]


def hypercolumns(feats: dict[str, torch.Tensor], layers: Sequence[str], size: tuple[int, int]) -> torch.Tensor:
    """[B,sum C,h,w]: each layer divided by its channel count (so that wide layers do not dominate the
    cosine), resized bilinearly to `size`, concatenated in the order given."""
    return torch.cat([F.interpolate(feats[n].float() / feats[n].shape[1], size, mode="bilinear", align_corners=True)
                      for n in layers], 1)


def extract_hypercolumns(extractor: Extractor, image: torch.Tensor, layers: Sequence[str], stride: int) -> torch.Tensor:
    h, w = image.shape[2:]
    return hypercolumns(extractor(image), layers, (h // stride, w // stride))


def style_bank(extractor: Extractor, style: torch.Tensor, layers: Sequence[str], stride: int, rotate: bool) -> torch.Tensor:
    """[B,C,N]: the style's hypercolumns as a bag of vectors, with its rotations' when `rotate` (4N)."""
    images = rotations(style) if rotate else [style]
    return torch.cat([extract_hypercolumns(extractor, im, layers, stride).flatten(2) for im in images], 2)


# ---------------------------------------------------------------------------------------------
# Matching (utils/distance.py, utils/stylize.py: replace_features)


def _centred_unit(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(0, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_centred_cosine(query: torch.Tensor, bank: torch.Tensor, chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of query [N,C], the centred cosine distance to its nearest row of bank [M,C] and
    that row's index ([N], [N]). Each set is centred by its own mean; the distance matrix is computed
    a block of rows at a time, at most `chunk_elements` entries. Differentiable in query and bank."""
    q, b = _centred_unit(query), _centred_unit(bank)
    rows = max(1, chunk_elements // max(1, b.shape[0]))
    dists, idx = [], []
    for start in range(0, q.shape[0], rows):
        d = 1.0 - q[start:start + rows] @ b.T  # [rows,M]
        m = d.min(1)
        dists.append(m.values)
        idx.append(m.indices)
    return torch.cat(dists), torch.cat(idx)


def replace_features(content: torch.Tensor, bank: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    """content [B,C,h,w] with each vector replaced by its nearest (centred cosine) vector of the
    trial's bank [B,C,N] (or [1,C,N] for all)."""
    out = []
    with torch.no_grad():
        for i in range(content.shape[0]):
            ref = bank[i if bank.shape[0] > 1 else 0].T  # [N,C]
            _, idx = nearest_centred_cosine(content[i].flatten(1).T, ref, chunk_elements)
            out.append(ref[idx].T.reshape(content.shape[1:]))
    return torch.stack(out)


def cosine_loss(current: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B]: mean over positions of 1 - cos(current, target), hypercolumns [B,C,h,w] (not centred, as
    the peer's); norms clamped as its get_feat_norms."""
    def unit(x):
        return x / x.pow(2).sum(1, keepdim=True).clamp(1e-8, 1e8).sqrt()
    return (1.0 - (unit(current) * unit(target)).sum(1)).flatten(1).mean(1)


def style_layer_banks(extractor: Extractor, style: torch.Tensor, layers: Sequence[str], rotate: bool) -> dict[str, torch.Tensor]:
    """{layer: [B,C,h',w']}: the style's features per layer at full resolution; with `rotate`, the
    rotations' features turned back and stacked along the height (as the peer's final pass)."""
    images = rotations(style) if rotate else [style]
    per_image = [extractor(im) for im in images]
    out = {}
    for n in layers:
        maps = [f[n].float() for f in per_image]
        maps = [m if k % 2 == 0 else m.transpose(2, 3) for k, m in enumerate(maps)]
        out[n] = torch.cat(maps, 2)
    return out


def feature_splitting_loss(feats: dict[str, torch.Tensor], banks: dict[str, torch.Tensor], layers: Sequence[str],
                           generators: Sequence[torch.Generator], max_side: int, chunk_elements: int) -> torch.Tensor:
    """[B]: summed over layers, the mean over the output's vectors of the centred cosine distance to the
    nearest style vector of the same layer. A layer wider than max_side is sampled on a grid with
    stride side // max_side at a random offset (two draws per layer from the trial's generator, in
    layer order); the style's features on the same grid."""
    losses = []
    for i, gen in enumerate(generators):
        total = feats[layers[0]].new_zeros(())
        for n in layers:
            cur, ref = feats[n][i].float(), banks[n][i if banks[n].shape[0] > 1 else 0]
            side = max(cur.shape[1:])
            if side > max_side:
                stride = side // max_side
                a, b = (int(v) for v in torch.randint(0, stride, (2,), generator=gen))
                cur, ref = cur[:, a::stride, b::stride], ref[:, a::stride, b::stride]
            d, _ = nearest_centred_cosine(cur.flatten(1).T, ref.flatten(1).T, chunk_elements)
            total = total + d.mean()
        losses.append(total)
    return torch.stack(losses)


# ---------------------------------------------------------------------------------------------
# Optimisation (utils/stylize.py: optimize_output_im, produce_stylization)


def _per_trial(params: Sequence[NNSTParams]) -> NNSTParams:
    first = params[0]
    for f in fields(NNSTParams):
        if f.name not in PER_TRIAL and any(getattr(p, f.name) != getattr(first, f.name) for p in params):
            raise InputError(f"nnst.{f.name}", f"must be the same for every trial of a batch "
                                               f"(only {', '.join(PER_TRIAL)} may differ)")
    return first


def check_params(p: NNSTParams, height: int, width: int) -> None:
    """One-line errors, before any work, for settings the method cannot run with."""
    if not 0.0 <= p.alpha <= 1.0:
        raise InputError("nnst.alpha", f"must be between 0 and 1, got {p.alpha}")
    for key, names in (("layers", p.layers), ("final_layers", p.final_layers or ())):
        unknown = [n for n in names if n not in layer_names("vgg19")]
        if unknown:
            valid = ", ".join(layer_names("vgg19"))
            raise InputError(f"nnst.{key}", f"unknown VGG-19 layer(s) {', '.join(unknown)}; valid: {valid}")
    scales = resolve_scales(p, height, width)
    if scales < 1:
        raise InputError("nnst.scales", f"must be at least 1, got {scales}")
    coarse = min(height, width) >> (scales - 1)
    table = layer_table("vgg19")
    deepest = max(layer_names("vgg19").index(n) for n in p.layers)
    pools = sum(kind == "pool" for _, kind, _ in table[:deepest])  # each halves the side
    need = max(2 ** pools, p.hypercolumn_stride)
    if coarse < need:
        raise InputError("nnst.scales", f"{scales} scales: the coarsest of a {width}x{height} image is {coarse} px on its short "
                         f"side; the layers and hypercolumn stride need at least {need} px")


def resolve_scales(p: NNSTParams, height: int, width: int) -> int:
    if p.scales is not None:
        return p.scales
    return max(1, int(math.floor(math.log2(max(height, width) / 64))) + 1)


def optimise_pyramid(pyr: list[torch.Tensor], scale: int, loss_fn: Callable[[torch.Tensor, int], torch.Tensor], steps: int,
              params: Sequence[NNSTParams]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Adam on the pyramid's levels from `scale` down to the coarsest; returns the pyramid re-decomposed
    from the image reached (as the peer does) and the losses [steps,B]. Per trial: lr, betas, eps."""
    levels = [p.detach().clone().requires_grad_(True) for p in pyr[scale:]]
    ref = levels[0]

    def col(vals):
        return ref.new_tensor(vals).view(-1, 1, 1, 1)

    lr, b1, b2 = col([p.lr for p in params]), col([p.betas[0] for p in params]), col([p.betas[1] for p in params])
    eps = col([p.eps for p in params])
    m = [torch.zeros_like(v) for v in levels]
    v2 = [torch.zeros_like(v) for v in levels]
    history = []
    for t in range(1, steps + 1):
        loss = loss_fn(synthesise(levels), t - 1)  # [B]
        grads = torch.autograd.grad(loss.sum(), levels)  # trials share no pixels: the sum separates them
        history.append(loss.detach())
        with torch.no_grad():
            for x, g, mi, vi in zip(levels, grads, m, v2, strict=True):
                mi.mul_(b1).add_((1 - b1) * g)
                vi.mul_(b2).add_((1 - b2) * g * g)
                denom = (vi / (1 - b2 ** t)).sqrt().add_(eps)
                x.sub_(lr / (1 - b1 ** t) * mi / denom)
    with torch.no_grad():
        image = synthesise(levels)
    out = pyr[:scale] + decompose(image, len(pyr) - 1 - scale)
    return out, torch.stack(history) if history else ref.new_zeros(0, ref.shape[0])


def stylize(content: torch.Tensor, style: torch.Tensor, extractor: Extractor, params: NNSTParams | Sequence[NNSTParams],
            generators: Sequence[torch.Generator], *, color: bool = True) -> NNSTResult:
    """B trials at once: content [B,3,H,W], style [B,3,H',W'] or [1,3,H',W'] for all, in [0,1];
    `params` one for all or one per trial (only PER_TRIAL fields may differ); one generator per trial.
    `extractor` must return at least the params' layers and final layers (a FeatureExtractor on the
    Caffe VGG-19, max pooling). `color`: apply nst.color.nnst_color to the result (the peer's default)."""
    B, _, H, W = content.shape
    plist = [params] * B if isinstance(params, NNSTParams) else list(params)
    if len(plist) != B or len(generators) != B:
        raise InputError("nnst", f"{B} trials need {B} params and {B} generators, got {len(plist)} and {len(generators)}")
    if style.shape[0] not in (1, B):
        raise InputError("nnst", f"the style batch ({style.shape[0]}) is neither 1 nor the content's ({B})")
    p = _per_trial(plist)
    for q in plist:
        check_params(q, H, W)
    scales = resolve_scales(p, H, W)
    levels = min(p.pyramid_levels, max_pyramid_levels(H, W), max_pyramid_levels(*style.shape[2:]))
    if levels < scales - 1:
        raise InputError("nnst.scales", f"{scales} scales need {scales - 1} pyramid levels; the images allow {levels}")
    alpha = content.new_tensor([q.alpha for q in plist]).view(B, 1, 1, 1)

    style_pyr, c_pyr = decompose(style, levels), decompose(content, levels)
    s_pyr = decompose(content, levels)
    # Init: the content with its finest levels zeroed, a low-resolution content (the peer: better
    # contrast than a grey start); 3 levels below 1024 px, 2 from 1024 px on.
    zeroed = min(levels, 3 if max(H, W) < 1024 else 2)
    s_pyr = [torch.zeros_like(x) for x in s_pyr[:zeroed]] + s_pyr[zeroed:]

    history = []
    for li, scl in enumerate(reversed(range(scales))):
        style_s, content_s = synthesise(style_pyr[scl:]), synthesise(c_pyr[scl:])
        with torch.no_grad():
            # Search with the content's own detail at this level over the current result's coarser
            # levels, blended with the content (only the content at the coarsest scale).
            a = torch.ones_like(alpha) if li == 0 else alpha
            searched = a * content_s + (1 - a) * synthesise([c_pyr[scl]] + s_pyr[scl + 1:])
            bank = style_bank(extractor, style_s, p.layers, p.hypercolumn_stride, p.rotations)
            target = replace_features(extract_hypercolumns(extractor, searched, p.layers, p.hypercolumn_stride), bank,
                                      p.chunk_elements)

        def hm_loss(image, _step, target=target):
            return cosine_loss(extract_hypercolumns(extractor, image, p.layers, p.hypercolumn_stride), target)

        s_pyr, losses = optimise_pyramid(s_pyr, scl, hm_loss, p.steps, plist)
        history.append((f"scale {li} ({max(content_s.shape[2:])} px)", losses))

    # Final pass: per-layer matching at full resolution against the (full) style.
    final_layers = p.final_layers or p.layers
    with torch.no_grad():
        banks = style_layer_banks(extractor, synthesise(style_pyr), final_layers, p.rotations)

    def fs_loss(image, _step):
        return feature_splitting_loss(extractor(image), banks, final_layers, generators, p.final_max_side, p.chunk_elements)

    s_pyr, losses = optimise_pyramid(s_pyr, 0, fs_loss, p.final_steps, plist)
    history.append(("final", losses))
    with torch.no_grad():
        raw = synthesise(s_pyr).clamp(0, 1)
        image = nnst_color(content, style, raw) if color else raw
    return NNSTResult(image=image, raw=raw, history=history)


# ---------------------------------------------------------------------------------------------
# Cost


def nnst_flops(params: NNSTParams, height: int, width: int, style_height: int, style_width: int,
               batch: int = 1) -> dict[str, int]:
    """Floating-point operations of one `stylize` run, by part. Network passes: nst.features'
    convolution count (an optimisation step is a forward and an input-gradient backward, 2 x forward;
    a target extraction is a forward). Losses: the matrix products of the distance matrices, 2*N*M*C
    forward and as much again backward for the query's gradient (the bank is fixed); the cosine loss,
    resizes, pyramid and colour post-process are O(pixels x channels) and not counted."""
    final_layers = params.final_layers or params.layers
    deepest = max(params.layers, key=layer_names("vgg19").index)
    deepest_final = max(final_layers, key=layer_names("vgg19").index)
    channels = {n: c for n, _, c in layer_table("vgg19")}
    hc_channels = sum(channels[n] for n in params.layers)
    rot = 4 if params.rotations else 1
    scales = resolve_scales(params, height, width)
    parts = {"network_steps": 0, "network_targets": 0, "nn_search": 0, "final_distances": 0}

    def fwd(h, w, last=deepest):
        return evaluation_flops("vgg19", last, w, h) // 2

    for scl in reversed(range(scales)):
        h, w, sh, sw = height >> scl, width >> scl, style_height >> scl, style_width >> scl
        parts["network_steps"] += params.steps * 2 * fwd(h, w)
        parts["network_targets"] += rot * fwd(sh, sw) + fwd(h, w)
        n = (h // params.hypercolumn_stride) * (w // params.hypercolumn_stride)
        m = rot * (sh // params.hypercolumn_stride) * (sw // params.hypercolumn_stride)
        parts["nn_search"] += 2 * n * m * hc_channels
    parts["network_steps"] += params.final_steps * 2 * fwd(height, width, deepest_final)
    parts["network_targets"] += rot * fwd(style_height, style_width, deepest_final)
    sizes = _layer_sizes(final_layers, height, width)
    style_sizes = _layer_sizes(final_layers, style_height, style_width)
    for layer in final_layers:
        (h, w), (sh, sw) = sizes[layer], style_sizes[layer]
        stride = max(h, w) // params.final_max_side if max(h, w) > params.final_max_side else 1
        q = math.ceil(h / stride) * math.ceil(w / stride)
        m = rot * math.ceil(sh / stride) * math.ceil(sw / stride)
        parts["final_distances"] += params.final_steps * 4 * q * m * channels[layer]
    return {k: v * batch for k, v in parts.items()}


def _layer_sizes(layers: Sequence[str], height: int, width: int) -> dict[str, tuple[int, int]]:
    out, h, w = {}, height, width
    for name, kind, _ in layer_table("vgg19"):
        if kind == "pool":
            h, w = h // 2, w // 2
        if name in layers:
            out[name] = (h, w)
    return out
