"""STROTSS (Kolkin, Salavon & Shakhnarovich, CVPR 2019): style transfer by relaxed optimal transport and
self-similarity, as batched engine pieces over a leading trial dimension B.

Followed: nkolkin13/STROTSS at 9a1543a36901cf744d3afbba6d8576a64de73f17 (styleTransfer.py: the scales,
the init and the content-weight schedule; st_helper.py: the per-scale RMSprop loop and the resampling;
stylize_objectives.py: the objective and the bilinear hypercolumn sampling; contextual_loss.py: REMD,
the moment loss, the self-similarity loss; pyr_lap.py: the Laplacian pyramid; utils.py: the YUV basis),
and the single-file futscdav/strotss at 796900cb69153aa6ab9b4264ddebf52e78f9d42b (strotss.py), which
is the same method without spatial guidance.

Pieces, each usable alone:
- `decompose` / `synthesise`: the image as a Laplacian pyramid, the levels being the parameters;
- `OutputSampler` and `style_bank`: hypercolumns at random positions (bilinear, the same positions in
  every layer; each trial's positions drawn from its own `torch.Generator`), and the fixed bank of
  style hypercolumns drawn once per scale;
- `remd`, `moment_loss` (with the style's moments cached in `StyleStats`), `palette_remd`,
  `self_similarity_loss`, and `objective`, which combines them with the content weight alpha;
- `Schedule` (the peer's defaults as data), `initial_image` / `next_scale_image`, `rmsprop_step`;
- `stylize`: a minimal end-to-end loop over a batch, plain PyTorch;
- `step_flops` / `run_flops`: the cost of a step and of a run, the losses' work counted with the network's.

Layers. The peer's hypercolumn is RGB and torchvision VGG-16 at feature indices [1,3,6,8,11,13,15,22,29].
nst's ruler measures relu1_2, relu2_2, relu3_4, relu4_4 of VGG-19 (nst.metrics: SWD_LAYERS and the
self-similarity layers), and its guard (tests/test_ruler.py) refuses a distribution distance, which REMD
is, on those layers or one convolution below them (relu1_1, relu2_1, relu3_3, relu4_3) unless the peer's
own layer forces it. The rule used: a peer layer keeps its VGG-19 name where that layer is free; a block's
last layer goes to the deepest free layer of the VGG-19 block; a layer with no free place is dropped.

| VGG-16 (peer) | VGG-19 here | why                                                                        |
| ------------- | ----------- | -------------------------------------------------------------------------- |
| RGB           | RGB         | the image itself, as the peer                                              |
| relu1_1       | relu1_1     | the peer's own layer; one convolution below relu1_2, block 1 has no other  |
| relu1_2       | (dropped)   | a ruler layer                                                              |
| relu2_1       | relu2_1     | the peer's own layer; one convolution below relu2_2, block 2 has no other  |
| relu2_2       | (dropped)   | a ruler layer                                                              |
| relu3_1       | relu3_1     | same layer                                                                 |
| relu3_2       | relu3_2     | same layer                                                                 |
| relu3_3       | (dropped)   | block 3's last: relu3_4 is the ruler's, relu3_3 feeds it, relu3_2 is in   |
| relu4_3       | relu4_2     | block 4's last: relu4_4 is the ruler's, relu4_3 feeds it; the deepest free |
| relu5_3       | relu5_4     | block 5's last, to VGG-19's last (block 5 is not measured)                 |

relu1_1 and relu2_1 stay because without them the hypercolumn has nothing finer than relu3_1 but the
RGB: every layer of VGG-19's blocks 1 and 2 is either the ruler's or one convolution below it. A recipe
built on these layers needs them named, with that reason, in the ruler guard's allowances (as
crowsonkb's relu1_1 and relu2_1 are). Dropping layers rather than duplicating others keeps each
remaining layer's share of the cosine distance; the hypercolumn has 1731 channels instead of 2179.
`PEER_LAYERS` is the peer's set by name on VGG-19 (relu1_2 and relu2_2 kept), for a variant that
measures what the deviation costs; it touches the ruler, so a result from it must be judged with those
layers left out.

Not matched, and why:
- the network: the Caffe VGG-19 (offline) instead of torchvision's VGG-16 (not downloadable here). Its
  features are about 255/0.226 ~ 58x larger (inputs in [0,255] less the mean against ImageNet-normalised
  ones); they are divided by that (`FEATURE_SCALE`) so that the moment loss, which is not scale-free,
  weighs against REMD about as the peer's does. Exact only for the image's RGB channels.
- images are resized with antialiased bilinear interpolation (the peer: plain bilinear, which aliases at
  the coarse scales);
- the style bank: one forward of the style per scale and five draws of 1000 positions from it; the peer
  runs the network five times on the same image for the same five draws (the same distribution);
- cosine distances divide by max(norm, 1e-8): the peer divides by the norm, so a black pixel in the
  palette term (YUV 0) makes a NaN there;
- no spatial guidance (regions, point correspondences): futscdav's port drops it too;
- RMSprop is written out elementwise (`rmsprop_step`, torch's formula) so that each trial has its own lr
  and state; the peer's torch.optim.RMSprop computes the same thing for one trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from nst.errors import InputError
from nst.features import IMAGENET_STD, FeatureExtractor, evaluation_flops, layer_table
from nst.images import from_laplacian_pyramid, laplacian_pyramid

HYPERCOLUMN_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu3_2", "relu4_2", "relu5_4")
PEER_LAYERS: tuple[str, ...] = ("relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3", "relu4_3", "relu5_3")
# Caffe features divided by 255 / mean ImageNet std: the input-scale ratio between the Caffe and the
# torchvision networks, so that feature magnitudes are near those the peer's loss balance was set on.
FEATURE_SCALE: dict[str, float] = {"caffe": sum(IMAGENET_STD) / 3 / 255.0, "torchvision": 1.0}
# utils.py's YUV basis (orthonormal rows: luminance along the grey axis, two chroma directions).
YUV = ((0.577350, 0.577350, 0.577350), (-0.577350, 0.788675, -0.211325), (-0.577350, -0.211325, 0.788675))


@dataclass(frozen=True)
class Schedule:
    """The peer's defaults (styleTransfer.py, st_helper.py); `for_size` scales them to another output size."""

    long_sides: tuple[int, ...] = (64, 128, 256, 512)  # coarse to fine; the last is the output's long side
    lrs: tuple[float, ...] = (2e-3, 2e-3, 2e-3, 1e-3)  # the finest scale is only refined, at half the rate
    iterations: tuple[int, ...] = (250, 250, 250, 250)  # MAX_ITER (futscdav: 200)
    content_weight: float = 16.0  # alpha at the coarsest scale: 16 x the command line's weight 1.0
    content_weight_factor: float = 0.5  # alpha is halved at every finer scale
    moment_weight: float = 1.0
    pyramid_levels: int = 5  # dec_lap_pyr(x, 5): five bands and the low-pass residual
    samples: int = 1024  # output positions per step (get_feature_inds' cnt = 32**2)
    bank_draws: int = 5  # the style bank: `inner` draws ...
    bank_draw_size: int = 1000  # ... of `subsamps` positions each
    resample_every: int = 10  # the sampling grid's offsets are re-drawn every 10 steps, shuffled every step
    grid_cells: int = 128**2  # positions are taken from a strided grid of about this many cells
    rms_alpha: float = 0.99  # torch.optim.RMSprop's defaults, which the peer uses
    rms_eps: float = 1e-8
    layers: tuple[str, ...] = field(default=HYPERCOLUMN_LAYERS)

    def __post_init__(self) -> None:
        n = len(self.long_sides)
        if n == 0 or len(self.lrs) != n or len(self.iterations) != n:
            counts = f"{len(self.long_sides)}, {len(self.lrs)}, {len(self.iterations)}"
            raise InputError("strotss.schedule", f"long_sides, lrs and iterations need one entry per scale, got {counts}")
        if list(self.long_sides) != sorted(self.long_sides) or min(self.long_sides) < 2:
            raise InputError("strotss.schedule", f"long_sides must rise from coarse to fine, each >= 2, got {self.long_sides}")
        relus = [name for name, kind, _ in layer_table("vgg19") if kind == "relu"]
        wrong = [name for name in self.layers if name not in relus]
        if not self.layers or wrong:
            raise InputError("strotss.layers", f"rectified VGG-19 layers only ({', '.join(relus)}), got {list(self.layers)}")

    @classmethod
    def for_size(cls, long_side: int, *, coarsest: int = 64, iterations: int = 250, **kw) -> Schedule:
        """The peer's scales for an output of `long_side`: halvings of it down to `coarsest`, the last at
        half the learning rate. for_size(512) is the peer's 64 -> 128 -> 256 -> 512."""
        sides = [long_side]
        while sides[0] // 2 >= coarsest:
            sides.insert(0, sides[0] // 2)
        lrs = tuple([2e-3] * (len(sides) - 1) + [1e-3])
        return cls(long_sides=tuple(sides), lrs=lrs, iterations=(iterations,) * len(sides), **kw)

    def content_weights(self, alpha: float | None = None) -> list[float]:
        a = self.content_weight if alpha is None else alpha
        return [a * self.content_weight_factor**k for k in range(len(self.long_sides))]


# ---------------------------------------------------------------------------------------------
# The Laplacian pyramid (pyr_lap.py): bilinear halving, the band being what the halving loses.


def _resample(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def decompose(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[B,C,H,W] -> `levels` bands, finest first, then the low-pass residual (levels + 1 tensors);
    resampled as pyr_lap.py does (F.upsample_bilinear: align_corners)."""
    return laplacian_pyramid(x, levels, align_corners=True)


def synthesise(pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
    return from_laplacian_pyramid(pyramid, align_corners=True)


def laplacian_band(x: torch.Tensor) -> torch.Tensor:
    """The finest band, as styleTransfer.py computes it for the init (F.upsample: no align_corners)."""
    return laplacian_pyramid(x, 1, align_corners=False)[0]


def resize_long_side(x: torch.Tensor, long_side: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    f = long_side / max(h, w)
    size = (max(1, int(h * f)), max(1, int(w * f)))  # int(), as load_path_for_pytorch
    if size == (h, w):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def initial_image(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The coarsest start: the style's mean colour plus the content's finest band."""
    return style.mean(dim=(2, 3), keepdim=True) + laplacian_band(content)


def next_scale_image(previous: torch.Tensor, content: torch.Tensor, last: bool) -> torch.Tensor:
    """A finer scale's start: the previous result upsampled, plus the content's band there, except at
    the last scale (styleTransfer.py adds no band at max_scl - 1)."""
    up = _resample(previous, (content.shape[-2], content.shape[-1]), False)
    return up if last else up + laplacian_band(content)


# ---------------------------------------------------------------------------------------------
# Hypercolumns


def _depths(layers: Sequence[str]) -> list[int]:
    """Poolings before each map of the hypercolumn: 0 for the image, b-1 for relu{b}_i."""
    return [0] + [int(name[4:].split("_")[0]) - 1 for name in layers]


def hypercolumn_maps(extractor: FeatureExtractor, image: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
    """[image, feature maps...] in the image's dtype, the features scaled to the peer's magnitudes."""
    missing = [name for name in layers if name not in extractor.layers]
    if missing:
        raise InputError("layers", f"the extractor lacks {', '.join(missing)}; build it with the layers {', '.join(layers)}")
    feats = extractor(image)
    scale = FEATURE_SCALE.get(extractor.spec.name, 1.0)
    return [image] + [feats[name].to(image.dtype) * scale for name in layers]


def grid_positions(height: int, width: int, cells: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """init_inds: the positions of a strided grid (stride 1 up to `cells` positions) with random
    offsets, as flat row and column lists."""
    big = height * width
    sx = max(math.floor(math.sqrt(big // cells)), 1)
    sy = max(math.ceil(math.sqrt(big // cells)), 1)
    ox = int(torch.randint(sx, (1,), generator=generator))
    oy = int(torch.randint(sy, (1,), generator=generator))
    rows, cols = torch.meshgrid(torch.arange(ox, height, sx), torch.arange(oy, width, sy), indexing="ij")
    return rows.flatten(), cols.flatten()


class OutputSampler:
    """Where each trial's output hypercolumns are read, step by step. The peer shuffles the grid's row
    list and column list independently every step and re-draws the grid's offsets every 10 steps; each
    trial does so with its own generator, so a trial's positions do not depend on its batch."""

    def __init__(self, height: int, width: int, generators: Sequence[torch.Generator], *, samples: int = 1024,
                 cells: int = 128**2, resample_every: int = 10):
        self.height, self.width, self.generators = height, width, list(generators)
        self.samples, self.cells, self.resample_every = samples, cells, resample_every
        self.step = 0
        self.grids: list[tuple[torch.Tensor, torch.Tensor]] = []

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows [B,N], cols [B,N]), integer positions in the image."""
        if self.step % self.resample_every == 0:
            self.grids = [grid_positions(self.height, self.width, self.cells, g) for g in self.generators]
        self.step += 1
        rows, cols = [], []
        for (r, c), g in zip(self.grids, self.generators, strict=True):
            n = min(self.samples, r.numel())
            rows.append(r[torch.randperm(r.numel(), generator=g)[:n]])
            cols.append(c[torch.randperm(c.numel(), generator=g)[:n]])
        return torch.stack(rows), torch.stack(cols)


def _gather(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """flat [B,C,h*w] at flat positions index [B,N] -> [B,C,N]."""
    return flat.gather(2, index.unsqueeze(1).expand(flat.shape[0], flat.shape[1], -1))


def sample_bilinear(maps: Sequence[torch.Tensor], rows: torch.Tensor, cols: torch.Tensor, depths: Sequence[int]) -> torch.Tensor:
    """spatial_feature_extract: each map read at the image positions (rows, cols) [B,N] divided by
    2**depth, interpolated bilinearly (neighbours clamped to the map), concatenated -> [B,N,sum C]."""
    out = []
    for fmap, d in zip(maps, depths, strict=True):
        b, c, h, w = fmap.shape
        y = rows.to(fmap.device, torch.float32) / 2**d
        x = cols.to(fmap.device, torch.float32) / 2**d
        y0, x0 = y.floor(), x.floor()
        ry, rx = (y - y0).unsqueeze(1), (x - x0).unsqueeze(1)  # [B,1,N]
        y0l, x0l = y0.long().clamp(0, h - 1), x0.long().clamp(0, w - 1)
        y1l, x1l = (y0l + 1).clamp(max=h - 1), (x0l + 1).clamp(max=w - 1)
        flat = fmap.reshape(b, c, h * w)
        out.append(_gather(flat, y0l * w + x0l) * ((1 - ry) * (1 - rx)) + _gather(flat, y0l * w + x1l) * ((1 - ry) * rx)
                   + _gather(flat, y1l * w + x0l) * (ry * (1 - rx)) + _gather(flat, y1l * w + x1l) * (ry * rx))
    return torch.cat(out, dim=1).transpose(1, 2)


def sample_nearest(maps: Sequence[torch.Tensor], rows: torch.Tensor, cols: torch.Tensor, depths: Sequence[int]) -> torch.Tensor:
    """forward_samples_hypercolumn: integer positions halved and floored per pooling -> [B,N,sum C]."""
    out = []
    for fmap, d in zip(maps, depths, strict=True):
        b, c, h, w = fmap.shape
        y = (rows.to(fmap.device) // 2**d).clamp(0, h - 1)
        x = (cols.to(fmap.device) // 2**d).clamp(0, w - 1)
        out.append(_gather(fmap.reshape(b, c, h * w), y * w + x))
    return torch.cat(out, dim=1).transpose(1, 2)


def style_bank(maps: Sequence[torch.Tensor], depths: Sequence[int], generators: Sequence[torch.Generator], *,
               draws: int = 5, draw_size: int = 1000) -> torch.Tensor:
    """The style's hypercolumns at `draws` x `draw_size` distinct-per-draw positions, each trial's own
    -> [B, draws*min(draw_size, H*W), C]. Drawn once per scale, without gradient."""
    h, w = maps[0].shape[-2:]
    n = min(draw_size, h * w)
    rows, cols = [], []
    for g in generators:
        pos = torch.cat([torch.randperm(h * w, generator=g)[:n] for _ in range(draws)])
        rows.append(pos // w)
        cols.append(pos % w)
    with torch.no_grad():
        return sample_nearest(maps, torch.stack(rows), torch.stack(cols), depths)


# ---------------------------------------------------------------------------------------------
# Losses: every one takes [B,N,C] sets and returns [B], one value per trial.


def cosine_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cos between every row of x [B,N,C] and of y [B,M,C] -> [B,N,M]."""
    xn = x / x.norm(dim=2, keepdim=True).clamp_min(1e-8)
    yn = y / y.norm(dim=2, keepdim=True).clamp_min(1e-8)
    return 1.0 - xn @ yn.transpose(1, 2)


def l2_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """pairwise_distances_sq_l2's root: sqrt(clamp(|x-y|^2, 1e-5, 1e5) / C) -> [B,N,M]."""
    sq = (x * x).sum(2, keepdim=True) + (y * y).sum(2).unsqueeze(1) - 2.0 * x @ y.transpose(1, 2)
    return (sq.clamp(1e-5, 1e5) / x.shape[2]).sqrt()


def relaxed_emd(cost: torch.Tensor) -> torch.Tensor:
    """REMD of a cost matrix [B,N,M]: max(mean of row minima, mean of column minima) -> [B]."""
    return torch.maximum(cost.min(dim=2).values.mean(1), cost.min(dim=1).values.mean(1))


def remd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The style term: REMD under the cosine distance between whole hypercolumns."""
    return relaxed_emd(cosine_distances(x, y))


def rgb_to_yuv(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] RGB -> the peer's YUV basis."""
    return rgb @ rgb.new_tensor(YUV).T


def palette_remd(x_rgb: torch.Tensor, y_rgb: torch.Tensor) -> torch.Tensor:
    """The palette term: REMD on the colours in the YUV basis, cosine plus L2 distance."""
    x, y = rgb_to_yuv(x_rgb), rgb_to_yuv(y_rgb)
    return relaxed_emd(cosine_distances(x, y) + l2_distances(x, y))


@dataclass(frozen=True)
class StyleStats:
    """A style bank's first two moments, computed once per scale: the peer recomputes the covariance of
    5000 x 2179 hypercolumns at every step."""

    mean: torch.Tensor  # [B,C]
    cov: torch.Tensor  # [B,C,C]

    @classmethod
    def of(cls, bank: torch.Tensor) -> StyleStats:
        mu = bank.mean(1)
        centred = bank - mu.unsqueeze(1)
        return cls(mu, centred.transpose(1, 2) @ centred / bank.shape[1])


def moment_loss(x: torch.Tensor, style: StyleStats) -> torch.Tensor:
    """Mean |mean difference| + mean |covariance difference| (biased covariances, as contextual_loss.py)."""
    mu = x.mean(1)
    centred = x - mu.unsqueeze(1)
    cov = centred.transpose(1, 2) @ centred / x.shape[1]
    return (mu - style.mean).abs().mean(1) + (cov - style.cov).abs().mean((1, 2))


def self_similarity_loss(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """dp_loss: the cosine self-distance matrices of the output's and the content's hypercolumns at the
    same positions, each column divided by its sum, compared in L1 (mean x N)."""
    mx = cosine_distances(x, x)
    my = cosine_distances(c, c)
    mx = mx / mx.sum(1, keepdim=True)
    my = my / my.sum(1, keepdim=True)
    return (mx - my).abs().mean((1, 2)) * x.shape[1]


def objective(x: torch.Tensor, c: torch.Tensor, bank: torch.Tensor, stats: StyleStats, alpha: torch.Tensor,
              moment_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """gen_remd_dp_objective_guided without guidance: per trial [B] terms and their `total`,
    (alpha*content + remd + w*(moment + palette/max(alpha,1))) / (alpha + 1 + w). The first three
    channels of every hypercolumn are its RGB."""
    content = self_similarity_loss(x, c)
    style = remd(x, bank)
    moment = moment_loss(x, stats)
    palette = palette_remd(x[..., :3], bank[..., :3])
    alpha = alpha.to(x)
    total = (alpha * content + style + moment_weight * (moment + palette / alpha.clamp_min(1.0))) / (alpha + 1.0 + moment_weight)
    return {"content": content, "remd": style, "moment": moment, "palette": palette, "total": total}


# ---------------------------------------------------------------------------------------------
# The optimiser and the loop


def rmsprop_step(params: Sequence[torch.Tensor], square_avg: Sequence[torch.Tensor], lr: torch.Tensor,
                 alpha: float = 0.99, eps: float = 1e-8) -> None:
    """torch.optim.RMSprop's update (no momentum, not centred), with a learning rate per trial [B]:
    v = alpha v + (1 - alpha) g^2;  p -= lr g / (sqrt(v) + eps). Elementwise, so a trial's step is
    the same in any batch."""
    with torch.no_grad():
        for p, v in zip(params, square_avg, strict=True):
            assert p.grad is not None
            g = p.grad
            v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
            p.sub_(g / (v.sqrt() + eps) * lr.view(-1, *([1] * (g.dim() - 1))).to(g))


@dataclass
class Result:
    images: torch.Tensor  # [B,3,H,W] in [0,1]
    losses: torch.Tensor  # [steps, B]: the total objective at every step, all scales in turn
    scales: list[tuple[int, int]]  # (height, width) of each scale


def stylize(content: torch.Tensor, style: torch.Tensor, extractor: FeatureExtractor, *,
            schedule: Schedule | None = None, alpha: Sequence[float] | torch.Tensor | None = None,
            generators: Sequence[torch.Generator] | None = None,
            on_step: Callable[[int, int, dict[str, torch.Tensor]], None] | None = None) -> Result:
    """STROTSS over a batch of B trials: content [B,3,H,W] and style [B or 1,3,h,w] in [0,1]. Each trial
    has its content weight alpha (default: the schedule's) and its generator (default: one seeded 0,
    as a trial alone would have), so a trial gives what it gives alone. `extractor` must return `schedule.layers`
    (max pooling, as the peer's VGG). The output has the content's size, resized to the schedule's
    last long side; on_step(scale, step, terms) sees every step's per-trial terms."""
    schedule = schedule or Schedule.for_size(max(content.shape[-2:]))
    b = content.shape[0]
    if style.shape[0] not in (1, b):
        raise InputError("style", f"one style image or one per trial ({b}), got {style.shape[0]}")
    style = style.expand(b, -1, -1, -1)
    alphas = torch.as_tensor(schedule.content_weight if alpha is None else alpha, dtype=torch.float32).expand(b).clone()
    gens = list(generators) if generators is not None else [torch.Generator().manual_seed(0) for _ in range(b)]
    if len(gens) != b:
        raise InputError("generators", f"one generator per trial ({b}), got {len(gens)}")
    depths = _depths(schedule.layers)
    smallest = 2 ** max(depths)  # the deepest layer's map must keep at least one position
    for key, x in (("content", content), ("style", style)):
        for side in schedule.long_sides:
            f = side / max(x.shape[-2:])
            if min(int(x.shape[-2] * f), int(x.shape[-1] * f)) < smallest:
                raise InputError(key, f"its short side at the scale of long side {side} is under {smallest} px, "
                                      f"too small for {schedule.layers[-1]}; use a larger coarsest scale")
    device = content.device
    image: torch.Tensor | None = None
    losses: list[torch.Tensor] = []
    sizes: list[tuple[int, int]] = []
    n_scales = len(schedule.long_sides)
    for k, (side, lr, iters) in enumerate(zip(schedule.long_sides, schedule.lrs, schedule.iterations, strict=True)):
        c_k = resize_long_side(content, side)
        s_k = resize_long_side(style, side)
        sizes.append((c_k.shape[-2], c_k.shape[-1]))
        last = k == n_scales - 1
        image = initial_image(c_k, s_k) if image is None else next_scale_image(image, c_k, last)
        with torch.no_grad():
            c_maps = hypercolumn_maps(extractor, c_k, schedule.layers)
            bank = style_bank(hypercolumn_maps(extractor, s_k, schedule.layers), depths, gens,
                              draws=schedule.bank_draws, draw_size=schedule.bank_draw_size)
            stats = StyleStats.of(bank)
        alpha_k = alphas * schedule.content_weight_factor**k
        lr_k = torch.full((b,), lr, dtype=torch.float64, device=device)
        pyramid = [level.detach().clone().requires_grad_(True) for level in decompose(image, schedule.pyramid_levels)]
        square = [torch.zeros_like(level) for level in pyramid]
        sampler = OutputSampler(c_k.shape[-2], c_k.shape[-1], gens, samples=schedule.samples,
                                cells=schedule.grid_cells, resample_every=schedule.resample_every)
        for i in range(iters):
            for level in pyramid:
                level.grad = None
            x = synthesise(pyramid)
            rows, cols = sampler.next()
            xs = sample_bilinear(hypercolumn_maps(extractor, x, schedule.layers), rows, cols, depths)
            cs = sample_bilinear(c_maps, rows, cols, depths)
            terms = objective(xs, cs, bank, stats, alpha_k, schedule.moment_weight)
            terms["total"].sum().backward()  # trials share no parameter: each gets its own gradient
            rmsprop_step(pyramid, square, lr_k, schedule.rms_alpha, schedule.rms_eps)
            losses.append(terms["total"].detach())
            if on_step is not None:
                on_step(k, i, {name: t.detach() for name, t in terms.items()})
        with torch.no_grad():
            image = synthesise(pyramid)
    assert image is not None
    return Result(image.detach().clamp(0.0, 1.0), torch.stack(losses) if losses else torch.zeros(0, b), sizes)


# ---------------------------------------------------------------------------------------------
# Cost


def hypercolumn_channels(layers: Sequence[str], arch: str = "vgg19") -> int:
    channels = {name: ch for name, _, ch in layer_table(arch)}
    return 3 + sum(channels[name] for name in layers)


def loss_flops(samples: int, bank: int, channels: int) -> int:
    """FLOPs of one step's losses for one trial, forward and backward (the gradient with respect to the
    output's hypercolumns only), counting the matrix products (2 FLOPs per multiply-add):
    REMD: the N x M cosine matrix, forward and its gradient, 2 x 2NMC; palette: two N x M matrices on
    3 channels, 2 x 2 x 2NM3; self-similarity: the output's N x N matrix, forward and gradient, and the
    content's, 3 x 2N^2C; moment: the output's C x C covariance, forward and gradient, 2 x 2NC^2 (the
    style's is cached). Norms, minima, gathers and elementwise terms are O(NM + NC + C^2): left out."""
    n, m, c = samples, bank, channels
    return 4 * n * m * c + 24 * n * m + 6 * n * n * c + 4 * n * c * c


def step_flops(height: int, width: int, *, samples: int, bank: int, layers: Sequence[str] = HYPERCOLUMN_LAYERS,
               arch: str = "vgg19") -> int:
    """One step of one trial at height x width: the network's evaluation (forward to the deepest layer
    and the image's gradient, nst.features.evaluation_flops) plus the losses'."""
    deepest = max(layers, key=lambda name: [n for n, _, _ in layer_table(arch)].index(name))
    n = min(samples, height * width)
    return evaluation_flops(arch, deepest, width, height) + loss_flops(n, bank, hypercolumn_channels(layers, arch))


def run_flops(schedule: Schedule, height: int, width: int, arch: str = "vgg19") -> int:
    """A whole run of one trial: every step at every scale, plus each scale's forward passes of the
    content and the style (half an evaluation each; the style taken at the content's size) and the
    style bank's covariance (2 M C^2)."""
    total = 0
    names = [n for n, _, _ in layer_table(arch)]
    deepest = max(schedule.layers, key=names.index)
    c = hypercolumn_channels(schedule.layers, arch)
    for side, iters in zip(schedule.long_sides, schedule.iterations, strict=True):
        f = side / max(height, width)
        h, w = max(1, int(height * f)), max(1, int(width * f))
        m = schedule.bank_draws * min(schedule.bank_draw_size, h * w)
        total += iters * step_flops(h, w, samples=schedule.samples, bank=m, layers=schedule.layers, arch=arch)
        total += evaluation_flops(arch, deepest, w, h) + 2 * m * c * c
    return total


__all__ = [
    "FEATURE_SCALE", "HYPERCOLUMN_LAYERS", "PEER_LAYERS", "OutputSampler", "Result", "Schedule", "StyleStats",
    "cosine_distances", "decompose", "grid_positions", "hypercolumn_maps", "initial_image", "l2_distances",
    "laplacian_band", "loss_flops", "moment_loss", "next_scale_image", "objective", "palette_remd", "relaxed_emd",
    "remd", "resize_long_side", "rmsprop_step", "run_flops", "sample_bilinear", "sample_nearest",
    "self_similarity_loss", "step_flops", "style_bank", "stylize", "synthesise",
]
