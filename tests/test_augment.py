"""Tests of the augmentation stage: FluidDistortion, presets, preview."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cellkeras.augment import (
    AUGMENTATION_PRESETS,
    Augmenter,
    FluidDistortion,
    build_augmenter,
    strength_for_size,
)
from cellkeras.augment.fluid import num_control_points
from cellkeras.augment.preset_names import FLUID_VARIANTS


def _images(b: int = 4, h: int = 24, w: int = 32, c: int = 3, seed: int = 0) -> tf.Tensor:
    rng = np.random.default_rng(seed)
    return tf.constant(rng.random((b, h, w, c)).astype(np.float32))


def _coordinate_images(b: int, h: int, w: int) -> tf.Tensor:
    """Channel 0 holds each pixel's x index, channel 1 its y index: a bilinear warp of these
    returns, at every output pixel, the source position it sampled."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    grid = np.stack([xs, ys], axis=-1)
    return tf.constant(np.repeat(grid[None], b, axis=0))


def _displacement(layer: FluidDistortion, b: int, h: int, w: int) -> np.ndarray:
    """(B, H, W, 2) source - output position, in pixels, for a batch of random draws."""
    coords = _coordinate_images(b, h, w)
    return (layer(coords) - coords).numpy()


def _one_hot(b: int, k: int = 3) -> tf.Tensor:
    return tf.one_hot(np.arange(b) % k, k)


# --- calling conventions ------------------------------------------------------------------


def test_eager_tf_data_and_model_agree_for_the_same_seed():
    x = _images()
    eager = FluidDistortion(seed=7, rotation=10, flip_horizontal=True)(x).numpy()

    ds = tf.data.Dataset.from_tensors(x).map(
        FluidDistortion(seed=7, rotation=10, flip_horizontal=True)
    )
    in_data = next(iter(ds)).numpy()

    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, FluidDistortion(seed=7, rotation=10, flip_horizontal=True)(inputs))
    in_model = model(x, training=True).numpy()

    assert not np.allclose(eager, x.numpy(), atol=1e-3)
    np.testing.assert_allclose(in_data, eager, atol=1e-5)
    np.testing.assert_allclose(in_model, eager, atol=1e-5)
    # Inference leaves images alone.
    np.testing.assert_array_equal(model.predict(x, verbose=0), x.numpy())


def test_unknown_batch_size_and_last_smaller_batch():
    layer = FluidDistortion(seed=1)
    fn = tf.function(layer, input_signature=[tf.TensorSpec((None, 16, 16, 1), tf.float32)])
    assert fn(_images(3, 16, 16, 1)).shape == (3, 16, 16, 1)
    ds = tf.data.Dataset.from_tensor_slices(_images(5, 16, 16, 1)).batch(2).map(layer)
    assert [b.shape[0] for b in ds] == [2, 2, 1]


def test_works_under_xla_jit_compile():
    layer = FluidDistortion(seed=1, mode="elastic", rotation=5, jit_compile=False)
    out = tf.function(lambda t: layer(t), jit_compile=True)(_images(2, 16, 16))
    assert out.shape == (2, 16, 16, 3)
    assert np.isfinite(out.numpy()).all()


def test_dict_passes_labels_and_keeps_keys():
    x, y = _images(), _one_hot(4)
    out = FluidDistortion(seed=0)({"images": x, "labels": y})
    assert set(out) == {"images", "labels"}
    np.testing.assert_array_equal(out["labels"].numpy(), y.numpy())


# --- randomness ---------------------------------------------------------------------------


def test_each_image_gets_its_own_distortion():
    x = tf.repeat(_images(1, 32, 32), 4, axis=0)
    out = FluidDistortion(seed=3)(x).numpy()
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(out[i] - out[j]).mean() > 1e-3, (i, j)


