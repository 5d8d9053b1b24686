"""Faithfulness of heatmaps: does the model's confidence follow the pixels a map points at?

Two metrics, both batched (every perturbed copy of every image goes through the model in
batches) and both usable to compare methods on the same images:

* `average_drop` (Grad-CAM++ paper, Chattopadhay et al. 2018): keep only the map's top
  `fraction` of pixels, fill the rest, and measure the relative drop of the class probability
  (lower is better) and how often it *increases* (higher is better).
* `deletion_curve` (RISE, Petsiuk et al. 2018): delete pixels from the most to the least
  important in `steps` equal steps and record the class probability; the area under that curve
  is low when the map ranks the pixels the model relies on first (lower is better).

"Deleted" pixels take `fill`: a value, or "mean" (each image's mean colour, the default: black
or white would be a strong signal of its own on a microscope background).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellkeras.explain.common import ClassIndex, as_batch, predict_batches, requested_classes


def _fill_values(images: np.ndarray, fill: float | str) -> np.ndarray:
    if fill == "mean":
        return images.mean(axis=(1, 2), keepdims=True)
    return np.full((len(images), 1, 1, images.shape[-1]), float(fill), np.float32)


def _ranks(maps: np.ndarray) -> np.ndarray:
    """Each pixel's rank in its map, 0 = most important (ties keep raster order)."""
    flat = maps.reshape(len(maps), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None], axis=1)
    return ranks.reshape(maps.shape)


def keep_region(
    images: np.ndarray, maps: np.ndarray, fraction: float = 0.2, fill: float | str = "mean"
) -> np.ndarray:
    """Images with only the top `fraction` of pixels of each map kept, the rest set to `fill`."""
    images = as_batch(images)
    if maps.shape != images.shape[:3]:
        raise ValueError(f"maps {maps.shape} do not match images {images.shape[:3]}")
    keep = _ranks(maps) < max(1, round(fraction * maps[0].size))
    return np.where(keep[..., None], images, _fill_values(images, fill)).astype(np.float32)


def _classes(probabilities: np.ndarray, class_index: ClassIndex) -> np.ndarray:
    requested = requested_classes(class_index, len(probabilities), probabilities.shape[1])
    return np.where(requested >= 0, requested, probabilities.argmax(axis=1))


def average_drop(
    model: Any,
    images: np.ndarray,
    maps: np.ndarray,
    class_index: ClassIndex = None,
    fraction: float = 0.2,
    fill: float | str = "mean",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Confidence drop / increase when only the heatmap's region is kept.

    Args:
        model: the classifier the maps explain.
        images: (N, H, W, C) float32.
        maps: (N, H, W) heatmaps (normalized or raw: only their ranking matters).
        class_index: the class explained (None: each image's predicted class).
        fraction: share of pixels kept, the top of each map.
        fill: value of the removed pixels, or "mean".
        batch_size: images per forward pass.

    Returns:
        `average_drop` (mean of max(0, p - p_kept) / p, lower is better), `increase_rate`
        (share of images whose probability rises, higher is better), `kept_fraction`, and the
        per-image lists `probability` and `probability_kept`.
    """
    images = as_batch(images)
    probabilities = predict_batches(model, images, batch_size)
    classes = _classes(probabilities, class_index)
    rows = np.arange(len(images))
    base = probabilities[rows, classes]
    kept = predict_batches(model, keep_region(images, maps, fraction, fill), batch_size)[
        rows, classes
    ]
    drop = np.maximum(base - kept, 0.0) / np.maximum(base, 1e-12)
    return {
        "average_drop": float(drop.mean()),
        "increase_rate": float(np.mean(kept > base)),
        "kept_fraction": fraction,
        "probability": base.tolist(),
        "probability_kept": kept.tolist(),
    }


def deletion_curve(
    model: Any,
    images: np.ndarray,
    maps: np.ndarray,
    class_index: ClassIndex = None,
    steps: int = 10,
    fill: float | str = "mean",
    batch_size: int = 64,
) -> dict[str, Any]:
    """Class probability as the most important pixels are deleted first.

    Args:
        model: the classifier the maps explain.
        images: (N, H, W, C) float32.
        maps: (N, H, W) heatmaps.
        class_index: the class explained (None: each image's predicted class).
        steps: deletion steps; the curve has `steps + 1` points from 0 to all pixels deleted.
        fill: value of deleted pixels, or "mean".
        batch_size: images per forward pass.

    Returns:
        `fractions` (steps + 1,), `scores` (N, steps + 1) as nested lists, `auc` per image (the
        trapezoid area over fractions in [0, 1]; lower is better) and `mean_auc`.
    """
    images = as_batch(images)
    if maps.shape != images.shape[:3]:
        raise ValueError(f"maps {maps.shape} do not match images {images.shape[:3]}")
    classes = _classes(predict_batches(model, images, batch_size), class_index)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    pixels = maps[0].size
    ranks = _ranks(maps)
    values = _fill_values(images, fill)
    scores = np.empty((len(images), steps + 1), np.float32)
    for i in range(len(images)):
        counts = np.round(fractions * pixels)
        deleted = ranks[i][None] < counts[:, None, None]  # (steps + 1, H, W)
        copies = np.where(deleted[..., None], values[i][None], images[i][None])
        scores[i] = predict_batches(model, copies, batch_size)[:, classes[i]]
    widths = np.diff(fractions)
    auc = ((scores[:, 1:] + scores[:, :-1]) / 2.0 * widths).sum(axis=1)
    return {
        "fractions": fractions.tolist(),
        "scores": scores.tolist(),
        "auc": auc.tolist(),
        "mean_auc": float(auc.mean()),
    }
