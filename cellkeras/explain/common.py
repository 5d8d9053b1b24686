"""What the explain modules share: class requests, and (from `cellkeras.inference.predict`) image
batches, compiled prediction and the per-model cache."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from cellkeras.inference.predict import as_batch, cached, image_spec, predict, predict_function

ClassIndex = int | Sequence[int] | np.ndarray | None


def requested_classes(class_index: ClassIndex, n: int, num_classes: int) -> np.ndarray:
    """(n,) int32: the class asked for per image, -1 for "the predicted class"."""
    if class_index is None:
        return np.full(n, -1, np.int32)
    if np.ndim(class_index) == 0:
        requested = np.full(n, int(class_index), np.int32)
    else:
        requested = np.asarray(class_index, np.int32).reshape(-1)
        if len(requested) != n:
            raise ValueError(f"{len(requested)} class indices for {n} images")
    bad = requested[(requested < 0) | (requested >= num_classes)]
    if bad.size:
        raise ValueError(f"class index {int(bad[0])} out of range for {num_classes} classes")
    return requested


def select_classes(values: np.ndarray, requested: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image class (requested, or the argmax where requested is -1) and its value."""
    classes = np.where(requested >= 0, requested, values.argmax(axis=-1)).astype(np.int32)
    return classes, np.take_along_axis(values, classes[:, None], axis=1)[:, 0]


def predict_batches(
    model: keras.Model, images: np.ndarray | tf.Tensor, batch_size: int
) -> np.ndarray:
    """The model's outputs (N, K) float32, `batch_size` images per compiled call."""
    return predict(model, images, batch_size)


__all__ = ["ClassIndex", "as_batch", "cached", "image_spec", "predict_batches",
           "predict_function", "requested_classes", "select_classes"]  # fmt: skip