@pytest.mark.parametrize("mode", ["mesh", "elastic"])
def test_x_and_y_displacements_are_independent(mode):
    d = _displacement(FluidDistortion(mode=mode, magnitude=0.05, seed=5), 48, 32, 32)
    # Correlate the two fields across images, pixel by pixel; identical seeds for x and y
    # (Keras' RandomElasticTransform) would give correlation 1.
    dx, dy = d[..., 0].reshape(48, -1), d[..., 1].reshape(48, -1)
    corr = np.corrcoef(dx.mean(axis=1), dy.mean(axis=1))[0, 1]
    assert abs(corr) < 0.4
    assert np.abs(dx - dy).mean() > 0.3 * np.abs(dx).mean()


def test_seed_makes_draws_reproducible_including_seed_zero():
    x = _images()
    for seed in (0, 11):
        a = FluidDistortion(seed=seed, rotation=10)(x).numpy()
        b = FluidDistortion(seed=seed, rotation=10)(x).numpy()
        np.testing.assert_array_equal(a, b)
    c = FluidDistortion(seed=12, rotation=10)(x).numpy()
    assert np.abs(a - c).mean() > 1e-3


# --- displacement statistics --------------------------------------------------------------


def test_mesh_vertices_move_by_at_most_magnitude_times_size_and_border_stays():
    magnitude, h, w = 0.05, 33, 41
    d = _displacement(FluidDistortion(mode="mesh", magnitude=magnitude, seed=2), 64, h, w)
    ny, nx = num_control_points("mesh", (4, 4), 0.15)
    vy = np.round(np.linspace(0, h - 1, ny)).astype(int)[1:-1]
    vx = np.round(np.linspace(0, w - 1, nx)).astype(int)[1:-1]
    at_vertices = d[:, vy][:, :, vx]  # (B, 3, 3, 2), exactly ctrl * magnitude * size
    fx = at_vertices[..., 0] / (magnitude * w)
    fy = at_vertices[..., 1] / (magnitude * h)
    for f in (fx, fy):
        assert np.abs(f).max() <= 1.0 + 1e-3
        assert np.abs(f).max() > 0.9
        assert abs(f.std() - 1 / np.sqrt(3)) < 0.08  # U(-1, 1)
    np.testing.assert_allclose(d[:, 0], 0.0, atol=1e-3)  # top row fixed
    np.testing.assert_allclose(d[:, :, -1], 0.0, atol=1e-3)  # right column fixed


def test_elastic_displacement_std_scales_with_magnitude_and_size():
    stds = {}
    for size in (32, 64):
        for magnitude in (0.02, 0.04):
            d = _displacement(
                FluidDistortion(mode="elastic", magnitude=magnitude, seed=4), 32, size, size
            )
            core = d[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4]  # away from mirrors
            stds[size, magnitude] = core.std() / size
    for (_, magnitude), std in stds.items():
        assert abs(std / magnitude - 1.0) < 0.2, stds  # documented: std = magnitude x size
    # Same distortion as a fraction of size at 32 and 64 px.
    assert abs(stds[32, 0.04] / stds[64, 0.04] - 1.0) < 0.2


def test_zero_strength_is_the_identity():
    x = _images()
    np.testing.assert_array_equal(FluidDistortion(magnitude=0.0, seed=1)(x).numpy(), x.numpy())
    for preset in AUGMENTATION_PRESETS:
        out = build_augmenter(preset, strength=0.0)({"images": x, "labels": _one_hot(4)})
        np.testing.assert_array_equal(out["images"].numpy(), x.numpy())


# --- boxes, masks, dtypes -----------------------------------------------------------------


