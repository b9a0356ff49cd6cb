"""Image input/output: load, orient, convert to RGB, resize, save. Tensors are [B,3,H,W] RGB in [0,1]."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from nst.errors import InputError
from nst.records import write_bytes_atomic, writing

BUNDLED_DIR = Path(__file__).parent / "data" / "images"
# Refuse anything above ~100 MP: far beyond what style transfer can use, and a typical
# decompression-bomb size. PIL's own default only warns below 2x its limit.
MAX_PIXELS = 100_000_000
ImageFile.LOAD_TRUNCATED_IMAGES = False


def bundled_images() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.jpg"))}


def resolve_image_path(key: str, value: str) -> Path:
    """A bundled example's name (`tubingen`) or a file path, checked to exist and be non-empty."""
    bundled = bundled_images()
    if value in bundled:
        return bundled[value]
    path = Path(os.path.expanduser(str(value)))
    if not path.exists():
        names = ", ".join(bundled)
        raise InputError(key, f"no such file '{value}' (give a path to an image, or one of the bundled examples: {names})")
    if path.is_dir():
        raise InputError(key, f"'{value}' is a folder, not an image file")
    if path.stat().st_size == 0:
        raise InputError(key, f"'{value}' is an empty file")
    return path


def load_image(key: str, value: str) -> Image.Image:
    """Open, fully decode and convert to 8-bit RGB; every failure is an InputError naming the file.
    (A command decodes each of its input files once: nst.stage.Stage.image.)"""
    return decode(key, resolve_image_path(key, value))


