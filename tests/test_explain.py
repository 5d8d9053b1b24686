"""Explain: CAM methods on tiny mock models, parity with the keras.io reference and tf-keras-vis,
occlusion on a model with a known answer region, faithfulness metrics and overlays."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cellkeras.explain import (
    METHODS,
    average_drop,
    colorize,
    compute_explanation,
    default_layer,
    deletion_curve,
    explain,
    gradcam,
    keep_region,
    occlusion,
    overlay,
)
from cellkeras.inference.loading import model_min_side
from cellkeras.models import create_model

CAM_METHODS = [m for m in METHODS if m != "occlusion"]


def tiny_model(activation="softmax", units=3, seed=0, size=None):
    keras.utils.set_random_seed(seed)
    images = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(images)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(images, keras.layers.Dense(units, activation=activation, name="out")(x))


@pytest.fixture(scope="module")
def softmax_model():
    return tiny_model()


@pytest.fixture(scope="module")
def sigmoid_model():
    return tiny_model("sigmoid", 1, seed=1)


@pytest.fixture(scope="module")
def parallel_model():
    keras.utils.set_random_seed(0)
    return create_model("parallel_small", 3, channels=3)


def batch(n, size=16, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3)).astype(np.float32)


def keras_io_gradcam(images, model, last_conv_layer_name, pred_index=None):
    """keras.io `make_gradcam_heatmap`, verbatim but for the keras.ops spelling."""
    grad_model = keras.models.Model(
        model.inputs, [model.get_layer(last_conv_layer_name).output, model.output]
    )
    with tf.GradientTape() as tape:
        last_conv_layer_output, preds = grad_model(images)
        if pred_index is None:
            pred_index = tf.argmax(preds[0])
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
    last_conv_layer_output = last_conv_layer_output[0]
    heatmap = last_conv_layer_output @ pooled_grads[..., tf.newaxis]
    heatmap = tf.squeeze(heatmap)
    heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
    return heatmap.numpy()


@pytest.mark.parametrize("score", ["probability", "logit"])
def test_gradcam_matches_keras_io_reference(softmax_model, score):
    images = batch(3)
    reference_model = softmax_model
    if score == "logit":  # keras.io removes the last layer's softmax
        reference_model = tiny_model()
        reference_model.get_layer("out").activation = None
    ours = gradcam(softmax_model, images, layer_name="c2", score=score, resize=False)
    for i in range(3):
        expected = keras_io_gradcam(images[i : i + 1], reference_model, "c2")
        np.testing.assert_allclose(ours[i], expected, atol=1e-5)


def linear_twin(model):
    """`model` with a linear output layer (same weights): the logits."""
    twin = tiny_model("linear", model.outputs[0].shape[-1])
    twin.set_weights(model.get_weights())
    return twin


def plain_tf_keras_vis(model, images, method, max_n=None):
    """tf-keras-vis 0.8.7 called as its documentation shows, on layer c2, raw maps at the layer's
    size, for each image's predicted class. Score-CAM takes a model with linear outputs (it
    applies a softmax itself): the logits, or for a one-unit sigmoid z the pair (0, z), whose
    softmax is (1 - p, p)."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    probabilities = np.asarray(model(images))
    common = {"penultimate_layer": "c2", "seek_penultimate_conv_layer": False}
    common |= {"expand_cam": False, "normalize_cam": False}
    if method in ("scorecam", "faster-scorecam"):
        logits = linear_twin(model)
        target = logits
        if probabilities.shape[-1] == 1:
            z = logits.outputs[0]
            target = keras.Model(logits.inputs, keras.layers.Concatenate()([z * 0.0, z]))
        classes = [1] * len(images) if probabilities.shape[-1] == 1 else probabilities.argmax(-1)
        visualizer = Scorecam(target)
        return np.asarray(
            visualizer(CategoricalScore(list(classes)), images, max_N=max_n, **common)
        )
    cls = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "layercam": Layercam}[method]
    visualizer = cls(model, model_modifier=ReplaceToLinear(), clone=True)
    return np.asarray(
        visualizer(CategoricalScore(list(probabilities.argmax(-1))), images, **common)
    )


def peak_one(maps):
    return maps / np.maximum(maps.reshape(len(maps), -1).max(axis=1), 1e-30)[:, None, None]


