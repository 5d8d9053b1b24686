"""Tests of `fold_geometric` and `FluidDistortion`'s zoom (what folding Keras' RandomZoom needs)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cellkeras.augment import FluidDistortion, fold_geometric


def _coordinate_images(b: int, size: int) -> tf.Tensor:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return tf.constant(np.repeat(np.stack([xs, ys], axis=-1)[None], b, axis=0))


def _chain() -> list:
    return [
        FluidDistortion(mode="mesh", magnitude=0.04, seed=1),
        keras.layers.RandomFlip("horizontal_and_vertical", seed=2),
        keras.layers.RandomRotation(15.0 / 360.0, seed=3),
    ]


def test_a_geometric_chain_folds_into_one_layer_with_its_parameters():
    (folded,) = fold_geometric(_chain())
    assert isinstance(folded, FluidDistortion)
    assert folded.mode == "mesh" and folded.magnitude == 0.04 and folded.seed == 1
    assert folded.flip_horizontal and folded.flip_vertical
    assert folded.rotation == pytest.approx(15.0)
    (moved,) = fold_geometric(
        [keras.layers.RandomZoom(0.2, 0.1), keras.layers.RandomTranslation(0.1, 0.05)]
    )
    assert moved.zoom == (-0.2, 0.2) and moved.zoom_width == (-0.1, 0.1)
    assert moved.translate == (0.05, 0.1)  # (x, y)


def test_other_layers_stay_in_place_and_repeated_draws_start_a_new_run():
    contrast = keras.layers.RandomContrast(0.2)
    out = fold_geometric(
        [
            keras.layers.RandomRotation(0.1),
            contrast,
            keras.layers.RandomRotation(0.1),
            keras.layers.RandomRotation(0.1),
            keras.layers.RandomRotation((-0.1, 0.2)),  # asymmetric: not folded
        ]
    )
    assert [type(layer).__name__ for layer in out] == [
        "FluidDistortion",
        "RandomContrast",
        "FluidDistortion",
        "FluidDistortion",
        "RandomRotation",
    ]
    assert out[1] is contrast


def test_zoom_matches_keras_random_zoom():
    x = tf.random.stateless_uniform((2, 32, 32, 3), seed=(1, 2))
    # Zooming in needs no fill, so the two agree pixel for pixel.
    keras_out = keras.layers.RandomZoom((-0.4, -0.4), (-0.25, -0.25))(x, training=True)
    ours = FluidDistortion(magnitude=0.0, zoom=(-0.4, -0.4), zoom_width=(-0.25, -0.25), seed=0)
    np.testing.assert_allclose(ours(x).numpy(), keras_out.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="zoom"):
        FluidDistortion(zoom=(-1.5, 0.0))


def test_folded_chain_draws_the_displacements_of_the_chain():
    b, size = 48, 32
    coords = _coordinate_images(b, size)
    chained = coords
    for layer in _chain():
        chained = layer(chained, training=True)
    (folded,) = fold_geometric(_chain())
    centre = slice(size // 4, 3 * size // 4)
    stats = {}
    for name, out in (("chained", chained), ("folded", folded(coords))):
        d = (out - coords).numpy()[:, centre, centre]
        stats[name] = (np.abs(d).mean(), d.std())
    for a, b_ in zip(stats["chained"], stats["folded"], strict=True):
        assert abs(a / b_ - 1.0) < 0.15, stats
