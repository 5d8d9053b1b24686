"""Decoding and normalizing images of every common kind, and refusing bad ones clearly."""

import io
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from cellkeras.io.images import (
    LUMA_WEIGHTS,
    ImageError,
    decode_image,
    normalize,
    parse_channels,
    read_image,
    select_channels,
)
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
    assert stretched.dtype == ranged.dtype == np.float32


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


def test_float_tiff_in_range_is_kept_and_outside_is_refused(tmp_path):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, np.full((9, 9), 0.25, np.float32))
    assert read_image(path).max() == np.float32(0.25)
    # Rounding just past 1 is clipped; a raw-count float image is refused, not saturated.
    tifffile.imwrite(path, np.full((9, 9), 1.004, np.float32))
    assert read_image(path).max() == 1.0
    tifffile.imwrite(path, np.full((9, 9), 1.7, np.float32))
    with pytest.raises(ImageError, match="f.tif: float pixels span 1.7 to 1.7, outside"):
        read_image(path)
    assert read_image(path, normalization="percentile").shape == (9, 9, 1)


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


# --- normalization rules --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int8, np.int16])
def test_signed_integers_shift_by_the_type_minimum(dtype):
    info = np.iinfo(dtype)
    pixels = np.array([info.min, -1, 0, 1, info.max], dtype).reshape(1, 5, 1)
    out = normalize(pixels)
    expected = (pixels.astype(np.float64) - info.min) / (float(info.max) - info.min)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(np.diff(out.ravel()) > 0)  # order kept: negatives stay below zero


def test_signed_tiff_reads_in_range(tmp_path):
    path = tmp_path / "signed.tif"
    tifffile.imwrite(path, np.full((9, 9), -100, np.int16))
    value = read_image(path)[0, 0, 0]
    assert 0.0 <= value <= 1.0 and value == pytest.approx((32768 - 100) / 65535)


def test_nan_is_refused_under_every_normalization():
    pixels = np.full((9, 9, 1), 0.5, np.float32)
    pixels[3, 3] = np.nan
    for mode in ("range", "percentile"):
        with pytest.raises(ImageError, match="x.tif: holds NaN"):
            normalize(pixels, mode, source="x.tif")


# --- grey conversion ------------------------------------------------------------------------


def exact_grey(rgb):
    """floor(r*w0 + g*w1 + b*w2) in exact integer arithmetic, with the float32 weights."""
    from fractions import Fraction

    scale = 2**40  # every float32 weight here is a multiple of 2**-40
    weights = [Fraction(float(np.float32(w))) * scale for w in LUMA_WEIGHTS]
    assert all(w.denominator == 1 for w in weights)
    values = rgb.astype(np.int64)
    total = sum(values[..., i] * int(weights[i]) for i in range(3))
    return (total >> 40).astype(rgb.dtype)[..., None]


@pytest.mark.parametrize(("dtype", "top"), [(np.uint8, 256), (np.uint16, 65536)])
def test_grey_is_the_exact_formula(dtype, top):
    rgb = np.random.default_rng(4).integers(0, top, (300, 300, 3)).astype(dtype)
    np.testing.assert_array_equal(select_channels(rgb, 1), exact_grey(rgb))
    level = np.arange(0, top, max(1, top // 512), dtype=dtype)
    flat = np.stack([level] * 3, axis=-1)[None]
    np.testing.assert_array_equal(select_channels(flat, 1)[0, :, 0], level)  # grey keeps its value


# --- header sizes without process-wide state -------------------------------------------------


def test_header_size_leaves_pils_global_limit_alone(monkeypatch):
    import cellkeras.io.images as images

    class Spy:
        """PIL.Image, recording every attribute the code under test sets on it."""

        def __getattr__(self, name):
            return getattr(Image, name)

        def __setattr__(self, name, value):
            writes.append(name)

    writes = []
    monkeypatch.setattr(images, "Image", Spy())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # someone else's, lower than ours
    png = _encode(np.zeros((20, 20), np.uint8), ".png")
    jpeg = _encode(np.zeros((20, 20, 3), np.uint8), ".jpg")
    for data in (png, jpeg, _encode(np.zeros((20, 20, 3), np.uint8), ".bmp")):
        assert decode_image(data).shape[:2] == (20, 20)
    with pytest.raises(ImageError, match="exceeds the limit"):
        decode_image(_png_claiming(100_000, 100_000))
    assert writes == [] and Image.MAX_IMAGE_PIXELS == 100


def test_threads_reading_bomb_headers_all_get_image_errors(tmp_path):
    import sys

    from cellkeras.data import BadInputError, ImageSet, check_images

    limit = Image.MAX_IMAGE_PIXELS
    paths = []
    for i in range(150):
        path = tmp_path / f"{i}.png"
        # A header past twice PIL's default limit, where PIL itself raises DecompressionBombError.
        path.write_bytes(_png_claiming(20_000, 20_000 + i) if i % 3 else _png_claiming(9, 9))
        paths.append(str(path))
    imageset = ImageSet(classes=["a"], labels=np.zeros(len(paths)), paths=paths)
    interval = sys.getswitchinterval()
    # Switch threads every few bytecodes, so state shared between them shows up.
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(3):
            with pytest.raises(BadInputError) as caught:
                check_images(imageset, workers=8, verbose=False)
            reasons = [why for _, why in caught.value.problems]
            assert len(reasons) == 100 and all("exceeds the limit" in r for r in reasons)
    finally:
        sys.setswitchinterval(interval)
    assert limit == Image.MAX_IMAGE_PIXELS


# --- compressed TIFFs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compression", "dtype"),
    # Baseline JPEG holds 8 bits (12-bit JPEG is rare in TIFFs).
    [(c, t) for c in ("lzw", "deflate", "zstd") for t in (np.uint8, np.uint16)]
    + [("jpeg", np.uint8)],
)
def test_compressed_tiffs_are_read(tmp_path, compression, dtype):
    y, x = np.mgrid[0:24, 0:32]
    top = np.iinfo(dtype).max
    pixels = np.stack([x * top // 31, y * top // 23, np.full_like(x, top // 3)], -1).astype(dtype)
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, pixels, compression=compression, photometric="rgb")
    image = read_image(path)
    assert image.shape == (24, 32, 3)
    error = np.abs(image.astype(np.float64) - pixels / top)
    if compression == "jpeg":  # lossy
        assert error.mean() < 0.01 and error.max() < 0.05
    else:
        assert error.max() < 1e-6


def test_a_missing_tiff_codec_is_named_not_called_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, np.zeros((9, 9), np.uint8), compression="lzw")

    class NoCodecs(dict):
        def __getitem__(self, key):
            raise KeyError(f"<COMPRESSION.LZW: {key}> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TIFF, "DECOMPRESSORS", NoCodecs())
    with pytest.raises(ImageError) as caught:
        read_image(path)
    message = str(caught.value)
    assert "lzw.tif: TIFF compressed with LZW" in message and "'imagecodecs'" in message
    assert "corrupt" not in message


# --- channel requests as strings -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (None, None),
        ("", None),
        ("none", None),
        (3, 3),
        ("1", 1),
        ("0,2", (0, 2)),
        (" 2 , 0 ", (2, 0)),
        ("1,", (1,)),
        ((0, 3), (0, 3)),
        ([1], (1,)),
    ],
)
def test_parse_channels(value, parsed):
    assert parse_channels(value) == parsed


@pytest.mark.parametrize("value", ["0;2", "0,x", "rgb", "0", 0, True, (0.5,), ()])
def test_parse_channels_refuses(value):
    with pytest.raises(ValueError, match="channel"):
        parse_channels(value)
