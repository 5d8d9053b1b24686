"""Tests of the `gridmask` preset and `SeededGridMask` (keras-cv's GridMask, seeded)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cellkeras.augment import AUGMENTATION_PRESETS, SeededGridMask, build_augmenter


def _images(b: int = 4, size: int = 24, c: int = 3) -> tf.Tensor:
    # Strictly positive, so a masked pixel (0) is told apart from image content.
    rng = np.random.default_rng(0)
    return tf.constant(0.2 + 0.8 * rng.random((b, size, size, c)).astype(np.float32))


def _masked(images: np.ndarray) -> np.ndarray:
    """Fraction of masked (zero) pixels per image."""
    return (images == 0).all(axis=-1).mean(axis=(1, 2))


def test_gridmask_is_a_known_preset():
    assert "gridmask" in AUGMENTATION_PRESETS


def test_eager_masks_some_pixels_per_image_and_a_seed_replays_it():
    x = tf.repeat(_images(1, 16), 3, axis=0)
    a = SeededGridMask(ratio=(0.4, 0.6), seed=0)(x).numpy()
    b = SeededGridMask(ratio=(0.4, 0.6), seed=0)(x).numpy()
    np.testing.assert_array_equal(a, b)
    fractions = _masked(a)
    assert (fractions > 0.02).all() and (fractions < 0.7).all(), fractions
    # Unmasked pixels are the input's.
    keep = ~(a == 0).all(axis=-1)
    np.testing.assert_array_equal(a[keep], x.numpy()[keep])
    # Each image gets its own grid.
    assert len({m.tobytes() for m in (a == 0)}) == len(a)
    assert not np.array_equal(a, SeededGridMask(ratio=(0.4, 0.6), seed=1)(x).numpy())


def test_preset_in_dataset_map_with_unknown_batch_and_per_batch_seed():
    augmenter = build_augmenter("gridmask", seed=3, num_classes=3, ratio=(0.4, 0.6))
    x, y = _images(3, 16, 1), tf.constant([0, 1, 2])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2).enumerate()
    ds = ds.map(
        lambda i, d: augmenter({"images": d[0], "labels": d[1]}, seed=tf.stack([i, 7])),
        num_parallel_calls=2,
    )
    first, second = list(ds), list(ds)
    assert [d["images"].shape[0] for d in first] == [2, 1]
    for d, again in zip(first, second, strict=True):
        assert d["images"].shape[1:] == (16, 16, 1)
        assert d["labels"].shape[1:] == (3,)
        # Stateless per-batch seeds: the same batch gets the same masks in every pass.
        np.testing.assert_array_equal(d["images"].numpy(), again["images"].numpy())
        assert (_masked(d["images"].numpy()) > 0.02).all()


def test_config_round_trip():
    layer = SeededGridMask(ratio=(0.1, 0.3), rotation_factor=0.1, seed=5)
    clone = SeededGridMask.from_config(layer.get_config())
    assert clone.ratio == (0.1, 0.3) and clone.seed == 5
    x = _images(2, 16)
    np.testing.assert_array_equal(layer(x).numpy(), clone(x).numpy())
    with pytest.raises(ValueError, match="ratio"):
        SeededGridMask(ratio=(0.6, 0.2))
