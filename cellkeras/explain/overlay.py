"""Heatmap overlays with OpenCV: arrays in, uint8 RGB arrays out (no matplotlib here).

The seed blended `cv2.addWeighted(image, 0.7, colour_map, 0.6, 0)`; those are the defaults.
`display_size` and `resize_smooth` bring a model-sized image and its map to a size a person
can read (a 32 px cell is a smudge on a screen), at the image's own aspect.
"""

from __future__ import annotations

import cv2
import numpy as np

from cellkeras.io.display import to_display_rgb

COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
}


# A figure panel's short side at least, and its long side at most: 256 px shows a cell's
# outline and the map's peak on any screen; 1024 px keeps a large field's PNG small.
DISPLAY_MIN_SIDE = 256
DISPLAY_MAX_SIDE = 1024


def display_size(
    height: int, width: int, min_side: int = DISPLAY_MIN_SIDE, max_side: int = DISPLAY_MAX_SIDE
) -> tuple[int, int]:
    """(height, width) to show an image at: its aspect kept, the short side raised to
    `min_side` (small images are enlarged, never shrunk to it) unless that would take the long
    side past `max_side`, which also brings large images down.

    Raises:
        ValueError: a side below 1.
    """
    if height < 1 or width < 1:
        raise ValueError(f"an image to show needs a positive size, got {height}x{width}")
    scale = min(max(min_side / min(height, width), 1.0), max_side / max(height, width))
    return max(round(height * scale), 1), max(round(width * scale), 1)


def resize_smooth(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image (H, W[, C]) or heatmap (H, W) at `size` (height, width): bicubic when
    enlarging, so neither the cells nor the map turn into blocks, area averaging when
    shrinking; values stay within the input's range (bicubic overshoots at edges)."""
    array = np.asarray(array)
    if tuple(array.shape[:2]) == tuple(size):
        return array
    enlarging = size[0] * size[1] > array.shape[0] * array.shape[1]
    source = array.astype(np.float32)
    resized = cv2.resize(
        source, (size[1], size[0]), interpolation=cv2.INTER_CUBIC if enlarging else cv2.INTER_AREA
    )
    if array.ndim == 3 and resized.ndim == 2:  # OpenCV drops a single channel axis
        resized = resized[..., None]
    resized = np.clip(resized, float(np.nanmin(source)), float(np.nanmax(source)))
    if np.issubdtype(array.dtype, np.integer):
        return np.rint(resized).astype(array.dtype)
    return resized.astype(array.dtype if array.dtype.kind == "f" else np.float32)


def colormap_colours(colormap: str = "jet", levels: int = 256) -> np.ndarray:
    """The colours `colorize` gives to `levels` evenly spaced values from 0 to 1, (levels, 3)
    floats in [0, 1]: a colour bar drawn from them matches the overlay exactly."""
    ramp = np.linspace(0.0, 1.0, levels, dtype=np.float32)[None, :]
    return colorize(ramp, colormap)[0].astype(np.float32) / 255.0


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """A model input as uint8 RGB (H, W, 3): `to_display_rgb` with `scaling="range"`.

    Floats are taken as [0, 1] and integers by their type's maximum, so a map's overlay shows the
    input at the level the model saw it; channels follow `cellkeras.io.display`.
    """
    return to_display_rgb(image, scaling="range")


def colorize(heatmap: np.ndarray, colormap: str = "jet", vmax: float | None = None) -> np.ndarray:
    """A (H, W) heatmap as uint8 RGB through an OpenCV colormap.

    Args:
        heatmap: values in [0, 1], or raw values scaled by `vmax`.
        colormap: a name of `COLORMAPS`.
        vmax: the value shown as the hottest colour; None = 1 (a normalized map).
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"Unknown colormap {colormap!r}; known: {', '.join(COLORMAPS)}")
    scaled = np.asarray(heatmap, np.float32) / (vmax or 1.0)
    levels = np.clip(scaled * 255.0 + 0.5, 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(levels, COLORMAPS[colormap])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    image_weight: float = 0.7,
    heatmap_weight: float = 0.6,
    colormap: str = "jet",
    vmax: float | None = None,
) -> np.ndarray:
    """The heatmap's colours blended onto the image (`cv2.addWeighted`), uint8 RGB (H, W, 3).

    A heatmap of another size (e.g. a layer-resolution map) is resized bilinearly to the image.
    """
    rgb = to_rgb_uint8(image)
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.shape != rgb.shape[:2]:
        heatmap = cv2.resize(heatmap, rgb.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    colours = colorize(heatmap, colormap, vmax)
    return cv2.addWeighted(rgb, image_weight, colours, heatmap_weight, 0.0)


def side_by_side(images: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """uint8 RGB images of one height placed in a row with white gaps (for PNG output)."""
    height = max(image.shape[0] for image in images)
    parts = []
    for k, image in enumerate(images):
        image = to_rgb_uint8(image)
        if image.shape[0] != height:
            width = round(image.shape[1] * height / image.shape[0])
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
        if k:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
        parts.append(image)
    return np.concatenate(parts, axis=1)
