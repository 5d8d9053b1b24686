"""Occlusion sensitivity (the seed's method; tf-keras-vis has none): the drop of the class
probability when a patch of the image is covered, averaged over the patches covering a pixel."""

from __future__ import annotations

import keras
import numpy as np

from cellkeras.explain.common import predict_batches, select_classes


def occlusion_windows(
    height: int, width: int, patch_size: int, stride: int
) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every occluding patch; the last row and column touch the border."""

    def starts(size: int) -> list[int]:
        last = max(size - patch_size, 0)
        values = list(range(0, last + 1, stride))
        return values if values[-1] == last else [*values, last]

    return [
        (y, min(y + patch_size, height), x, min(x + patch_size, width))
        for y in starts(height)
        for x in starts(width)
    ]


def occlusion_maps(
    model: keras.Model,
    images: np.ndarray,
    requested: np.ndarray,
    patch_size: int | None,
    stride: int | None,
    fill: float | str,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps, classes, probabilities), batched: an image's occluded copies are one batch.

    A map is max(0, p_c(X) - p_c(X occluded)) averaged over the patches covering each pixel, a
    probability in [0, 1]. Defaults: patch side min(H, W) // 6, stride half of it.
    """
    n, height, width, _ = images.shape
    patch = patch_size or max(2, min(height, width) // 6)
    step = stride or max(1, patch // 2)
    windows = occlusion_windows(height, width, patch, step)
    masks = np.zeros((len(windows), height, width, 1), np.float32)
    for j, (y0, y1, x0, x1) in enumerate(windows):
        masks[j, y0:y1, x0:x1] = 1.0
    coverage = masks.sum(axis=0)[..., 0]
    probabilities = predict_batches(model, images, batch_size)
    classes, base = select_classes(probabilities, requested)
    maps = np.empty((n, height, width), np.float32)
    for i in range(n):
        value = images[i].mean(axis=(0, 1)) if fill == "mean" else np.float32(fill)
        occluded = images[i][None] * (1.0 - masks) + masks * value
        drop = np.maximum(base[i] - predict_batches(model, occluded, batch_size)[:, classes[i]], 0)
        maps[i] = np.tensordot(drop, masks[..., 0], axes=1) / coverage
    return maps, classes, probabilities