def test_boxes_follow_the_warp():
    b, h, w = 4, 48, 48
    x1, y1, x2, y2 = 14, 10, 30, 26
    images = np.zeros((b, h, w, 1), np.float32)
    images[:, y1:y2, x1:x2] = 1.0
    boxes = {
        "boxes": tf.constant([[[x1, y1, x2, y2]]] * b, tf.float32),
        "classes": tf.zeros((b, 1), tf.float32),
    }
    layer = FluidDistortion(
        magnitude=0.06,
        rotation=20,
        flip_horizontal=True,
        crop_area=0.8,
        fill_mode="constant",
        bounding_box_format="xyxy",
        seed=9,
        interpolation="nearest",
    )
    out = layer({"images": tf.constant(images), "bounding_boxes": boxes})
    got = tf.RaggedTensor.to_tensor(out["bounding_boxes"]["boxes"]).numpy()[:, 0]
    for i in range(b):
        ys, xs = np.nonzero(out["images"][i, ..., 0].numpy() > 0.5)
        expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_allclose(got[i], expected, atol=1.6)
        assert np.abs(got[i] - [x1, y1, x2, y2]).max() > 1.0 or i  # something moved


def test_segmentation_masks_move_with_images_and_keep_their_values():
    b, h, w = 3, 32, 32
    masks = np.zeros((b, h, w, 1), np.int32)
    masks[:, 8:20, 10:24] = 2
    layer = FluidDistortion(magnitude=0.05, rotation=15, seed=1, interpolation="nearest")
    out = layer({"images": tf.cast(masks, tf.float32), "segmentation_masks": tf.constant(masks)})
    assert out["segmentation_masks"].dtype == tf.int32
    np.testing.assert_array_equal(np.unique(out["segmentation_masks"]), [0, 2])
    np.testing.assert_array_equal(
        out["segmentation_masks"].numpy(), out["images"].numpy().astype(np.int32)
    )


def test_dtype_and_range_are_preserved():
    layer = FluidDistortion(seed=2, mode="elastic", rotation=15, magnitude=0.05)
    u8 = tf.constant(np.random.default_rng(1).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8))
    out = layer(u8)
    assert out.dtype == tf.uint8
    assert out.numpy().max() > 200 and out.numpy().min() < 50
    x = tf.clip_by_value(_images(3, 20, 20) * 3.0 - 1.0, 0.0, 1.0)  # plenty of exact 0s and 1s
    out = layer(x).numpy()
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_config_round_trip():
    layer = FluidDistortion(
        mode="elastic", magnitude=0.02, rotation=5, translate=(0.1, 0.2), seed=3
    )
    clone = FluidDistortion.from_config(layer.get_config())
    x = _images()
    np.testing.assert_array_equal(layer(x).numpy(), clone(x).numpy())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mesh, elastic"):
        FluidDistortion(mode="wobble")
    with pytest.raises(ValueError, match="bounding_box_format"):
        FluidDistortion(seed=0)(
            {
                "images": _images(),
                "bounding_boxes": {"boxes": tf.zeros((4, 1, 4)), "classes": tf.zeros((4, 1))},
            }
        )


# --- presets ------------------------------------------------------------------------------


# gridmask on one channel runs in tests/test_augment_gridmask.py (with per-batch seeds), so
# its keras-cv map_fn is traced once per channel count, not twice. The fluid variants are
# "fluid" with other arguments (test_fluid_variants_are_fluid_...).
@pytest.mark.parametrize(
    "preset, channels",
    [
        (p, c)
        for p in AUGMENTATION_PRESETS
        for c in (1, 3)
        if (p, c) != ("gridmask", 1) and p not in FLUID_VARIANTS
    ],
)
def test_every_preset_runs_in_tf_data_on_the_pipeline_dict(preset, channels):
    augmenter = build_augmenter(preset, image_size=24, strength=1.0, seed=1, num_classes=3)
    assert isinstance(augmenter, Augmenter)
    x, y = _images(5, 24, 24, channels), _one_hot(5)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    ds = ds.map(lambda a, b: augmenter({"images": a, "labels": b}))
    batches = list(ds)
    assert [d["images"].shape[0] for d in batches] == [2, 2, 1]
    for d in batches:
        assert set(d) == {"images", "labels"}
        assert d["images"].dtype == tf.float32
        assert d["images"].shape[1:] == (24, 24, channels)
        assert float(tf.reduce_min(d["images"])) >= 0.0
        assert float(tf.reduce_max(d["images"])) <= 1.0
        np.testing.assert_allclose(tf.reduce_sum(d["labels"], axis=-1).numpy(), 1.0, atol=1e-5)
    if preset == "none":
        np.testing.assert_array_equal(batches[0]["images"].numpy(), x.numpy()[:2])


