"""Tests for cellkeras.models on tiny inputs (8-32 px, batch 2)."""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from cellkeras.models import (
    MERGES,
    OrdinalLogits,
    ParallelCNN,
    SobelEdges,
    WeightedAverage,
    analysis_model,
    branch_models,
    create_model,
    last_conv_layer,
    list_models,
)
from cellkeras.training import fit_joint, fit_stagewise, set_trainable

# tf.config.run_functions_eagerly does not reach tf.data functions; that is fine here.
pytestmark = pytest.mark.filterwarnings("ignore:Even though the:UserWarning")

NUM_CLASSES = 3
# Two small branches of different types keep the multi-branch tests fast.
TINY_BRANCHES = [
    {"preset": "wide_shallow", "filters": [4, 4], "pool_sizes": [2, 0], "dense_units": [8]},
    {"preset": "edge", "filters": [4, 4], "pool_sizes": [2, 0], "dense_units": []},
]
# keras.applications backbones downsample 32x; they are checked at 32 and 48 px.
MIN_SIDE = {"mobilenet_v2": 32, "valid_narrow": 24}


@pytest.fixture
def eager():
    """Run Keras' train/test functions eagerly: tracing them costs more than the tiny steps."""
    previous = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(previous)


def _images(n=2, side=16, channels=3, seed=0):
    return np.random.default_rng(seed).random((n, side, side, channels), dtype=np.float32)


def _one_hot(n=2, seed=0):
    labels = np.random.default_rng(seed).integers(0, NUM_CLASSES, n)
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def _tiny(merge="concat", **kwargs):
    return ParallelCNN(NUM_CLASSES, channels=3, branches=TINY_BRANCHES, merge=merge, **kwargs)


def _weights(model):
    return [w.numpy().copy() for w in model.weights]


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_runs_two_sizes_and_trains(name):
    model = create_model(name, NUM_CLASSES, channels=3)
    side = MIN_SIDE.get(name, 8)
    for s in (side, side + 16):
        probs = keras.ops.convert_to_numpy(model(_images(side=s)))
        assert probs.shape == (2, NUM_CLASSES)
        assert probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    model.compile(optimizer="adam", loss="categorical_crossentropy", run_eagerly=True)
    before = _weights(model)
    model.train_on_batch(_images(side=side + 16), _one_hot())
    changed = [not np.array_equal(a, b.numpy()) for a, b in zip(before, model.weights, strict=True)]
    assert any(changed)
    for branch in model.branch_names:
        assert len(model.get_layer(last_conv_layer(model, branch)).output.shape) == 4


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ValueError, match="parallel_small") as info:
        create_model("no_such_model", NUM_CLASSES)
    assert "no_such_model" in str(info.value)


def test_unknown_branch_and_merge_raise():
    with pytest.raises(ValueError, match="deep_narrow"):
        ParallelCNN(NUM_CLASSES, branches=["no_such_branch"])
    with pytest.raises(ValueError, match="average"):
        ParallelCNN(NUM_CLASSES, branches=TINY_BRANCHES, merge="vote")
    with pytest.raises(ValueError, match="unique"):
        ParallelCNN(NUM_CLASSES, branches=["edge", "edge"])


@pytest.mark.parametrize("name", ["merge", "merged"])
def test_branch_names_the_model_uses_itself_are_rejected(name):
    # A branch "merge" would own a layer `merge_logits`, the head's; "merged" would replace the
    # analysis model's merged output.
    branches = [{**TINY_BRANCHES[0], "name": name}, TINY_BRANCHES[1]]
    with pytest.raises(ValueError, match=f"\\['{name}'\\].*another `name`"):
        ParallelCNN(NUM_CLASSES, branches=branches)


def test_grayscale_and_four_channel_inputs():
    for channels in (1, 4):
        model = ParallelCNN(NUM_CLASSES, channels=channels, branches=TINY_BRANCHES)
        assert model(_images(side=12, channels=channels)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("merge", MERGES)
def test_merge_variants_give_probabilities(merge):
    model = _tiny(merge=merge)
    probs = keras.ops.convert_to_numpy(model(_images()))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.layers[-1].name == "probs"
    outputs = analysis_model(model).predict(_images(), verbose=0)
    assert set(outputs) == {"merged", "wide_shallow", "edge"}
    if merge == "average":
        expected = (outputs["wide_shallow"] + outputs["edge"]) / 2
        np.testing.assert_allclose(outputs["merged"], expected, atol=1e-6)


def test_merge_on_features_concatenates_pooled_features():
    model = _tiny(merge_on="features")
    width = model.get_layer("merge_concat").output.shape[-1]
    # The two branches' last conv widths, and their logits (which keep the branch heads in
    # the graph).
    assert width == 4 + 4 + 2 * NUM_CLASSES


def test_weighted_average_starts_equal_and_learns():
    layer = WeightedAverage()
    a = np.array([[1.0, 0.0]], np.float32)
    b = np.array([[0.0, 1.0]], np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer([a, b])), [[0.5, 0.5]])
    layer.branch_logits.assign([2.0, 0.0])
    w = keras.ops.convert_to_numpy(layer.branch_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer([a, b])), [[w[0], w[1]]], atol=1e-6)
    assert w[0] > w[1]