@pytest.mark.parametrize("model_name", ["softmax_model", "sigmoid_model"])
@pytest.mark.parametrize("method", CAM_METHODS)
def test_methods_match_plain_tf_keras_vis(request, model_name, method):
    model = request.getfixturevalue(model_name)
    images = batch(3, seed=2)
    ours = explain(model, images, method, layer_name="c2", resize=False, max_n=3)
    if method == "faster-scorecam":
        # tf-keras-vis keeps the union of every image's top channels over the batch; cellkeras
        # keeps each image's own, which is tf-keras-vis on that image alone.
        reference = np.concatenate(
            [plain_tf_keras_vis(model, images[i : i + 1], method, max_n=3) for i in range(3)]
        )
    else:
        reference = plain_tf_keras_vis(model, images, method)
    # Maps scaled to peak 1: Grad-CAM++'s raw maps differ by tf-keras-vis' exp(score) factor,
    # which cellkeras leaves out. Float32 round-off between compiled and eager runs only.
    np.testing.assert_allclose(ours, peak_one(reference), atol=1e-4)
    if method in ("gradcam", "layercam", "scorecam"):
        raw = explain(model, images, method, layer_name="c2", resize=False, normalize=False)
        np.testing.assert_allclose(raw, reference, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam"])
def test_engine_tf_keras_vis_is_the_plain_library(softmax_model, method):
    images = batch(2, seed=4)
    kw = {"layer_name": "c2", "resize": False}
    plain = explain(softmax_model, images, method, engine="tf-keras-vis", **kw)
    reference = plain_tf_keras_vis(softmax_model, images, method)
    np.testing.assert_allclose(plain, peak_one(reference), atol=1e-4)
    np.testing.assert_allclose(plain, explain(softmax_model, images, method, **kw), atol=1e-4)


@pytest.mark.parametrize(
    ("method", "classes"),
    [
        ("gradcam", ["gradcam.Gradcam.__call__", "gradcam.Gradcam._calculate_cam"]),
        ("gradcam++", ["gradcam_plus_plus.GradcamPlusPlus.__call__"]),
        ("layercam", ["layercam.Layercam.__call__", "layercam.Layercam._calculate_cam"]),
        ("scorecam", ["scorecam.Scorecam.__call__"]),
        ("faster-scorecam", ["scorecam.Scorecam.__call__"]),
    ],
)
def test_default_engine_runs_tf_keras_vis_classes(monkeypatch, method, classes):
    import importlib

    calls = []
    for dotted in classes:
        module, cls, name = dotted.rsplit(".", 2)
        owner = getattr(importlib.import_module(f"tf_keras_vis.{module}"), cls)
        original = getattr(owner, name)

        def spy(*args, _original=original, _dotted=dotted, **kwargs):
            calls.append(_dotted)
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    model = tiny_model(seed=5)  # a fresh model: nothing compiled for it yet
    maps = explain(model, batch(2, size=12), method, max_n=3)
    assert maps.shape == (2, 12, 12) and set(calls) == set(classes)
    if method in ("gradcam", "gradcam++", "layercam"):
        # Traced once: other batch and image sizes run the compiled graph, not `__call__` again
        # (only `_calculate_cam`, a py_function in that graph, runs its Python on every call).
        calls.clear()
        assert explain(model, batch(3, size=20), method).shape == (3, 20, 20)
        assert not [c for c in calls if c.endswith("__call__")]


def test_gradcam_plus_plus_raw_maps_stay_finite_for_large_logits():
    model = tiny_model(seed=6)
    out = model.get_layer("out")
    out.set_weights([w * 1e4 for w in out.get_weights()])  # logits far above 88: exp overflows
    raw = explain(model, batch(2), "gradcam++", normalize=False)
    assert np.isfinite(raw).all() and (raw.reshape(2, -1).max(axis=1) > 0).all()


@pytest.mark.parametrize("model_name", ["softmax_model", "sigmoid_model"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [1, 3])
def test_every_method_shape_range_and_batch_independence(request, model_name, method, n):
    model = request.getfixturevalue(model_name)
    images = batch(n, seed=3)
    result = compute_explanation(model, images, method, batch_size=2)
    assert result.maps.shape == (n, 16, 16) and result.maps.dtype == np.float32
    assert result.maps.min() >= 0.0 and result.maps.max() <= 1.0 + 1e-6
    assert result.class_index.shape == (n,) and result.probability.shape == (n,)
    # A map does not depend on the other images of its batch.
    alone = explain(model, images[-1:], method)
    np.testing.assert_allclose(result.maps[-1], alone[0], atol=1e-5)
    raw = explain(model, images, method, normalize=False, batch_size=2)
    assert raw.shape == (n, 16, 16) and raw.min() >= 0.0


def test_scorecam_on_one_unit_sigmoid_is_not_flat(sigmoid_model):
    # tf-keras-vis' softmax over one unit is constant 1: every channel weight would be equal.
    maps = explain(sigmoid_model, batch(2), "scorecam", normalize=False, resize=False)
    features = tf.keras.Model(sigmoid_model.inputs, sigmoid_model.get_layer("c2").output)
    unweighted = np.maximum(np.asarray(features(batch(2))).sum(-1), 0)
    assert not np.allclose(maps / maps.max(), unweighted / unweighted.max(), atol=1e-3)


def test_class_index_forms(softmax_model):
    images = batch(3)
    predicted = compute_explanation(softmax_model, images).class_index
    assert compute_explanation(softmax_model, images, class_index=2).class_index.tolist() == [2] * 3
    per_image = compute_explanation(softmax_model, images, class_index=[0, 1, 2])
    assert per_image.class_index.tolist() == [0, 1, 2]
    np.testing.assert_allclose(
        explain(softmax_model, images, class_index=list(predicted)), explain(softmax_model, images)
    )
    with pytest.raises(ValueError, match="out of range"):
        explain(softmax_model, images, class_index=3)
    with pytest.raises(ValueError, match="2 class indices for 3"):
        explain(softmax_model, images, class_index=[0, 1])


def test_parallel_model_branches_and_merged(parallel_model):
    images = batch(2, size=32)
    assert default_layer(parallel_model) == "edge_last_conv"
    for branch, layers in [
        ("edge", ["edge_last_conv"]),
        ("deep_narrow", ["deep_narrow_last_conv"]),
        ("merged", ["edge_last_conv", "deep_narrow_last_conv"]),
    ]:
        result = compute_explanation(parallel_model, images, branch=branch)
        assert result.layers == layers and result.maps.shape == (2, 32, 32)
    with pytest.raises(ValueError, match="no branch 'nope'"):
        explain(parallel_model, images, branch="nope")


def test_mixed_precision_model_matches_float32():
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("mixed_float16")
        mixed = tiny_model()
    finally:
        keras.config.set_dtype_policy(previous)
    plain = tiny_model()
    plain.set_weights(mixed.get_weights())
    images = batch(2)
    assert mixed.get_layer("c2").compute_dtype == "float16"
    for method in ("gradcam", "scorecam"):
        np.testing.assert_allclose(
            explain(mixed, images, method), explain(plain, images, method), atol=0.03
        )


def test_nested_model_layer_matches_the_same_model_flat():
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="inner_conv")(inner_in)
    backbone = keras.Model(inner_in, x, name="backbone")
    images = keras.Input((None, None, 3))
    y = keras.layers.GlobalAveragePooling2D()(backbone(images))
    model = keras.Model(images, keras.layers.Dense(2, activation="softmax")(y))
    assert default_layer(model) == "inner_conv"
    flat_in = keras.Input((None, None, 3))
    z = keras.layers.Conv2D(4, 3, activation="relu", name="inner_conv")(flat_in)
    z = keras.layers.GlobalAveragePooling2D()(z)
    flat = keras.Model(flat_in, keras.layers.Dense(2, activation="softmax")(z))
    flat.set_weights(model.get_weights())
    pixels = batch(2)
    # The nested layer goes through the capturing stand-in, the flat one straight to tf-keras-vis.
    for method in ("gradcam", "gradcam++", "faster-scorecam"):
        nested = explain(model, pixels, method, normalize=False, max_n=2)
        np.testing.assert_allclose(
            nested, explain(flat, pixels, method, normalize=False, max_n=2), rtol=1e-4, atol=1e-7
        )
    assert gradcam(model, pixels).max() == pytest.approx(1.0)


def test_model_without_conv_layers_is_refused():
    images = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(images)
    model = keras.Model(images, keras.layers.Dense(2, activation="softmax")(x))
    with pytest.raises(ValueError, match="no convolutional layer"):
        gradcam(model, batch(1, size=8))
    assert occlusion(model, batch(1, size=8)).shape == (1, 8, 8)


def test_wrong_channels_and_shapes(softmax_model):
    with pytest.raises(ValueError, match="takes 3 channel"):
        gradcam(softmax_model, np.zeros((1, 16, 16, 1), np.float32))
    with pytest.raises(ValueError, match="Unknown method"):
        explain(softmax_model, batch(1), "saliency")
    assert gradcam(softmax_model, batch(1)[0]).shape == (1, 16, 16)


def region_model():
    """Answers 'bright spot' by looking only at rows/cols 16..23 of a 32 px image."""
    images = keras.Input((32, 32, 1))
    crop = keras.layers.Cropping2D(((16, 8), (16, 8)))(images)
    mean = keras.layers.GlobalAveragePooling2D()(crop)
    logits = keras.layers.Dense(2)(mean)
    model = keras.Model(images, keras.layers.Activation("softmax")(logits))
    model.layers[-2].set_weights([np.array([[-20.0, 20.0]], np.float32), np.array([5.0, -5.0])])
    return model


def test_occlusion_peaks_on_the_region_the_answer_depends_on():
    model = region_model()
    image = np.zeros((1, 32, 32, 1), np.float32)
    image[0, 16:24, 16:24] = 1.0
    result = compute_explanation(model, image, "occlusion", patch_size=8, stride=4, fill=0.0)
    assert result.class_index[0] == 1 and result.probability[0] > 0.99
    peak = np.unravel_index(result.maps[0].argmax(), (32, 32))
    assert 16 <= peak[0] < 24 and 16 <= peak[1] < 24
    assert result.maps[0][:8, :8].max() == 0.0  # occluding elsewhere changes nothing
    raw = occlusion(model, image, patch_size=8, stride=4, fill=0.0, normalize=False)
    assert 0.0 < raw.max() <= 1.0  # a probability drop


def test_faithfulness_prefers_the_true_region():
    model = region_model()
    image = np.zeros((1, 32, 32, 1), np.float32)
    image[0, 16:24, 16:24] = 1.0
    good = np.zeros((1, 32, 32), np.float32)
    good[0, 16:24, 16:24] = 1.0
    bad = 1.0 - good
    kept = keep_region(image, good, fraction=64 / 1024, fill=0.0)
    np.testing.assert_array_equal(kept, image)
    drop_good = average_drop(model, image, good, fraction=0.1, fill=0.0)
    drop_bad = average_drop(model, image, bad, fraction=0.1, fill=0.0)
    assert drop_good["average_drop"] < 0.01 < drop_bad["average_drop"]
    curve_good = deletion_curve(model, image, good, steps=8, fill=0.0)
    curve_bad = deletion_curve(model, image, bad, steps=8, fill=0.0)
    assert len(curve_good["scores"][0]) == 9
    assert curve_good["mean_auc"] < curve_bad["mean_auc"]


def test_display_size_keeps_the_aspect_within_bounds():
    from cellkeras.explain.overlay import display_size

    assert display_size(16, 32) == (256, 512)  # small: enlarged to 256 px on the short side
    assert display_size(24, 20) == (307, 256)
    assert display_size(512, 752) == (512, 752)  # large enough: as it is
    assert display_size(3000, 4000) == (768, 1024)  # too large: the long side capped
    assert display_size(8, 400) == (20, 1024)  # the cap wins over the short side
    with pytest.raises(ValueError, match="positive size"):
        display_size(0, 5)


def test_resize_smooth_interpolates_within_the_input_range():
    from cellkeras.explain.overlay import resize_smooth

    step = np.zeros((8, 8), np.float32)
    step[:, 4:] = 1.0
    big = resize_smooth(step, (64, 64))
    assert big.shape == (64, 64) and big.dtype == np.float32
    assert big.min() == 0.0 and big.max() == 1.0  # bicubic overshoot clipped
    assert np.sum((big > 0.05) & (big < 0.95)) >= 64 * 2  # a ramp, not a hard block edge
    rgb = resize_smooth(np.full((16, 16, 3), 200, np.uint8), (32, 48))
    assert rgb.shape == (32, 48, 3) and rgb.dtype == np.uint8 and np.all(rgb == 200)
    assert resize_smooth(np.ones((6, 6, 1), np.float32), (3, 3)).shape == (3, 3, 1)


def test_overlay_and_colorize():
    heat = np.zeros((10, 12), np.float32)
    heat[5, 6] = 1.0
    rgb = colorize(heat)
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8
    assert rgb[5, 6, 0] > rgb[5, 6, 2]  # jet: hot is red, cold is blue
    blended = overlay(np.full((10, 12, 1), 0.5, np.float32), heat)
    assert blended.shape == (10, 12, 3) and blended.dtype == np.uint8
    small = overlay(np.zeros((20, 24, 3), np.uint8), heat)  # map resized to the image
    assert small.shape == (20, 24, 3)
    with pytest.raises(ValueError, match="Unknown colormap"):
        colorize(heat, "rainbowish")


def test_min_side_of_parallel_model(parallel_model):
    assert model_min_side(parallel_model) == 8
