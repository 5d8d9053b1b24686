"""Heatmap overlays with OpenCV: arrays in, uint8 RGB arrays out (no matplotlib here).

The seed blended `cv2.addWeighted(image, 0.7, colour_map, 0.6, 0)`; those are the defaults.
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