def test_branch_models_share_weights_and_match_analysis_outputs():
    model = _tiny()
    images = _images()
    branches = branch_models(model)
    assert set(branches) == {"wide_shallow", "edge"}
    outputs = analysis_model(model).predict(images, verbose=0)
    for name, branch in branches.items():
        np.testing.assert_allclose(branch.predict(images, verbose=0), outputs[name], atol=1e-6)
    # Changing a branch's weight through the branch model changes the full model.
    kernel = branches["edge"].get_layer("edge_logits").kernel
    kernel.assign(kernel + 1.0)
    assert np.allclose(model.get_layer("edge_logits").kernel.numpy(), kernel.numpy())


def test_last_conv_naming_convention():
    model = _tiny()
    assert last_conv_layer(model) == "wide_shallow_last_conv"
    assert model.last_conv_layers == {
        "wide_shallow": "wide_shallow_last_conv",
        "edge": "edge_last_conv",
    }
    with pytest.raises(ValueError, match="no branch"):
        last_conv_layer(model, "missing")


def test_set_trainable_changes_the_trainable_set():
    model = _tiny()
    all_weights = len(model.trainable_weights)
    trainable = set_trainable(model, branches=["edge"], head=False)
    assert trainable and all(name.startswith("edge_") for name in trainable)
    edge_weights = {id(w) for w in model.trainable_weights}
    assert 0 < len(edge_weights) < all_weights
    set_trainable(model, branches=False, head=True)
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {
        "merge_hidden",
        "merge_logits",
    }
    set_trainable(model, branches=True, head=True)
    assert len(model.trainable_weights) == all_weights
    with pytest.raises(ValueError, match="Unknown branches"):
        set_trainable(model, branches=["nope"])


def test_frozen_weights_do_not_move_after_recompile(eager):
    model = _tiny()
    set_trainable(model, branches=False, head=True)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    before = {w.path: w.numpy().copy() for w in model.weights}
    model.train_on_batch(_images(), _one_hot())
    moved = {
        p.split("/")[0] for p, v in before.items() if not np.array_equal(v, _by_path(model, p))
    }
    # Frozen batch norm runs in inference mode: its moving statistics stay put too.
    assert moved == {"merge_hidden", "merge_logits"}


def test_fit_stagewise_trains_each_stage_and_restores_trainable(eager):
    model = _tiny()
    data = (_images(4, seed=1), _one_hot(4, seed=1))
    before = {w.path: w.numpy().copy() for w in model.weights}
    histories = fit_stagewise(
        model,
        data,
        data,
        epochs_per_branch=1,
        head_epochs=1,
        optimizer_factory=keras.optimizers.Adam,
        verbose=0,
    )
    assert list(histories) == ["branch/wide_shallow", "branch/edge", "head"]
    assert "val_accuracy" in histories["head"]
    assert all(w.trainable for w in model.weights if w.path in before and "kernel" in w.path)
    changed = {
        p.split("/")[0] for p, v in before.items() if not np.array_equal(v, _by_path(model, p))
    }
    assert {"wide_shallow_logits", "edge_logits", "merge_logits"} <= changed
    assert model.optimizer is not None  # recompiled, ready to evaluate


def _by_path(model, path):
    return next(w.numpy() for w in model.weights if w.path == path)


def test_fit_stagewise_skips_head_of_average_merge(eager):
    model = _tiny(merge="average")
    data = (_images(4), _one_hot(4))
    histories = fit_stagewise(model, data, epochs_per_branch=1, head_epochs=1, verbose=0)
    assert "head" not in histories


