"""Tests of the "intensity" preset's IntensityJitter: gain and gamma ranges, seeding, plumbing."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cellkeras.augment import build_augmenter
from cellkeras.augment.intensity import IntensityJitter


def _dim_images(batch: int, seed: int = 0) -> tf.Tensor:
    """Values in [0.05, 0.4]: a gain of up to 2 never reaches the clip at 1."""
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(0.05, 0.4, (batch, 8, 8, 1)).astype(np.float32))


def test_gain_alone_scales_each_image_by_one_log_uniform_factor_in_range():
    images = _dim_images(256)
    out = IntensityJitter(gain=1.0, gamma=0.0, seed=0)(images).numpy()
    ratios = out / images.numpy()
    per_image = ratios.reshape(256, -1)
    # One factor per image, the same at every pixel.
    np.testing.assert_allclose(
        per_image, np.broadcast_to(per_image[:, :1], per_image.shape), rtol=1e-5
    )
    gains = per_image[:, 0]
    assert gains.min() >= 0.5 - 1e-6 and gains.max() <= 2.0 + 1e-6
    # Log-uniform on [-ln 2, ln 2]: mean 0, sd ln 2 / sqrt 3, and both halves reached.
    logs = np.log(gains)
    assert abs(logs.mean()) < 0.08
    assert abs(logs.std() - np.log(2) / np.sqrt(3)) < 0.05
    assert gains.min() < 0.6 and gains.max() > 1.7


def test_gamma_alone_raises_each_image_to_one_exponent_in_range():
    images = _dim_images(128, seed=1)
    out = IntensityJitter(gain=0.0, gamma=0.5, seed=3)(images).numpy()
    exponents = (np.log(out) / np.log(images.numpy())).reshape(128, -1)
    np.testing.assert_allclose(
        exponents, np.broadcast_to(exponents[:, :1], exponents.shape), rtol=1e-4
    )
    assert exponents.min() >= 1 / 1.5 - 1e-5 and exponents.max() <= 1.5 + 1e-5
    assert exponents.min() < 0.75 and exponents.max() > 1.35


def test_output_is_clipped_to_the_unit_range_and_zero_stays_zero():
    images = tf.concat([tf.zeros((8, 4, 4, 1)), tf.ones((8, 4, 4, 1))], axis=0)
    out = IntensityJitter(seed=0)(images).numpy()
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out[:8], 0.0)
    assert out[8:].min() > 0.5  # a bright pixel stays bright: gain >= 1/2 and 1 ** gamma = 1


def test_per_batch_seed_fixes_the_draws_and_labels_pass_through():
    augmenter = build_augmenter("intensity", seed=5)
    batch = {"images": _dim_images(6), "labels": tf.one_hot([0, 1, 2, 0, 1, 2], 3)}
    first = augmenter(batch, seed=tf.constant([1, 2]))
    again = augmenter(batch, seed=tf.constant([1, 2]))
    other = augmenter(batch, seed=tf.constant([1, 3]))
    np.testing.assert_array_equal(first["images"].numpy(), again["images"].numpy())
    assert np.abs(first["images"].numpy() - other["images"].numpy()).max() > 1e-3
    np.testing.assert_array_equal(first["labels"].numpy(), batch["labels"].numpy())


def test_strength_scales_the_spread_and_zero_or_inference_is_the_identity():
    images = _dim_images(4)
    assert build_augmenter("intensity", strength=0.0).augmentation_layers == []
    layer = build_augmenter("intensity", strength=0.5, seed=0).augmentation_layers[0]
    assert (layer.gain, layer.gamma) == (0.5, 0.25)
    np.testing.assert_array_equal(layer(images, training=False).numpy(), images.numpy())


def test_config_round_trip_and_bad_arguments():
    layer = IntensityJitter(gain=0.3, gamma=0.2, seed=7)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert (restored.gain, restored.gamma, restored.seed) == (0.3, 0.2, 7)
    images = _dim_images(4)
    np.testing.assert_array_equal(restored(images).numpy(), layer(images).numpy())
    with pytest.raises(ValueError, match="gain and gamma"):
        IntensityJitter(gain=-0.1)
    with pytest.raises(TypeError, match="float images"):
        IntensityJitter()(tf.zeros((1, 4, 4, 1), tf.uint8))


def test_negative_values_are_clamped_before_the_power():
    images = tf.constant(np.full((2, 4, 4, 1), -0.2, np.float32))
    out = IntensityJitter(seed=0)(images).numpy()
    assert np.isfinite(out).all() and out.max() == 0.0
