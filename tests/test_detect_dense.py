"""cellkeras.detect.dense: the window classifier's heat from one trunk pass per image."""

import warnings

import cv2
import keras
import numpy as np
import pytest

from cellkeras.detect import BoxParams, DetectConfig, detect, sliding_window_heatmap
from cellkeras.detect.dense import (
    DENSE_TOLERANCE,
    NotConvertible,
    classifier_heatmap,
    dense_classifier,
    dense_heatmap,
    normalize_locally,
    window_percentiles,
)
from cellkeras.detect.heatmaps import normalize_windows, window_grid
from cellkeras.io.images import normalize
from cellkeras.models import BRANCH_PRESETS, create_model
from tests.test_detect import tiny_cnn


def pointwise_cnn() -> keras.Model:
    """1x1 convs and max-pools (stride 8), two heads merged: no padding, so exact."""
    keras.utils.set_random_seed(1)
    images = keras.Input((None, None, 1))
    branches = []
    for pools in ((2, 4), (8,)):
        x = images
        for pool in pools:
            x = keras.layers.Conv2D(6, 1, activation="relu")(x)
            x = keras.layers.MaxPooling2D(pool, padding="same")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        branches.append(keras.layers.Dense(3)(x))
    x = keras.layers.Concatenate()(branches)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Dense(8, "relu")(x))
    return keras.Model(images, outputs)


def scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.normal(500, 30, (56, 72)).clip(0, None).astype(np.uint16)
    for x, y, r in ((16, 20, 5), (44, 28, 6), (60, 44, 4), (22, 44, 5)):
        cv2.circle(image, (x, y), r, 3000, -1)
    return image[..., None]


@pytest.fixture(scope="module")
def pointwise():
    return pointwise_cnn()


@pytest.mark.parametrize("stride", [4, 12])
def test_dense_heat_equals_window_heat_without_padding(pointwise, stride):
    # Shift-and-stitch for a step finer than the trunk's stride of 8 and for one coarser that
    # does not divide it: windows on the trunk grid and between its cells.
    image = np.random.default_rng(stride).integers(0, 255, (37, 50, 1)).astype(np.uint8)
    dense = dense_classifier(pointwise, 16, stride)
    assert dense.period == 8
    old = sliding_window_heatmap(pointwise, image, 16, stride, [1], "range")
    new = dense_heatmap(dense, image, 16, stride, [1], "range")
    np.testing.assert_allclose(new, old, atol=1e-5)


def test_the_split_of_a_parallel_model_is_the_model():
    # prefix -> suffix (the window-sized average pool is the GAP) -> head, on whole windows, for
    # the trainer's kinds of branch (edge map + plain convs + max-pools, strided residual) and
    # merge (pooled features and logits).
    sepres = {"preset": "sepres", "stem_filters": 8, "widths": [8, 8], "head_filters": 8}
    model = create_model("parallel_large", 2, channels=1, branches=["edge", sepres])
    window = 32
    dense = dense_classifier(model, window, 4)
    x = np.random.default_rng(0).uniform(size=(2, window, window, 1)).astype(np.float32)
    pooled = dense.suffix(dense.prefix(x, training=False), training=False)
    pooled = [p[:, 0, 0] for p in pooled]
    expected = model(x, training=False)
    np.testing.assert_allclose(dense.head(pooled, training=False), expected, atol=1e-5)


def test_dense_heat_matches_the_window_heat_of_a_padded_cnn():
    # The fixture's 3x3 "same" conv reads zeros at a window's edge in the window path and the
    # image around it in the dense one: on the same input (per-pixel normalization) the heats
    # differ by at most 0.005 (measured; asserted 0.01, its heat spans 0.06). Percentile
    # windows are each stretched by their own percentiles, dense pixels by those of the window
    # centred on them: that adds more (measured max 0.044, mean 0.008); asserted: within
    # DENSE_TOLERANCE (what `heat="auto"` accepts) and a mean of 0.02.
    model = tiny_cnn()
    image = scene()
    dense = dense_classifier(model, 16, 4)
    same = normalize_locally(image, 16, 4)
    old = sliding_window_heatmap(model, same, 16, 4, [1], "range")
    new = dense_heatmap(dense, same, 16, 4, [1], "range")
    assert float(old.max() - old.min()) > 0.02
    assert np.abs(new - old).max() < 0.01
    assert np.corrcoef(new.ravel(), old.ravel())[0, 1] > 0.95
    old = sliding_window_heatmap(model, image, 16, 4, [1], "percentile")
    new = dense_heatmap(dense, image, 16, 4, [1], "percentile")
    assert np.abs(new - old).max() < DENSE_TOLERANCE
    assert np.abs(new - old).mean() < 0.02