def test_presets_change_images_and_mix_changes_labels():
    x, y = _images(6, 24, 24), _one_hot(6)
    for preset in ("basic", "fluid", "randaugment", "mix"):
        out = build_augmenter(preset, seed=3)({"images": x, "labels": y})
        assert np.abs(out["images"].numpy() - x.numpy()).mean() > 1e-3, preset
    mixed = build_augmenter("mix", seed=3)({"images": x, "labels": y})["labels"].numpy()
    assert not np.array_equal(mixed, y.numpy())


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        build_augmenter("autoaugment")
    for name in AUGMENTATION_PRESETS:
        assert name in str(err.value)


def test_mix_without_labels_and_randaugment_on_four_channels_raise():
    with pytest.raises(ValueError, match="labels"):
        build_augmenter("mix")({"images": _images()})
    with pytest.raises(ValueError, match="channels"):
        build_augmenter("randaugment")(_images(2, 16, 16, 4))


def test_strength_scales_the_fluid_distortion():
    coords = _coordinate_images(32, 32, 32)
    spread = []
    for strength in (0.5, 1.0, 2.0):
        aug = build_augmenter(
            "fluid",
            strength=strength,
            seed=0,
            flip_horizontal=False,
            flip_vertical=False,
            crop_area=1.0,
        )
        spread.append(np.abs(aug(coords).numpy() - coords.numpy()).mean())
    assert spread[0] < spread[1] < spread[2]
    assert abs(spread[2] / spread[1] - 2.0) < 0.3


def test_fluid_variants_are_fluid_at_their_factor_and_field():
    x = _images(3, 24, 24)
    double = build_augmenter("fluid_double", strength=0.5, seed=4)
    np.testing.assert_array_equal(double(x).numpy(), build_augmenter("fluid", seed=4)(x).numpy())
    assert double.preset == "fluid_double" and double.strength == 0.5
    (layer,) = build_augmenter("fluid_elastic", seed=4).augmentation_layers
    assert layer.mode == "elastic" and layer.magnitude == pytest.approx(0.03)
    (layer,) = build_augmenter("fluid_half", seed=4).augmentation_layers
    assert layer.mode == "mesh" and layer.magnitude == pytest.approx(0.015)


def test_strength_ramps_with_image_size():
    assert strength_for_size(64, 64, 256) == pytest.approx(0.3)
    assert strength_for_size(160, 64, 256) == pytest.approx(0.65)
    assert strength_for_size(256, 64, 256) == pytest.approx(1.0)
    assert strength_for_size(512, 64, 256) == pytest.approx(1.0)


# --- preview ------------------------------------------------------------------------------


def test_augment_preview_command_writes_png_and_gif(tmp_path):
    import argparse

    import cv2

    from cellkeras.cli import augment as commands

    parser = argparse.ArgumentParser()
    commands.add_command(parser.add_subparsers())
    args = parser.parse_args(
        [
            "augment-preview",
            "--num_images",
            "4",
            "--image_size",
            "32",
            "--n",
            "2",
            "--size",
            "32",
            "--frames",
            "3",
            "--presets",
            "none",
            "fluid",
            "mix",
            "--out",
            str(tmp_path),
        ]
    )
    assert args.func(args) == 0
    png = cv2.imread(str(tmp_path / "augment_gallery.png"))
    assert png.shape[0] > 3 * 32 and png.shape[1] > 3 * 32
    from PIL import Image

    with Image.open(tmp_path / "augment_fluid.gif") as gif:
        assert gif.n_frames == 3
