"""Compiled prediction: one `tf.function` per model, any image size, batches of any length."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# Per-model caches live on the model object itself (a plain attribute Keras does not track):
# a WeakKeyDictionary would keep it alive through the closures that reference it.
_CACHE_ATTRIBUTE = "_cellkeras_explain_cache"


def cached(model: keras.Model, key: tuple, build: Callable[[], Any]) -> Any:
    """`build()` once per (model, key); later calls return the same object."""
    per_model = model.__dict__.get(_CACHE_ATTRIBUTE)
    if per_model is None:
        per_model = {}
        object.__setattr__(model, _CACHE_ATTRIBUTE, per_model)
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def image_spec(model: keras.Model) -> tf.TensorSpec:
    """A batch of float32 images of any size with the model's channel count."""
    return tf.TensorSpec([None, None, None, model.inputs[0].shape[-1]], tf.float32)


def as_batch(images: Any) -> np.ndarray:
    """(N, H, W, C) float32 from one image or a batch.

    Raises:
        ValueError: the array is neither (H, W, C) nor (N, H, W, C).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C) or (H, W, C), got shape {images.shape}")
    return images


def predict_function(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """Compiled images -> the model's outputs, float32, for any batch and image size."""

    @tf.function(input_signature=[image_spec(model)], autograph=False)
    def predict(images: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(images, training=False), tf.float32)

    return predict


def predict(model: keras.Model, images: Any, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, K) float32, through one compiled function per model."""
    images = as_batch(images)
    compiled = cached(model, ("predict",), lambda: predict_function(model))
    parts = [
        compiled(tf.convert_to_tensor(images[i : i + batch_size], tf.float32)).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