def test_window_percentiles_are_the_windows_own():
    image = scene()
    low, high = window_percentiles(image, 16, 4)
    ny, nx, first = window_grid(*image.shape[:2], 16, 4)
    assert low.shape == (ny, nx, 1)
    padded = cv2.copyMakeBorder(image, 20, 20, 20, 20, cv2.BORDER_REFLECT_101)[..., None]
    i, j = 5, 7
    top, left = 20 + first + 4 * i, 20 + first + 4 * j
    window = padded[top : top + 16, left : left + 16][None].astype(np.float32)
    lo, hi = np.percentile(window, (1.0, 99.8))
    assert low[i, j, 0] == pytest.approx(lo) and high[i, j, 0] == pytest.approx(hi)
    stretched = normalize_windows(window, "percentile")
    np.testing.assert_allclose(stretched, np.clip((window - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_dense_and_window_detections_agree():
    model = tiny_cnn()
    image = scene()
    boxes = BoxParams(threshold="otsu", min_peak=0.0, extent="image", split="distance")
    found = {
        heat: detect(
            model,
            image,
            DetectConfig(
                window=16, stride=4, normalization="percentile", gate=0.0, boxes=boxes, heat=heat
            ),
        )  # fmt: skip
        for heat in ("window", "dense")
    }
    assert len(found["window"].boxes) >= 3
    np.testing.assert_allclose(found["dense"].boxes, found["window"].boxes, atol=1.0)


def test_tiles_stitch_to_the_whole_image_heat():
    model = tiny_cnn()
    image = np.tile(scene(), (2, 2, 1))[:100, :130]
    kwargs = dict(window=16, stride=4, class_indices=[1], normalization="percentile")
    whole = classifier_heatmap(model, image, heat="dense", tile=10**6, **kwargs)
    tiled = classifier_heatmap(model, image, heat="dense", tile=72, **kwargs)
    # Equal away from the image's edges; at its right and bottom a tile sees the mirrored
    # image normalized by the mirrored windows, the whole image the mirror of the normalized.
    np.testing.assert_allclose(tiled[:-16, :-16], whole[:-16, :-16], atol=1e-5)
    np.testing.assert_allclose(tiled, whole, atol=0.01)


def test_models_that_are_not_taken_dense_fall_back_with_a_reason():
    flat = keras.Sequential(
        [keras.Input((16, 16, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
         keras.layers.Dense(2, activation="softmax")]
    )  # fmt: skip
    with pytest.raises(NotConvertible, match="GlobalAveragePooling2D"):
        dense_classifier(flat, 16, 4)
    with pytest.raises(NotConvertible, match="multiple of the trunk strides"):
        dense_classifier(pointwise_cnn(), 12, 4)
    image = scene()[:32, :32]
    model = tiny_cnn()
    old = sliding_window_heatmap(model, image, 16, 4, [1], "range")
    with pytest.warns(UserWarning, match="window heat, not dense: its dense heat differs"):
        heat = classifier_heatmap(model, image, 16, 4, [1], "range", tolerance=-1.0)
    np.testing.assert_array_equal(heat, old)
    with pytest.raises(ValueError, match="unknown heat path"):
        DetectConfig(heat="fast")


def valid_cnn(padding: str = "valid") -> keras.Model:
    """The `valid_narrow` model, narrowed, its logits scaled so the heat varies visibly."""
    keras.utils.set_random_seed(0)
    layers = len(BRANCH_PRESETS["valid_narrow"]["filters"])
    branch = {"preset": "valid_narrow", "filters": [4] * layers, "dense_units": [4]}
    branch["padding"] = padding
    model = create_model("valid_narrow", 2, channels=1, branches=[branch])
    logits = model.get_layer("valid_narrow_logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([300 * kernel, bias])
    return model


def test_a_valid_padded_model_is_dense_exactly_up_to_the_image_border():
    # Windows whose trunk never reads zero padding: the dense heat is the window heat, on an
    # image whose sides are no multiple of the grid (mirrored border, the last partial windows)
    # and for a step that is not the trunk's stride (shift-and-stitch).
    model, stride = valid_cnn(), 6
    image = scene()[:45, :61]
    dense = dense_classifier(model, 32, stride)
    assert (dense.period, dense.shrink > 0) == (4, True)
    old = sliding_window_heatmap(model, image, 32, stride, [1], "range")
    new = dense_heatmap(dense, image, 32, stride, [1], "range")
    assert old.max() - old.min() > 0.05
    np.testing.assert_allclose(new, old, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" takes the dense path: no fallback warning
        auto = classifier_heatmap(model, image, 32, stride, [1], "range")
    np.testing.assert_allclose(auto, old, atol=1e-5)
    # The same branch with "same" padding reads its windows' zero borders: not exact.
    twin = valid_cnn("same")
    old = sliding_window_heatmap(twin, image, 32, stride, [1], "range")
    assert (
        np.abs(
            dense_heatmap(dense_classifier(twin, 32, stride), image, 32, stride, [1], "range") - old
        ).max()
        > 1e-2
    )


def test_frame_percentile_windows_share_one_stretch_so_the_dense_heat_is_exact():
    # The image stretched once by its own percentiles: every window sees the same pixel values,
    # so a valid-padded trunk's dense heat is the window heat, and "auto" takes it.
    model, stride = valid_cnn(), 4
    image = scene()[:45, :61]
    stretched = normalize(image, "percentile")
    reference = sliding_window_heatmap(model, stretched, 32, stride, [1], "range")
    old = sliding_window_heatmap(model, image, 32, stride, [1], "frame_percentile")
    np.testing.assert_array_equal(old, reference)
    assert np.abs(old - sliding_window_heatmap(model, image, 32, stride, [1], "range")).max() > 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = classifier_heatmap(model, image, 32, stride, [1], "frame_percentile")
    np.testing.assert_allclose(auto, old, atol=1e-5)


def test_frame_percentile_tiles_stretch_by_the_whole_image():
    # Tiles must not each stretch by their own percentiles: a dark tile would be brightened.
    model = valid_cnn()
    image = np.concatenate([scene()[:48, :64], (scene()[:48, :64] // 8)], axis=1)
    kwargs = dict(window=32, stride=4, class_indices=[1], normalization="frame_percentile")
    whole = classifier_heatmap(model, image, heat="dense", tile=10**6, **kwargs)
    tiled = classifier_heatmap(model, image, heat="dense", tile=64, **kwargs)
    np.testing.assert_allclose(tiled[:, :-24], whole[:, :-24], atol=1e-5)
