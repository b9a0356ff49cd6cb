"""Each standardised metric on controlled degradations (real Caffe VGG-19 weights, 64 px): which way
it moves as a degradation grows, and what it does not see. The content measures compare the degraded
photograph with the photograph; the style measures the degraded painting with the painting.

The expected directions (docs/quality.md, "What each metric sees", has the measured values):

| degradation (3 strengths)          | gmsd  | self_sim_dist | psnr  | ssim  | content_distance | style_swd | gram_distance |
| ---------------------------------- | ----- | ------------- | ----- | ----- | ---------------- | --------- | ------------- |
| Gaussian noise, sd 0.05, 0.1, 0.2  | worse | worse         | worse | worse | worse            | worse     | worse         |
| Gaussian blur, sd 0.5, 1, 2 px     | worse | worse         | worse | worse | worse            | worse     | worse         |
| JPEG, quality 50, 20, 5            | worse | worse         | worse | worse | worse            | worse     | worse         |
| dot grid, 8 px period, +0.1 ... 0.4| worse | worse         | worse | worse | worse            | worse     | worse         |
| dot grid, 4 px period, +0.1 ... 0.4| BLIND | worse         | worse | worse | worse            | worse     | worse         |
| 8 px tiles moved, 10, 30, 100 %    | worse | worse         | worse | worse | worse            | worse     | worse         |

"worse": strictly worse at each stronger step (by at least MARGIN), the best value on the image
itself. "BLIND": gmsd halves the image with a 2x2 mean and takes Prewitt's central differences, which
cancel a pattern of period 2 there: the 4 px grid (the stride of the network's second pooling) stays
below the gmsd of the mildest noise at every strength, although its PSNR is lower.
"""

import functools
import io

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nst import images, metrics

CPU = torch.device("cpu")
# each step moves a metric by at least 1 % of its value: a clear move (the images are fixed, no optimiser
# carries rounding along, so the values are reproducible far below this)
MARGIN = 0.01
CONTENT = ("gmsd", "self_sim_dist", "psnr", "ssim", "content_distance")  # against the photograph
STYLE = ("style_swd", "gram_distance")  # against the painting


@functools.cache
def picture(kind: str, name: str) -> torch.Tensor:
    img = images.load_image(kind, name)
    return images.to_tensor(images.resize(img, images.target_size(*img.size, 64)), CPU)  # 64x48, 64x40


def noise(x: torch.Tensor, sd: float) -> torch.Tensor:
    return (x + sd * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)


def blur(x: torch.Tensor, sd: float) -> torch.Tensor:
    r = max(1, round(3 * sd))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sd * sd))
    k = (k / k.sum()).view(1, 1, 1, -1).expand(3, 1, 1, -1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k, groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.transpose(-1, -2), groups=3)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    buf = io.BytesIO()
    images.to_pil(x).save(buf, "JPEG", quality=quality)
    return images.to_tensor(Image.open(buf).convert("RGB"), CPU)


def dot_grid(period: int):
    """2x2 px dots brightened by `amount`, one every `period` px both ways, aligned with the network's
    pooling grid (the dotted artefact of average pooling: docs/quality.md, "The default image")."""
    def degrade(x: torch.Tensor, amount: float) -> torch.Tensor:
        h, w = x.shape[-2:]
        dots = ((torch.arange(h) % period < 2)[:, None] & (torch.arange(w) % period < 2)[None, :]).float()
        return (x + amount * dots).clamp(0, 1)
    return degrade


def tiles_moved(x: torch.Tensor, fraction: float, size: int = 8) -> torch.Tensor:
    """The image cut into size x size tiles; a fixed random `fraction` of them moved one place along
    a cycle among themselves (each tile upright, so the local content is intact)."""
    rows, cols = x.shape[-2] // size, x.shape[-1] // size
    tiles = [x[..., i * size:(i + 1) * size, j * size:(j + 1) * size] for i in range(rows) for j in range(cols)]
    order = torch.randperm(len(tiles), generator=torch.Generator().manual_seed(0)).tolist()
    chosen = order[: max(2, round(fraction * len(tiles)))]
    placed = list(tiles)
    for src, dst in zip(chosen, chosen[1:] + chosen[:1], strict=True):
        placed[dst] = tiles[src]
    return torch.cat([torch.cat(placed[i * cols:(i + 1) * cols], -1) for i in range(rows)], -2)


DEGRADATIONS = {
    "noise": (noise, (0.05, 0.1, 0.2)),
    "blur": (blur, (0.5, 1.0, 2.0)),
    "jpeg": (jpeg, (50, 20, 5)),
    "grid_8px": (dot_grid(8), (0.1, 0.2, 0.4)),
    "grid_4px": (dot_grid(4), (0.1, 0.2, 0.4)),
    "tiles": (tiles_moved, (0.1, 0.3, 1.0)),
}
# The exceptions to "worse" in the table above: {(degradation, metric)}.
BLIND = {("grid_4px", "gmsd")}


@functools.cache
def measured(degradation: str | None, strength: float = 0) -> dict[str, float]:
    """The content measures of the degraded photograph and the style measures of the degraded painting."""
    photo, painting = picture("content", "tubingen"), picture("style", "starry_night")
    fn = DEGRADATIONS[degradation][0] if degradation else (lambda x, s: x)
    on_photo = metrics.standard_metrics(fn(photo, strength), photo, None)
    on_painting = metrics.standard_metrics(fn(painting, strength), painting, [painting])
    return {**{k: on_photo[k] for k in CONTENT}, **{k: on_painting[k] for k in STYLE}}


def worse(metric: str, a: float, b: float) -> bool:
    """b is worse than a by at least MARGIN of a (inf, psnr of an identical image, is better than all)."""
    if metrics.BETTER[metric] == "max":
        return b < a - MARGIN * abs(a) if a != float("inf") else b < a
    return b > a + MARGIN * abs(a) if a else b > 0


def test_each_metric_is_at_its_best_on_the_image_itself():
    best = measured(None)
    assert best["psnr"] == float("inf") and abs(best["ssim"] - 1) < 1e-6
    assert all(best[k] == 0 for k in ("gmsd", "self_sim_dist", "content_distance", "style_swd", "gram_distance")), best


@pytest.mark.parametrize("degradation", list(DEGRADATIONS))
def test_each_metric_gets_worse_as_the_degradation_grows(degradation):
    strengths = DEGRADATIONS[degradation][1]
    series = [measured(None), *(measured(degradation, s) for s in strengths)]
    for metric in CONTENT + STYLE:
        if (degradation, metric) in BLIND:
            continue
        values = [m[metric] for m in series]
        assert all(worse(metric, a, b) for a, b in zip(values, values[1:], strict=False)), (degradation, metric, values)


def test_gmsd_is_blind_to_a_dot_grid_at_twice_its_own_subsampling():
    mildest_noise = measured("noise", 0.05)
    for amount in DEGRADATIONS["grid_4px"][1]:
        grid = measured("grid_4px", amount)
        # more pixel error than the noise, fewer "edges lost"
        assert grid["psnr"] < mildest_noise["psnr"] and grid["gmsd"] < mildest_noise["gmsd"], (amount, grid, mildest_noise)
        # while the self-similarity distance sees it, beyond that noise
        assert grid["self_sim_dist"] > mildest_noise["self_sim_dist"], (amount, grid, mildest_noise)
    # the 8 px grid, at the same amounts, gmsd sees
    assert measured("grid_8px", 0.1)["gmsd"] > mildest_noise["gmsd"]
