"""Pictures of what the presets do: a labelled gallery and an animated fluidity GIF.

Arrays in, arrays out (`gallery`, `fluid_frames`); only the `write_*` functions touch files.
Drawing uses OpenCV so this works without a display or matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from cellkeras.augment.fluid import FluidDistortion, num_control_points
from cellkeras.augment.presets import build_augmenter
from cellkeras.io.display import to_display_rgb

_LABEL_WIDTH = 150
_HEADER_HEIGHT = 22
_GAP = 2


def augment_examples(
    images: np.ndarray,
    labels: np.ndarray,
    preset: str,
    n: int,
    strength: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """`n` augmented versions of `images[0]` under a preset, as float32 (n, H, W, C).

    Per-image presets see `n` copies of the first image, so the row shows the spread of one
    preset on one cell. Mixing presets need different images in the batch, so they get the
    first `n` images (cycled when fewer) and the row shows each one's mix.
    """
    augmenter = build_augmenter(preset, strength=strength, seed=seed)
    idx = np.arange(n) % len(images) if preset == "mix" else np.zeros(n, dtype=np.int64)
    batch = {
        "images": tf.constant(images[idx], tf.float32),
        "labels": tf.constant(labels[idx], tf.float32),
    }
    return augmenter(batch)["images"].numpy()


def gallery(
    images: np.ndarray,
    labels: np.ndarray,
    presets: Sequence[str],
    n: int = 6,
    strength: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """A grid image: one row per preset, the original then `n` augmented versions.

    Args:
        images: float32 (N, H, W, C) in [0, 1]; row images come from `images[0]` (and the
            next ones for "mix").
        labels: one-hot (N, K).
        presets: preset names, one row each.
        n: augmented examples per row.
        strength: augmentation strength (1 = the seed's setting).
        seed: seeds every preset.

    Returns:
        uint8 RGB (rows, cols, 3) with a header and the preset name at the start of each row.
    """
    h, w = images.shape[1:3]
    cols = n + 1
    height = _HEADER_HEIGHT + len(presets) * (h + _GAP)
    width = _LABEL_WIDTH + cols * (w + _GAP)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for c in range(cols):
        text = "original" if c == 0 else f"#{c}"
        _put(canvas, text, _LABEL_WIDTH + c * (w + _GAP) + 4, _HEADER_HEIGHT - 7)
    # "range": augmented rows are shown at the absolute levels of their original.
    original = to_display_rgb(images[:1], scaling="range")[0]
    for r, preset in enumerate(presets):
        y = _HEADER_HEIGHT + r * (h + _GAP)
        row = to_display_rgb(
            augment_examples(images, labels, preset, n, strength, seed + r), scaling="range"
        )
        first = original if preset != "mix" else to_display_rgb(images[:1], scaling="range")[0]
        tiles = [first, *row]
        for c, tile in enumerate(tiles):
            x = _LABEL_WIDTH + c * (w + _GAP)
            canvas[y : y + h, x : x + w] = tile
        _put(canvas, preset, 6, y + h // 2 + 5)
        if preset == "mix":
            _put(canvas, "(images 1..n mixed)", 6, y + h // 2 + 22, scale=0.35)
    return canvas


def _put(canvas: np.ndarray, text: str, x: int, y: int, scale: float = 0.5) -> None:
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def fluid_frames(
    image: np.ndarray,
    frames: int = 24,
    magnitude: float = 0.045,
    mode: str = "mesh",
    seed: int = 0,
) -> np.ndarray:
    """A looping animation of the fluidity distortion on one image (the seed's blood.gif).

    The control displacements move on a closed path, `A cos(t) + B sin(t)` with random A and
    B, so the cell wobbles smoothly and the last frame leads back into the first.

    Args:
        image: float32 (H, W, C) in [0, 1].
        frames: number of frames.
        magnitude: distortion magnitude (fraction of size); a bit above the training default
            so the motion reads at a glance.
        mode: "mesh" or "elastic".
        seed: picks the path.

    Returns:
        uint8 RGB frames (frames, H, W, 3).
    """
    layer = FluidDistortion(mode=mode, magnitude=magnitude)
    ny, nx = num_control_points(mode, layer.grid, layer.smoothness)
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(-1.0, 1.0, (2, ny, nx, 2)).astype(np.float32)
    if mode == "mesh":
        border = np.zeros((ny, nx, 1), np.float32)
        border[1:-1, 1:-1] = 1.0
        a, b = a * border, b * border
    t = np.linspace(0.0, 2.0 * math.pi, frames, endpoint=False, dtype=np.float32)
    ctrl = np.cos(t)[:, None, None, None] * a + np.sin(t)[:, None, None, None] * b
    identity = np.tile(np.array([[1, 0, 0, 1, 0, 0]], np.float32), (frames, 1))
    batch = np.repeat(np.asarray(image, np.float32)[None], frames, axis=0)
    out = layer.warp(batch, ctrl, identity)
    return to_display_rgb(out.numpy(), scaling="range")


def write_gallery(canvas: np.ndarray, path: str | Path) -> Path:
    """Writes an RGB gallery as PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def write_gif(frames: np.ndarray, path: str | Path, fps: float = 12.0) -> Path:
    """Writes RGB frames as a looping GIF; returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = [Image.fromarray(f) for f in frames]
    pictures[0].save(
        path,
        save_all=True,
        append_images=pictures[1:],
        duration=int(1000 / fps),
        loop=0,
        optimize=True,
    )
    return path
