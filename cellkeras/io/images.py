"""Reading microscope images of any common kind into one normalized form.

Every image that enters cellkeras goes through `decode_image`, so an 8-bit JPEG, a 16-bit PNG
and a 4-channel TIFF all come out the same way:

* float32, shape (H, W, C), values in [0, 1];
* colour is RGB (OpenCV's BGR is converted), CMYK JPEGs are converted to RGB, the alpha of
  PNG/BMP/GIF is dropped (every channel of a TIFF is kept);
* `channels` picks the output: None keeps what the file has (1 or 3, or every TIFF channel),
  1 gives luminance, 3 gives RGB (grey replicated), and a tuple of indices picks those channels
  of a multichannel image (e.g. `(0,)` for the nuclear stain of a fluorescence TIFF); on the
  command line and in configs the indices are a string, ``"0,2"`` (`parse_channels`).

Normalization
-------------
"range" (the default, which the serving signature repeats in-graph) is a fixed map of the
stored type onto [0, 1], the same for every image, so intensities stay comparable:

* unsigned integers are divided by their type's maximum (uint8 by 255, uint16 by 65535);
* signed integers are shifted by their type's minimum and divided by its range
  (int8: ``(x + 128) / 255``, int16: ``(x + 32768) / 65535``). This keeps every value and its
  order (negative values, e.g. after background subtraction, stay below zero-valued ones),
  where dividing by the maximum would give negative "intensities" and clipping would erase
  them. Non-negative data in a signed type then fills only the upper half of [0, 1]:
  use "percentile" to stretch it;
* floats are taken as already normalized: values in [0, 1] (up to `FLOAT_SLACK` of rounding,
  which is clipped) are kept. A float image outside that (raw counts, deconvolution output) is
  refused with `ImageError` rather than clipped or rescaled: clipping silently saturates it and
  a per-image min-max stretch silently changes what an intensity means from image to image.
  Use "percentile", or save the data as integers;
* NaN or infinite values are refused under every normalization.

"percentile" stretches each channel between its 1st and 99.8th percentile (for 12-bit data
stored in 16-bit files, where "range" gives a nearly black image, and for float or signed data).

"frame_percentile" is the same stretch computed over the whole frame a patch was cut from
rather than over the patch, as StarDist and Cellpose normalize an image once. On a whole image
(what `normalize` gets) it is "percentile". Patch sources that honour it (the nuclei patches)
stretch each frame before cutting and mark the set `frame_normalized`, and detection stretches
the whole image once; so overlapping windows share their normalization and the dense heat
(`cellkeras.detect.dense`) equals the window classifier's exactly.

Grey conversion
---------------
RGB becomes grey as ``floor(r * w[0] + g * w[1] + b * w[2])`` with `LUMA_WEIGHTS` rounded to
float32 (integers; floats are not floored), computed in float64. Each product of an integer
below 2**16 and a float32 weight is exact in float64, and so is their sum, so the result does
not depend on the order of the additions, on fused multiply-adds or on the BLAS: the serving
signature computes the same formula in-graph and gets the same integers. The float32 weights
add up to slightly more than 1, so grey RGB (r = g = b) keeps its value.

Files are checked before any pixel is decoded: empty files, unknown formats (a text file named
`.png`), images over `max_pixels` (decompression bombs) and images under `min_side` pixels raise
`ImageError`, which names the file and the problem. Sizes are read from the header without
touching process-wide state (PIL's `Image.MAX_IMAGE_PIXELS` is left alone), so threads can
decode at once. Compressed TIFFs (LZW, Deflate, ZSTD, JPEG, ...) are read with the
`imagecodecs` package; a TIFF whose codec is not installed is reported as such, never as
corrupt.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import BmpImagePlugin, GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin

from cellkeras.io.errors import ImageError
from cellkeras.io.formats import sniff_format as sniff_format

# 64 megapixels: far above any classification tile, below what would exhaust memory when a
# pipeline decodes several images in parallel. Callers with whole-slide images raise it.
DEFAULT_MAX_PIXELS = 64_000_000
# A CNN with two 3x3 poolings cannot see anything in a smaller image.
DEFAULT_MIN_SIDE = 8

Channels = int | Sequence[int] | None
# ITU-R BT.601 luma, the weights of OpenCV's and PIL's RGB -> grey; used by `to_grey` here and
# by the serving signature's in-graph decoder (the same formula, see the module docstring).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# How far outside [0, 1] a float image may stray by rounding (resampling, float math) and still
# count as normalized; it is clipped. Anything further out has some other scale and is refused.
FLOAT_SLACK = 0.01
# The package tifffile reads compressed TIFFs with, named in errors when it is missing.
TIFF_CODECS_PACKAGE = "imagecodecs"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
NORMALIZATIONS = ("range", "percentile", "frame_percentile")
# The normalizations that stretch by percentiles (of the image, or of the frame it came from).
PERCENTILE_NORMALIZATIONS = ("percentile", "frame_percentile")
# The low and high percentiles of the "percentile" normalization, per channel; the in-graph
# serving decode and detection's per-window normalization use the same.
NORMALIZE_PERCENTILES: tuple[float, float] = (1.0, 99.8)


# Header-only readers: these plugin classes parse the header and, unlike `Image.open`, skip
# PIL's own bomb check, whose limit is the process-wide `Image.MAX_IMAGE_PIXELS`. Lowering that
# global around `Image.open` raced between threads (check_images and make_dataset decode in
# parallel): one thread restored the limit while another opened a large image, and PIL's
# DecompressionBombError, not an OSError, escaped. Our own limit is applied to the size read.
_PIL_HEADER_READERS = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
    "gif": GifImagePlugin.GifImageFile,
}


def parse_channels(value: Channels | str) -> int | tuple[int, ...] | None:
    """A channel request as `select_channels` takes it, from a config or command-line value.

    `None`, `""` or `"none"` keep the stored channels; an int or a one-number string (`"3"`) is a
    channel count; a comma-separated string (`"0,2"`, `"1,"`) or a sequence gives channel
    indices, as a tuple.

    Raises:
        ValueError: naming the value, for anything else (`"0,x"`, `"0;2"`, a count below 1).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, bool):
        raise ValueError(f"channels must be a count or channel indices, got {value!r}")
    if isinstance(value, int | np.integer):
        if value < 1:
            raise ValueError(f"a channel count must be at least 1, got {value}")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        parts = [p.strip() for p in text.split(",")]
        if text.endswith(","):
            parts = parts[:-1]
        if not parts or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(
                f"channels {value!r} is neither a count (3) nor comma-separated channel "
                "indices (0,2)"
            )
        if "," not in text:
            return parse_channels(int(parts[0]))
        return tuple(int(p) for p in parts)
    indices = tuple(value)
    if not indices or not all(isinstance(i, int | np.integer) for i in indices):
        raise ValueError(f"channel indices must be integers, got {value!r}")
    return tuple(int(i) for i in indices)