@pytest.mark.parametrize("name", ["head", "all"])
def test_stagewise_training_rejects_branches_named_like_its_phases(eager, name):
    # A branch "head" would be taken for the merge head's phase, "all" for joint training.
    branches = [{**TINY_BRANCHES[0], "name": name}, TINY_BRANCHES[1]]
    model = ParallelCNN(NUM_CLASSES, branches=branches)
    data = (_images(4), _one_hot(4))
    before = _weights(model)
    with pytest.raises(ValueError, match=f"named \\['{name}'\\]"):
        fit_stagewise(model, data, epochs_per_branch=1, head_epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(model), strict=True))


def test_fit_joint_reports_merged_and_branch_accuracy(eager):
    model = _tiny()
    data = (_images(4), _one_hot(4))
    history = fit_joint(model, data, data, epochs=1, optimizer="adam", verbose=0)
    for key in ("loss", "accuracy", "val_accuracy", "edge_accuracy", "val_wide_shallow_accuracy"):
        assert key in history, key
    # `loss` is the served (merged) output's; the optimised total adds the branch losses.
    for prefix in ("", "val_"):
        total = history[f"{prefix}loss"][0] + 0.3 * (
            history[f"{prefix}edge_loss"][0] + history[f"{prefix}wide_shallow_loss"][0]
        )
        assert history[f"{prefix}total_loss"][0] == pytest.approx(total, rel=1e-4)
    single = create_model("edge", NUM_CLASSES)
    history = fit_joint(single, data, data, epochs=1, verbose=0)
    assert "val_accuracy" in history


def test_get_config_round_trip():
    model = _tiny(merge="weighted", head_units=5)
    config = model.get_config()
    clone = ParallelCNN.from_config(config)
    assert clone.get_config() == config
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert clone.count_params() == model.count_params()


@pytest.mark.parametrize("merge", ["concat", "weighted"])
def test_keras_save_load_safe_mode_gives_identical_outputs(tmp_path, merge):
    model = _tiny(merge=merge)
    if merge == "weighted":
        model.get_layer("probs").branch_logits.assign([0.3, -0.2])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, ParallelCNN)
    images = _images(side=20)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(images)),
        keras.ops.convert_to_numpy(model(images)),
        atol=1e-6,
    )
    assert loaded.last_conv_layers == model.last_conv_layers
    assert set(branch_models(loaded)) == {"wide_shallow", "edge"}


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_outputs_float32(policy):
    # Passed explicitly ...
    model = _tiny(dtype=policy)
    assert model.get_layer("wide_shallow_last_conv").compute_dtype == policy.split("_")[1]
    probs = model(_images())
    assert keras.ops.convert_to_numpy(probs).dtype == np.float32
    assert model.get_config()["dtype"] == policy
    # ... and under a global policy, as the trainer may set it.
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(policy)
        model = create_model("parallel_small", NUM_CLASSES)
        assert model.get_layer("probs").compute_dtype == "float32"
        for out in analysis_model(model)(_images(side=12)).values():
            assert keras.ops.convert_to_numpy(out).dtype == np.float32
    finally:
        keras.config.set_dtype_policy(previous)


def _reference_sobel(gray):
    gx = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)
    return np.hypot(gx, gy)


def test_sobel_edges_match_opencv_on_a_known_image():
    rng = np.random.default_rng(3)
    gray = np.zeros((24, 20), np.float64)
    gray[6:18, 5:15] = 1.0  # a bright rectangle: strong edges on its border
    gray += 0.1 * rng.random(gray.shape)
    layer = SobelEdges(mode="sobel", normalize=False)
    out = keras.ops.convert_to_numpy(layer(gray[None, :, :, None].astype(np.float32)))[0, ..., 0]
    np.testing.assert_allclose(out, _reference_sobel(gray), atol=1e-4)
    # Three equal channels reduce to the same intensity.
    rgb = np.repeat(gray[None, :, :, None], 3, axis=-1).astype(np.float32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(rgb))[0, ..., 0], _reference_sobel(gray), atol=1e-4
    )


def test_canny_mode_thins_edges_to_the_border():
    image = np.zeros((1, 32, 32, 1), np.float32)
    image[0, 8:24, 8:24] = 1.0
    sobel = keras.ops.convert_to_numpy(SobelEdges(mode="sobel", sigma=1.0)(image))[0, ..., 0]
    canny = keras.ops.convert_to_numpy(SobelEdges(mode="canny")(image))[0, ..., 0]
    assert 0 < np.count_nonzero(canny) < np.count_nonzero(sobel > 0.05)
    # Along a row through the square the edge response keeps one peak per side.
    assert np.count_nonzero(canny[16]) == 2
    assert set(np.flatnonzero(canny[16])) <= {7, 8, 23, 24}
    assert canny.max() <= 1.0
    with_image = SobelEdges(mode="canny", keep_image=True)(image)
    assert with_image.shape == (1, 32, 32, 2)


