"""What the explain modules share: image batches, class requests, compiled prediction, caching."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

ClassIndex = int | Sequence[int] | np.ndarray | None

# Sub-models and compiled functions are cached on the model object itself (set past Keras'
# attribute tracking, so saving ignores it): the cache then lives and dies with the model, where
# a WeakKeyDictionary would keep it alive through the closures that reference it.
_CACHE_ATTRIBUTE = "_cellkeras_explain_cache"


def cached(model: keras.Model, key: tuple, build: Callable[[], Any]) -> Any:
    """`build()`, computed once per `model` and `key`."""
    per_model = model.__dict__.get(_CACHE_ATTRIBUTE)
    if per_model is None:
        per_model = {}
        object.__setattr__(model, _CACHE_ATTRIBUTE, per_model)
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def image_spec(model: keras.Model) -> tf.TensorSpec:
    """Any batch and image size of the model's channels: compiled functions trace once."""
    return tf.TensorSpec([None, None, None, model.inputs[0].shape[-1]], tf.float32)


def as_batch(images: Any) -> np.ndarray:
    """(N, H, W, C) float32 from a batch or one (H, W, C) image."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C) or (H, W, C), got shape {images.shape}")
    return images


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


def predict_function(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """Compiled images -> the model's outputs, float32, for any batch and image size."""

    @tf.function(input_signature=[image_spec(model)], autograph=False)
    def predict(images: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(images, training=False), tf.float32)

    return predict


def predict_batches(
    model: keras.Model, images: np.ndarray | tf.Tensor, batch_size: int
) -> np.ndarray:
    """The model's outputs (N, K) float32, `batch_size` images per compiled call."""
    predict = cached(model, ("predict",), lambda: predict_function(model))
    parts = [
        predict(tf.convert_to_tensor(images[i : i + batch_size], tf.float32)).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