def read_image(
    path: str | Path,
    channels: Channels = None,
    normalization: str = "range",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> np.ndarray:
    """Reads an image file into float32 (H, W, C) in [0, 1]; see the module docstring."""
    data = read_image_bytes(path)
    return decode_image(data, channels, normalization, max_pixels, min_side, source=str(path))


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file.

    Raises:
        ImageError: naming the file, when it is missing or cannot be read.
    """
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(str(path), "file not found") from None
    except OSError as err:
        raise ImageError(str(path), f"cannot be read ({err.strerror or err})") from None


def decode_image(
    data: bytes,
    channels: Channels = None,
    normalization: str = "range",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    source: str = "<bytes>",
) -> np.ndarray:
    """Decodes encoded image bytes into float32 (H, W, C) in [0, 1]; see the module docstring.

    Raises:
        ImageError: naming `source`, for empty, unknown, corrupt, too large or too small images
            and for a `channels` request the image cannot meet.
    """
    pixels = decode_raw(data, max_pixels, min_side, source)
    pixels = select_channels(pixels, channels, source)
    return normalize(pixels, normalization, source)


def decode_raw(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    source: str = "<bytes>",
) -> np.ndarray:
    """Decodes bytes into their stored type, (H, W, C), RGB order, without normalizing."""
    if not data:
        raise ImageError(source, "empty file (0 bytes)")
    kind = sniff_format(data)
    if kind is None:
        head = data[:12]
        raise ImageError(
            source,
            f"not a recognised image (PNG, JPEG, TIFF, BMP, GIF); it starts with {head!r}",
        )
    height, width = _declared_size(data, kind, source)
    if height * width > max_pixels:
        raise ImageError(
            source,
            f"{width}x{height} = {height * width:,} pixels exceeds the limit of {max_pixels:,} "
            "(a possible decompression bomb); raise max_pixels if the image is genuine",
        )
    if min(height, width) < min_side:
        raise ImageError(source, f"{width}x{height} is smaller than the minimum side {min_side}")
    pixels = _decode_tiff(data, source) if kind == "tiff" else _decode_with_opencv(data, source)
    if pixels.shape[0] != height or pixels.shape[1] != width:
        raise ImageError(source, f"header says {width}x{height} but decoded {pixels.shape[1::-1]}")
    return pixels


def _declared_size(data: bytes, kind: str, source: str) -> tuple[int, int]:
    """Height and width from the header alone, so a bomb is refused before it is decoded."""
    try:
        if kind == "tiff":
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                axes, shape = tif.series[0].axes, tif.series[0].shape
            return shape[axes.index("Y")], shape[axes.index("X")]
        with _PIL_HEADER_READERS[kind](io.BytesIO(data)) as image:
            width, height = image.size
        return height, width
    except Image.DecompressionBombError as err:
        # Only a GIF frame larger than its screen gets here (PIL checks it while parsing).
        raise ImageError(source, f"a possible decompression bomb ({err})") from None
    # PIL's plugins raise SyntaxError for a header that is not theirs.
    except (OSError, ValueError, IndexError, SyntaxError, EOFError, tifffile.TiffFileError) as err:
        raise ImageError(source, f"corrupt {kind.upper()} header ({err})") from None


def _decode_with_opencv(data: bytes, source: str) -> np.ndarray:
    # IMREAD_UNCHANGED keeps 16-bit depth and alpha; OpenCV converts CMYK JPEGs to BGR itself.
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageError(source, "corrupt or truncated image data (the decoder gave up)")
    if pixels.ndim == 2:
        return pixels[..., None]
    if pixels.shape[-1] == 4:
        # Alpha carries no stain information (a TIFF's 4th channel does, and is kept).
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)


def _missing_tiff_codec(page) -> str | None:
    """Why tifffile cannot decode `page` with the installed packages, or None when it can."""
    for table, value in (
        (tifffile.TIFF.DECOMPRESSORS, page.compression),
        (tifffile.TIFF.UNPREDICTORS, page.predictor),
    ):
        if value == 1:  # no compression / no predictor
            continue
        try:
            table[value]
        except KeyError as err:
            return str(err).strip("'\"")
    return None


def _decode_tiff(data: bytes, source: str) -> np.ndarray:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            # A missing codec is an installation problem, not a damaged file: say which.
            missing = _missing_tiff_codec(series.keyframe)
            if missing is not None:
                compression = getattr(series.keyframe.compression, "name", "unknown")
                raise ImageError(
                    source,
                    f"TIFF compressed with {compression}, which this installation cannot "
                    f"decode ({missing}); the file is not necessarily damaged: install the "
                    f"{TIFF_CODECS_PACKAGE!r} package (pip install {TIFF_CODECS_PACKAGE}), "
                    "which tifffile reads compressed TIFFs with",
                )
            axes, pixels = series.axes, series.asarray()
    except ImageError:
        raise
    except Exception as err:  # tifffile raises many kinds for damaged files
        raise ImageError(source, f"corrupt TIFF data ({err})") from None
    extra = [(a, n) for a, n in zip(axes, pixels.shape, strict=True) if a not in "YXCS" and n > 1]
    if extra:
        listed = ", ".join(f"{a}={n}" for a, n in extra)
        raise ImageError(
            source,
            f"a TIFF stack with axes {axes} ({listed}); one 2-D image per file is expected — "
            "save single frames, or read the stack with tifffile and build an ImageSet from it",
        )
    keep = [a for a in axes if a in "YXCS"]
    pixels = pixels.reshape([n for a, n in zip(axes, pixels.shape, strict=True) if a in keep])
    channel_axes = [i for i, a in enumerate(keep) if a in "CS"]
    order = [keep.index("Y"), keep.index("X"), *channel_axes]
    pixels = np.transpose(pixels, order)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    elif pixels.ndim == 4:  # both samples and channels: fold them into one channel axis
        pixels = pixels.reshape(*pixels.shape[:2], -1)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    return pixels


def select_channels(pixels: np.ndarray, channels: Channels, source: str = "<image>") -> np.ndarray:
    """Converts (H, W, C) pixels to the requested channels (see the module docstring)."""
    have = pixels.shape[-1]
    if channels is None:
        return pixels
    if isinstance(channels, int):
        if channels == have:
            return pixels
        if channels == 1 and have in (3, 4):
            return to_grey(pixels[..., :3])
        if channels == 3 and have == 1:
            return np.repeat(pixels, 3, axis=-1)
        if channels == 3 and have == 4:
            return pixels[..., :3]
        raise ImageError(
            source,
            f"has {have} channels and cannot be converted to {channels}; pass a tuple of "
            f"channel indices to pick some of them",
        )
    indices = list(channels)
    bad = [i for i in indices if not -have <= i < have]
    if bad:
        raise ImageError(source, f"has {have} channels; channel indices {bad} do not exist")
    return pixels[..., indices]


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB as (..., 1) grey of the same type, by the formula in the module docstring."""
    weights = [np.float64(np.float32(w)) for w in LUMA_WEIGHTS]
    values = rgb.astype(np.float64)
    # Left to right, one product at a time: exact for integers, so the same in-graph.
    grey = values[..., 0] * weights[0] + values[..., 1] * weights[1] + values[..., 2] * weights[2]
    if np.issubdtype(rgb.dtype, np.integer):
        grey = np.floor(grey)
    return grey.astype(rgb.dtype)[..., None]


def stretch_between(values: np.ndarray, low, high) -> np.ndarray:
    """`values` mapped linearly from [low, high] to [0, 1] and clipped; a flat range (high ==
    low) maps to 0 instead of dividing by zero. `low` and `high` broadcast against `values`."""
    return np.clip((values - low) / np.maximum(high - low, 1e-6), 0.0, 1.0)


def normalize(
    pixels: np.ndarray, normalization: str = "range", source: str = "<image>"
) -> np.ndarray:
    """Maps pixels of any type to float32 in [0, 1] (rules in the module docstring).

    Raises:
        ImageError: naming `source`, for NaN or infinite values, and under "range" for a float
            image outside [0, 1].
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")
    floating = np.issubdtype(pixels.dtype, np.floating)
    if floating and not np.all(np.isfinite(pixels)):
        raise ImageError(source, "holds NaN or infinite values")
    if normalization in PERCENTILE_NORMALIZATIONS:
        values = pixels.astype(np.float32)
        low, high = np.percentile(values, NORMALIZE_PERCENTILES, axis=(0, 1), keepdims=True)
        # np.percentile answers in float64, which would make the result float64 too: the
        # pipeline's decoder promises float32 (a float64 image failed every file-backed
        # --normalization=percentile run).
        return stretch_between(values, low, high).astype(np.float32)
    if np.issubdtype(pixels.dtype, np.unsignedinteger):
        return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    if np.issubdtype(pixels.dtype, np.signedinteger):
        info = np.iinfo(pixels.dtype)
        shifted = pixels.astype(np.float64) - float(info.min)
        return (shifted / (float(info.max) - float(info.min))).astype(np.float32)
    if not floating:
        raise ImageError(source, f"pixels of type {pixels.dtype} cannot be normalized")
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if low < -FLOAT_SLACK or high > 1.0 + FLOAT_SLACK:
        raise ImageError(
            source,
            f"float pixels span {low:g} to {high:g}, outside [0, 1]; 'range' normalization "
            "takes float images as already normalized and will not guess their scale: use "
            "percentile normalization (--normalization=percentile), or save the data as "
            "integers",
        )
    return np.clip(pixels.astype(np.float32), 0.0, 1.0)


ImageSize = int | tuple[int, int]


def parse_image_size(image_size: ImageSize | str) -> tuple[int, int]:
    """`64`, `(64, 96)`, `"64"` or `"64x96"` (height x width) as (height, width)."""
    if isinstance(image_size, str):
        parts = image_size.lower().split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"image size {image_size!r} is not SIZE or HEIGHTxWIDTH")
        image_size = tuple(int(p) for p in parts) if len(parts) == 2 else int(parts[0])
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    height, width = (int(v) for v in image_size)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    return height, width