def test_edge_layer_is_inside_the_saved_graph(tmp_path):
    model = create_model("edge", NUM_CLASSES, channels=1)
    assert isinstance(model.get_layer("edge_edges"), SobelEdges)
    config = model.get_layer("edge_edges").get_config()
    assert SobelEdges.from_config(config).get_config() == config


def test_the_cheap_name_list_matches_the_registry():
    from cellkeras.models.names import DEFAULT_MODEL, MODEL_NAMES

    assert tuple(list_models()) == MODEL_NAMES
    assert DEFAULT_MODEL in MODEL_NAMES


def test_a_features_merge_keeps_every_branch_head_trainable_and_analysable():
    # parallel_large merges on features; joint training with auxiliary branch losses and
    # stage-wise training both need the branch logits in the graph.
    from cellkeras.training import joint_trainer, stagewise_trainer

    model = ParallelCNN(num_classes=NUM_CLASSES, channels=3, branches=TINY_BRANCHES,
                        merge_on="features")  # fmt: skip
    trainer, to_labels = joint_trainer(model, "adam", branch_loss_weight=0.3)
    images = np.random.default_rng(0).random((4, 16, 16, 3), np.float32)
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[[0, 1, 2, 0]]
    x, y = to_labels((images, labels))
    history = trainer.fit(x, y, epochs=1, verbose=0)
    assert set(analysis_model(model)(images)) == {"merged", *model.branch_names}
    assert "loss" in history.history
    first = model.branch_names[0]
    stagewise_trainer(model, first, "adam").fit(images, labels, epochs=1, verbose=0)


def test_ordinal_logits_move_the_class_up_the_order_as_the_score_grows():
    ranks = [2, 0, 3, 1]  # class 1 comes first in time, then 3, 0, 2
    layer = OrdinalLogits(ranks)
    layer.build((None, 2))
    layer.kernel.assign([[1.0], [0.0]])  # the position is the first feature, plus 1.5
    layer.class_bias.assign([-3.0, 0.0, -5.0, -1.0])
    scores = np.linspace(-10, 10, 201, dtype=np.float32)
    features = np.stack([scores, np.zeros_like(scores)], axis=1)
    logits = keras.ops.convert_to_numpy(layer(features))
    distance = np.array(ranks, np.float32) - (scores[:, None] + 1.5)
    expected = layer.class_bias.numpy() - distance**2  # spread 1 to start with
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    order = np.asarray(ranks)[logits.argmax(axis=1)]
    assert np.all(np.diff(order) >= 0)  # never back down the order
    assert order[0] == 0 and order[-1] == 3  # far either way: the first or the last stage
    assert set(order) == {0, 1, 2, 3}  # with these biases every stage has its stretch
    with pytest.raises(ValueError, match="permutation"):
        OrdinalLogits([0, 2, 2])


@pytest.mark.parametrize("merge", ["stacked", "concat"])
def test_an_ordinal_model_saves_loads_and_puts_every_head_in_the_order(tmp_path, merge):
    model = _tiny(merge=merge, class_ranks=[1, 2, 0])
    heads = [layer for layer in model.layers if layer.name.endswith("_logits")]
    assert heads and all(isinstance(layer, OrdinalLogits) for layer in heads)
    assert all(layer.ranks == [1, 2, 0] for layer in heads)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.class_ranks == [1, 2, 0]
    images = _images(side=20)
    probs = keras.ops.convert_to_numpy(loaded(images))
    np.testing.assert_allclose(probs, keras.ops.convert_to_numpy(model(images)), atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="class_ranks has 2 entries for 3 classes"):
        _tiny(class_ranks=[1, 0])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_an_ordinal_head_stays_finite_far_along_the_order_under_mixed_precision(policy):
    model = _tiny(dtype=policy, class_ranks=[0, 1, 2])
    for name in ("wide_shallow_logits", "edge_logits", "merge_logits"):
        head = model.get_layer(name)
        assert head.compute_dtype == "float32"
        head.kernel.assign(np.full(head.kernel.shape, 50.0, np.float32))  # u in the hundreds
        head.log_spread.assign(1.0)  # spread e^4: (r - u)^2 * spread far above float16's max
    probs = keras.ops.convert_to_numpy(model(_images()))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
