"""A trial's input images as tensors at one size (a pyramid level): the photograph, the content and
style images as the losses see them, the metrics' plain style images, and the starting image."""

from __future__ import annotations

import torch

from nst import images
from nst.settings import Settings


def prepare(s: Settings, inputs: dict, device: torch.device, long_side: int | None = None) -> dict:
    """The trial's images at one size (a pyramid level; default: the output's), [1,3,H,W] in [0,1] on `device`:
    `photo` the content image; `content` what the content loss compares with (the photo, or its
    luminance for color=luminance); `styles` one per style image, as the style loss sees them;
    `plain_styles` each painting at its own aspect ratio at the output's pixel count, without
    style_scale or colour changes (the standardised metrics' yardstick); `init` the starting image of a first level."""
    crop = images.crop_square if s.crop == "square" else (lambda img: img)
    content_img = crop(inputs["content"])
    w, h = s.size_at(long_side or s.long_side)
    photo = images.to_tensor(images.resize(content_img, (w, h)), device)
    out: dict = {"photo": photo, "content": images.luminance(photo) if s.color == "luminance" else photo,
                 "styles": [], "plain_styles": []}
    for style_img in map(crop, inputs.get("style", [])):
        # Most implementations stretch the style image to the content's size; keep_aspect instead
        # keeps its proportions at the same pixel count (so Gram statistics cover the same area),
        # long_side keeps them with the content's long side (nst.images.style_base_size).
        base = images.style_base_size(s.style_size, style_img.size, (w, h))
        scaled = (max(1, round(base[0] * s.style_scale)), max(1, round(base[1] * s.style_scale)))
        style = images.to_tensor(images.resize(style_img, scaled), device)
        if s.color == "luminance":
            style = images.match_luminance(style, photo)  # Gatys et al. 2017: luminance-only transfer
        elif s.color == "histogram":
            style = images.match_colors(style, photo)
        out["styles"].append(style)
        # the metrics' painting: its own aspect ratio at the output's pixel count, whatever the trial's
        # style sizing, so that no sizing (stretching included) is rewarded by the yardstick
        sw, sh = style_img.size
        plain = images.size_at_pixel_count(sw, sh, w * h)
        out["plain_styles"].append(images.to_tensor(images.resize(style_img, plain), device))
    # Noise is drawn on the CPU from a seeded generator, so the same seed gives the same start on any device.
    gen = torch.Generator().manual_seed(s.seed)
    if s.noise == "uniform":
        noise = torch.rand((1, 3, h, w), generator=gen)  # white noise, uniform in [0,1]
    else:
        noise = 0.5 + 0.25 * torch.randn((1, 3, h, w), generator=gen)  # Gaussian white noise around grey
    noise = noise.to(device)
    if s.init == "noise":
        init = noise
    else:
        if s.init == "image":
            start = images.to_tensor(images.resize(crop(inputs["init"]), (w, h)), device)
        elif s.init == "content_matched":  # the photograph in the painting's colours (several: their pixels pooled)
            pooled = torch.cat([x.flatten(2) for x in out["plain_styles"]], dim=2).unsqueeze(2)
            start = images.match_colors(out["content"], pooled)
        else:
            start = out["content"]
        r = s.noise_ratio if s.init in ("content_noise", "image") else 0.0
        init = (1 - r) * start + r * noise
    out["init"] = init
    return out