def decode(key: str, path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            try:
                with Image.open(path) as opened:
                    opened.load()  # decode now: a truncated file fails here, not halfway through a run
                    return to_rgb(ImageOps.exif_transpose(opened))
            finally:
                Image.MAX_IMAGE_PIXELS = saved_limit
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(key, f"'{path}' is too large to decode safely (over {MAX_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise InputError(key, f"'{path}' is not an image file PIL can read (JPEG, PNG, WebP, TIFF, BMP, GIF, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(key, f"'{path}' could not be decoded ({_first_line(e)}); is it truncated or corrupt?") from None


def oriented_size(key: str, value: str) -> tuple[int, int]:
    """(width, height) as load_image will return it, from the file's header alone (no decoding)."""
    path = resolve_image_path(key, value)
    try:
        with Image.open(path) as img:
            w, h = img.size
            # EXIF orientations 5-8 are rotations by 90 degrees: load_image swaps the sides
            return (h, w) if img.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InputError(key, f"'{path}' is not an image file PIL can read") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Grey, palette, RGBA/LA (composited on white), CMYK and 16/32-bit images become 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # PIL's convert("RGB") clips high-bit-depth values at 255 (a white image); rescale instead.
        a = np.asarray(img).astype(np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def target_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(width, height) with the long side set to `long_side`, aspect ratio kept."""
    if width >= height:
        return long_side, max(1, round(height * long_side / width))
    return max(1, round(width * long_side / height)), long_side


def cropped_size(size: tuple[int, int], crop: str) -> tuple[int, int]:
    """(width, height) of an image of `size` after the crop (crop=square: the largest centred square)."""
    return (min(size), min(size)) if crop == "square" else (size[0], size[1])


def style_base_size(style_size: str, style: tuple[int, int], content: tuple[int, int]) -> tuple[int, int]:
    """The style image's (width, height) before style_scale, for a content image of `content` px:
    match: the content's size; keep_aspect: its own aspect ratio at the content's pixel count (pastiche);
    long_side: its own aspect ratio, its long side the content's (jcjohnson/neural-style, crowsonkb)."""
    if style_size == "keep_aspect":
        return size_at_pixel_count(*style, content[0] * content[1])
    if style_size == "long_side":
        return target_size(*style, max(content))
    return content


def size_at_pixel_count(width: int, height: int, pixels: int) -> tuple[int, int]:
    """(width, height) with the aspect ratio of width:height and about `pixels` pixels."""
    ratio = width / height
    h = max(1, round((pixels / ratio) ** 0.5))
    return max(1, round(h * ratio)), h


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if img.size == size:
        return img
    return img.resize(size, Image.Resampling.LANCZOS)


def crop_square(img: Image.Image) -> Image.Image:
    """The largest centred square."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


# Colour, on tensors [B,3,H,W] RGB in [0,1]. YCbCr is the full-range BT.601 form (as JPEG's).
def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return torch.stack([y, cb, cr], 1)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    y, cb, cr = x[:, 0], x[:, 1] - 0.5, x[:, 2] - 0.5
    return torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """The luminance as a grey RGB image [B,3,H,W] (what the network sees in luminance-only transfer)."""
    return rgb_to_ycbcr(x)[:, :1].expand(-1, 3, -1, -1).contiguous()


def match_luminance(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Grey style image whose luminance has the content's mean and standard deviation (Gatys et al. 2017)."""
    ys, yc = rgb_to_ycbcr(style)[:, :1], rgb_to_ycbcr(content)[:, :1]
    y = (ys - ys.mean()) / ys.std().clamp_min(1e-6) * yc.std() + yc.mean()
    return y.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def with_chroma_of(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """x's luminance with the reference's chroma (Cb, Cr): the content's colours kept."""
    ref = rgb_to_ycbcr(reference)
    return ycbcr_to_rgb(torch.cat([rgb_to_ycbcr(x)[:, :1], ref[:, 1:]], 1)).clamp(0, 1)


def match_colors(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The style image recoloured so that its pixels' mean and covariance are the content's
    (the linear colour transfer of Gatys et al. 2017, symmetric square roots)."""
    def stats(x):
        # float64 on the host for a device without it (Apple's MPS); where it is, on the device
        p = x[0].flatten(1)
        p = (p.cpu() if p.device.type == "mps" else p).double()  # [3,N]
        mu = p.mean(1, keepdim=True)
        return p, mu, torch.cov(p) + 1e-5 * torch.eye(3, dtype=p.dtype, device=p.device)

    def sqrtm(c, power):
        vals, vecs = torch.linalg.eigh(c)
        return vecs @ torch.diag(vals.clamp_min(1e-10) ** power) @ vecs.T

    ps, mu_s, cov_s = stats(style)
    _, mu_c, cov_c = stats(content)
    a = sqrtm(cov_c, 0.5) @ sqrtm(cov_s, -0.5)  # [3,3]
    out = (a @ (ps - mu_s) + mu_c).reshape(style.shape[1:])
    return out.unsqueeze(0).to(style.dtype).to(style.device).clamp(0, 1)


def laplacian_pyramid(x: torch.Tensor, levels: int, *, align_corners: bool) -> list[torch.Tensor]:
    """[B,C,H,W] -> `levels` bands, finest first, then the low-pass residual (levels + 1 tensors): each
    band the image less its half-size version upsampled again (bilinear; `align_corners` as the method
    that uses it resamples: STROTSS with, NNST without). `from_laplacian_pyramid` inverts it exactly."""
    bands, cur = [], x
    for _ in range(levels):
        h, w = cur.shape[-2:]
        small = F.interpolate(cur, (max(h // 2, 1), max(w // 2, 1)), mode="bilinear", align_corners=align_corners)
        bands.append(cur - F.interpolate(small, (h, w), mode="bilinear", align_corners=align_corners))
        cur = small
    return [*bands, cur]


def from_laplacian_pyramid(pyramid: Sequence[torch.Tensor], *, align_corners: bool) -> torch.Tensor:
    cur = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        cur = band + F.interpolate(cur, (band.shape[-2], band.shape[-1]), mode="bilinear", align_corners=align_corners)
    return cur


def to_tensor(img: Image.Image, device: torch.device) -> torch.Tensor:
    a = np.asarray(img, dtype=np.uint8)  # [H,W,3]
    t = torch.from_numpy(a.copy()).permute(2, 0, 1).unsqueeze(0).contiguous()  # [1,3,H,W]
    return t.to(device=device, dtype=torch.float32) / 255.0


def to_pil(x: torch.Tensor) -> Image.Image:
    """One image [3,H,W] or [1,3,H,W] in [0,1] to an 8-bit PIL image."""
    return pil_of(to_bytes(x))


def to_bytes(x: torch.Tensor) -> torch.Tensor:
    """One image [3,H,W] or [1,3,H,W] in [0,1] to a new [3,H,W] uint8 tensor on its device: on a GPU,
    without waiting for it (pil_of brings it over)."""
    if x.dim() == 4:
        assert x.shape[0] == 1, "to_pil takes one image"
        x = x[0]
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8)


def pil_of(a: torch.Tensor) -> Image.Image:
    """A [3,H,W] uint8 tensor (to_bytes) as a PIL image."""
    return Image.fromarray(a.permute(1, 2, 0).cpu().numpy(), mode="RGB")


def _encoded(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def save_atomic(img: Image.Image, path: Path) -> None:
    """Write via a temporary name and rename, so an interrupted run never leaves half a file; a file
    that cannot be written (a full disk) raises nst.records.WriteError naming it and leaves no
    temporary file."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, _encoded(img, (path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG")))


def save_animation(frames_dir: Path, out: Path, *, side: int = 320) -> bool:
    """A looping GIF of frames/<evaluation>.png in order (no ffmpeg needed); False if there are none.
    Written as save_atomic writes."""
    folder = Path(frames_dir)
    frames = sorted((p for p in folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem)) if folder.is_dir() else []
    if not frames:
        return False
    pics = []
    with Image.open(frames[-1]) as im:
        last = im.size  # coarse-to-fine runs have smaller early frames: all are shown at the final size
    for p in frames:
        with Image.open(p) as im:
            pic = im.convert("RGB")
        if pic.size != last:
            pic = pic.resize(last, Image.Resampling.LANCZOS)
        pic.thumbnail((side, side))
        pics.append(pic)
    durations = [400] * (len(pics) - 1) + [1500]  # hold the result
    data = _encoded(pics[0], "GIF", save_all=True, append_images=pics[1:], duration=durations, loop=0, optimize=True)
    write_bytes_atomic(Path(out), data)
    return True


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
