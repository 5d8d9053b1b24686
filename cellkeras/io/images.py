"""Reading microscope images of any common kind into one normalized form.

Every image that enters cellkeras goes through `decode_image`, so an 8-bit JPEG, a 16-bit PNG
and a 4-channel TIFF all come out the same way:

* float32, shape (H, W, C), values in [0, 1];
* integers are divided by their type's maximum (uint8 by 255, uint16 by 65535), floats are
  clipped to [0, 1] ("range" normalization, the default, which the serving signature repeats
  in-graph); or each channel is stretched between its 1st and 99.8th percentile ("percentile",
  for 12-bit data stored in 16-bit files, where "range" gives a nearly black image);
* colour is RGB (OpenCV's BGR is converted), CMYK JPEGs are converted to RGB, the alpha of
  PNG/BMP/GIF is dropped (every channel of a TIFF is kept);
* `channels` picks the output: None keeps what the file has (1 or 3, or every TIFF channel),
  1 gives luminance, 3 gives RGB (grey replicated), and a tuple of indices picks those channels
  of a multichannel image (e.g. `(0,)` for the nuclear stain of a fluorescence TIFF).

Files are checked before any pixel is decoded: empty files, unknown formats (a text file named
`.png`), images over `max_pixels` (decompression bombs) and images under `min_side` pixels raise
`ImageError`, which names the file and the problem.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from cellkeras.io.errors import ImageError
from cellkeras.io.formats import sniff_format as sniff_format

# 64 megapixels: far above any classification tile, below what would exhaust memory when a
# pipeline decodes several images in parallel. Callers with whole-slide images raise it.
DEFAULT_MAX_PIXELS = 64_000_000
# A CNN with two 3x3 poolings cannot see anything in a smaller image.
DEFAULT_MIN_SIDE = 8

Channels = int | Sequence[int] | None

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
NORMALIZATIONS = ("range", "percentile")
# The low and high percentiles of the "percentile" normalization, per channel; the in-graph
# serving decode and detection's per-window normalization use the same.
NORMALIZE_PERCENTILES: tuple[float, float] = (1.0, 99.8)


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
    return normalize(pixels, normalization)


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
        # PIL reads only the header here; its own bomb check is ours to make, with our limit.
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        return height, width
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as err:
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


def _decode_tiff(data: bytes, source: str) -> np.ndarray:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            series = tif.series[0]
            axes, pixels = series.axes, series.asarray()
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
            rgb = pixels[..., :3].astype(np.float32)
            luminance = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
            return luminance.astype(pixels.dtype)[..., None]
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


def normalize(pixels: np.ndarray, normalization: str = "range") -> np.ndarray:
    """Maps pixels of any type to float32 in [0, 1] (see the module docstring)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")
    if normalization == "percentile":
        values = pixels.astype(np.float32)
        low, high = np.percentile(values, NORMALIZE_PERCENTILES, axis=(0, 1), keepdims=True)
        return np.clip((values - low) / np.maximum(high - low, 1e-6), 0.0, 1.0)
    if np.issubdtype(pixels.dtype, np.integer):
        return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    return np.clip(pixels.astype(np.float32), 0.0, 1.0)
