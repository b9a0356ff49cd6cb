"""Image loading: orientation, colour modes, and one-line errors for bad files."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from nst import images
from nst.errors import InputError


def test_bundled_examples_and_credits():
    names = images.bundled_images()
    assert {"tubingen", "starry_night", "shipwreck", "the_scream", "seated-nude"} <= set(names)
    for path in names.values():
        with Image.open(path) as im:
            assert max(im.size) <= 512
    credits = (images.BUNDLED_DIR / "CREDITS.md").read_text()
    assert "Praefcke" in credits and "van Gogh" in credits


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    im.save(tmp_path / "o.jpg", exif=exif)
    assert images.load_image("content", str(tmp_path / "o.jpg")).size == (20, 40)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA"])
def test_modes_become_rgb(tmp_path, mode):
    im = Image.new("RGB", (8, 6), (200, 100, 50)).convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    out = images.load_image("style", str(path))
    assert out.mode == "RGB" and out.size == (8, 6)


def test_transparent_pixels_become_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    im.save(tmp_path / "t.png")
    assert images.load_image("content", str(tmp_path / "t.png")).getpixel((1, 1)) == (255, 255, 255)


def test_16_bit_grey_is_rescaled_not_clipped(tmp_path):
    a = np.full((4, 4), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    Image.fromarray(a).save(tmp_path / "g16.png")
    px = images.load_image("content", str(tmp_path / "g16.png")).getpixel((0, 0))
    assert px[0] == px[1] == px[2] and 120 <= px[0] <= 135


def _bomb(path, side=20000):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))


def test_bad_files_each_get_one_line_naming_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    data = (images.BUNDLED_DIR / "tubingen.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 3])
    _bomb(tmp_path / "bomb.png")
    cases = {"missing.jpg": "no such file", "empty.jpg": "empty file", "text.jpg": "not an image",
             "trunc.jpg": "truncated", "bomb.png": "too large"}
    for name, expected in cases.items():
        with pytest.raises(InputError) as e:
            images.load_image("content", str(tmp_path / name))
        msg = str(e.value)
        assert msg.startswith("content: ") and expected in msg and "\n" not in msg, msg
        if name != "missing.jpg":
            assert name in msg


def test_sizes():
    assert images.target_size(1024, 768, 512) == (512, 384)
    assert images.target_size(300, 600, 100) == (50, 100)
    w, h = images.size_at_pixel_count(200, 100, 5000)
    assert abs(w * h - 5000) < 150 and abs(w / h - 2) < 0.05
