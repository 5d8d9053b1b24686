"""Decoding and normalizing images of every common kind, and refusing bad ones clearly."""

import io
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from cellkeras.io.images import ImageError, decode_image, normalize, read_image, select_channels
from tests.conftest import write_png


def _encode(pixels, ext):
    ok, data = cv2.imencode(ext, pixels)
    assert ok
    return data.tobytes()


def test_8bit_png_rgb_order_and_range(tmp_path):
    pixels = np.zeros((10, 12, 3), np.uint8)
    pixels[..., 0] = 255  # pure red in RGB
    image = read_image(write_png(tmp_path / "red.png", pixels))
    assert image.dtype == np.float32 and image.shape == (10, 12, 3)
    np.testing.assert_allclose(image[0, 0], [1.0, 0.0, 0.0])


def test_16bit_png_keeps_precision():
    pixels = np.full((9, 9), 1000, np.uint16)
    image = decode_image(_encode(pixels, ".png"))
    assert image.shape == (9, 9, 1)
    np.testing.assert_allclose(image, 1000 / 65535, rtol=1e-6)


def test_percentile_normalization_stretches_dim_16bit():
    pixels = np.linspace(100, 4095, 16 * 16).reshape(16, 16).astype(np.uint16)  # 12-bit data
    ranged = decode_image(_encode(pixels, ".png"))
    stretched = decode_image(_encode(pixels, ".png"), normalization="percentile")
    assert ranged.max() < 0.07
    assert stretched.min() == 0.0 and stretched.max() == 1.0


def test_cmyk_jpeg_becomes_rgb():
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).convert("CMYK").save(buffer, "JPEG", quality=95)
    image = decode_image(buffer.getvalue())
    assert image.shape == (16, 16, 3)
    red, green, blue = image[8, 8]
    assert red > 0.6 and green < 0.3 and blue < 0.3


def test_rgba_drops_alpha_and_grey_to_rgb():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 255  # BGRA: red
    rgba[..., 3] = 10
    image = decode_image(_encode(rgba, ".png"))
    np.testing.assert_allclose(image[0, 0], [1, 0, 0])
    grey = decode_image(_encode(np.full((8, 8), 51, np.uint8), ".png"), channels=3)
    assert grey.shape == (8, 8, 3)
    np.testing.assert_allclose(grey[0, 0], [0.2, 0.2, 0.2], rtol=1e-6)


def test_rgb_to_luminance():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 255  # green
    image = select_channels(rgb, 1)
    assert image.shape == (8, 8, 1)
    assert abs(int(image[0, 0, 0]) - round(0.587 * 255)) <= 1


@pytest.mark.parametrize("layout", ["CYX", "YXS"])
def test_multichannel_tiff_channel_selection(tmp_path, layout):
    rng = np.random.default_rng(0)
    channels_first = rng.integers(0, 65535, (4, 10, 12), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    if layout == "CYX":
        tifffile.imwrite(path, channels_first, metadata={"axes": "CYX"}, imagej=False)
    else:
        tifffile.imwrite(
            path,
            np.moveaxis(channels_first, 0, -1),
            photometric="minisblack",
            planarconfig="contig",
            metadata={"axes": "YXS"},
        )
    every = read_image(path)
    assert every.shape == (10, 12, 4)
    np.testing.assert_allclose(every[..., 2], channels_first[2] / 65535, rtol=1e-6)
    picked = read_image(path, channels=(2, 0))
    np.testing.assert_allclose(picked[..., 0], channels_first[2] / 65535, rtol=1e-6)
    np.testing.assert_allclose(picked[..., 1], channels_first[0] / 65535, rtol=1e-6)
    with pytest.raises(ImageError, match="channel indices \\[7\\]"):
        read_image(path, channels=(7,))


def test_tiff_stack_is_refused_with_its_axes(tmp_path):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, np.zeros((5, 10, 12), np.uint8), metadata={"axes": "TYX"})
    with pytest.raises(ImageError, match="T=5"):
        read_image(path)


def test_float_tiff_is_clipped(tmp_path):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, np.full((9, 9), 1.7, np.float32))
    assert read_image(path).max() == 1.0


def test_corrupt_jpeg(tmp_path):
    data = _encode(np.random.default_rng(1).integers(0, 255, (32, 32, 3), np.uint8), ".jpg")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.jpg: corrupt or truncated"):
        read_image(path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: empty file"):
        read_image(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, this is not an image")
    with pytest.raises(ImageError, match="notes.png: not a recognised image"):
        read_image(path)


def test_one_pixel_image(tmp_path):
    path = write_png(tmp_path / "dot.png", np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ImageError, match="1x1 is smaller than the minimum side 8"):
        read_image(path)


def _png_claiming(width, height):
    """A PNG header that claims a huge image, followed by a few bytes of data."""

    def chunk(kind, payload):
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return len(payload).to_bytes(4, "big") + kind + payload + crc.to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_refused_from_header_alone():
    with pytest.raises(ImageError, match="exceeds the limit"):
        decode_image(_png_claiming(100_000, 100_000), source="bomb.png")
    with pytest.raises(ImageError, match="bomb.png: 20x20 = 400 pixels exceeds the limit of 100"):
        decode_image(
            _encode(np.zeros((20, 20), np.uint8), ".png"), max_pixels=100, source="bomb.png"
        )


def test_impossible_channel_request():
    with pytest.raises(ImageError, match="cannot be converted to 2"):
        decode_image(_encode(np.zeros((9, 9, 3), np.uint8), ".png"), channels=2)


def test_normalize_rejects_unknown_mode():
    with pytest.raises(ValueError, match="known"):
        normalize(np.zeros((2, 2, 1), np.uint8), "zscore")
