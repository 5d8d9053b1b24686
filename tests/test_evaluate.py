"""Tests for cellkeras.evaluate: classification metrics, plots and the per-branch report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure

from cellkeras.evaluate import (
    accuracy,
    brier_score,
    compare_models,
    confusion_matrix,
    disagreement,
    double_fault,
    evaluate_branches,
    expected_calibration_error,
    plots,
    predict_branches,
    reliability_bins,
    to_labels,
)
from cellkeras.models import ParallelCNN

CLASSES = ["a", "b", "c"]


def test_to_labels_accepts_indices_and_one_hot():
    np.testing.assert_array_equal(to_labels([2, 0]), [2, 0])
    np.testing.assert_array_equal(to_labels([[0.1, 0.9, 0.0], [1, 0, 0]]), [1, 0])


def test_accuracy_and_confusion_matrix():
    y = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])
    assert accuracy(y, pred) == pytest.approx(4 / 6)
    expected = [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    np.testing.assert_array_equal(confusion_matrix(y, pred, 3), expected)
    # A class never seen still gets its row and column.
    assert confusion_matrix([0, 0], [0, 0], 3).shape == (3, 3)


def test_disagreement_and_double_fault():
    y = np.array([0, 1, 2, 0])
    a = np.array([0, 1, 0, 1])  # wrong on 2, 3
    b = np.array([0, 2, 0, 0])  # wrong on 1, 2
    assert disagreement(a, b) == pytest.approx(0.5)
    assert double_fault(y, a, b) == pytest.approx(0.25)


def test_calibration_of_confident_right_and_wrong_models():
    y = np.array([0, 1, 2, 0])
    perfect = np.eye(3)[y]
    assert expected_calibration_error(y, perfect) == pytest.approx(0.0)
    assert brier_score(y, perfect) == pytest.approx(0.0)
    wrong = np.eye(3)[(y + 1) % 3]
    assert expected_calibration_error(y, wrong) == pytest.approx(1.0)
    assert brier_score(y, wrong) == pytest.approx(2.0)
    # Uniform probabilities: confidence 1/3, accuracy 1/2 (ties pick class 0).
    uniform = np.full((4, 3), 1 / 3)
    assert expected_calibration_error(y, uniform) == pytest.approx(0.5 - 1 / 3)
    assert brier_score(y, uniform) == pytest.approx(2 / 3)


def test_reliability_bins_count_every_sample_once():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=50)
    bins = reliability_bins(rng.integers(0, 3, 50), probs, num_bins=5)
    assert bins["count"].sum() == 50
    assert len(bins["edges"]) == 6


def test_compare_models_pairs_and_summaries():
    y = np.array([0, 1, 2, 0])
    probs = {"x": np.eye(3)[[0, 1, 0, 1]], "y": np.eye(3)[[0, 2, 0, 0]]}
    result = compare_models(y, probs, CLASSES)
    json.dumps(result)  # JSON-ready
    assert result["models"]["x"]["accuracy"] == pytest.approx(0.5)
    (pair,) = result["pairs"]
    assert pair["models"] == ["x", "y"]
    assert pair["double_fault"] == pytest.approx(0.25)
    assert pair["oracle_accuracy"] == pytest.approx(0.75)
    assert result["models"]["y"]["per_class"]["a"]["recall"] == pytest.approx(1.0)


def test_plots_return_figures_and_save_png(tmp_path):
    fig = plots.plot_confusion_matrices(
        {"one": np.eye(3) * 4, "two": np.ones((3, 3))}, CLASSES, subtitles={"one": "acc 1.0"}
    )
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # two matrices and a colour bar
    path = plots.save_figure(fig, tmp_path / "sub" / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    y = np.array([0, 1, 2, 0])
    bins = {"m": reliability_bins(y, np.eye(3)[y])}
    assert isinstance(plots.plot_reliability(bins), Figure)
    assert isinstance(plots.plot_accuracy_comparison({"d": {"m": [0.8, 0.9]}}), Figure)


def _tiny_model(merge="concat"):
    branches = [
        {"preset": "wide_shallow", "filters": [4], "pool_sizes": [0], "dense_units": []},
        {"preset": "deep_narrow", "filters": [4, 4], "pool_sizes": [2, 0], "dense_units": []},
    ]
    return ParallelCNN(len(CLASSES), channels=1, branches=branches, merge=merge)


def _data(n=6):
    rng = np.random.default_rng(0)
    images = rng.random((n, 12, 12, 1), dtype=np.float32)
    labels = rng.integers(0, len(CLASSES), n)
    return images, labels


def test_predict_branches_same_from_arrays_and_dataset():
    model = _tiny_model()
    images, labels = _data()
    y1, p1 = predict_branches(model, (images, labels))
    one_hot = np.eye(len(CLASSES), dtype=np.float32)[labels]
    ds = tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(4)
    y2, p2 = predict_branches(model, ds)
    np.testing.assert_array_equal(y1, labels)
    np.testing.assert_array_equal(y2, labels)
    assert set(p1) == {"merged", "wide_shallow", "deep_narrow"}
    for key in p1:
        np.testing.assert_allclose(p1[key], p2[key], atol=1e-5)
    np.testing.assert_allclose(p1["merged"], model.predict(images, verbose=0), atol=1e-5)


def test_evaluate_branches_writes_json_and_png(tmp_path):
    model = _tiny_model(merge="average")
    result = evaluate_branches(model, _data(), CLASSES, tmp_path / "run")
    written = json.loads((tmp_path / "run" / "branches.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert list(written["models"]) == ["wide_shallow", "deep_narrow", "merged"]
    assert set(written["per_branch_accuracy"]) == {"wide_shallow", "deep_narrow"}
    assert len(written["pairs"]) == 3
    for name in ("confusion_matrices.png", "reliability.png"):
        assert (tmp_path / "run" / name).stat().st_size > 1000


def test_bootstrap_accuracy_interval():
    from cellkeras.evaluate import bootstrap_accuracy_interval

    y = np.zeros(400, np.int64)
    pred = np.where(np.arange(400) < 320, 0, 1)  # 80 % right
    low, high = bootstrap_accuracy_interval(y, pred, seed=1)
    # The binomial standard error is 0.02: about 0.80 +- 0.039.
    assert low < 0.8 < high
    assert abs(low - 0.761) < 0.012 and abs(high - 0.839) < 0.012
    assert (low, high) == bootstrap_accuracy_interval(y, pred, seed=1)  # seeded
    small = bootstrap_accuracy_interval(y[:40], pred[::10], seed=1)
    assert small[1] - small[0] > 2 * (high - low)  # ten times fewer samples, wider
    assert bootstrap_accuracy_interval(y, y) == (1.0, 1.0)
    one_hot = np.eye(2)[pred]
    assert bootstrap_accuracy_interval(y, one_hot, seed=1) == (low, high)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_accuracy_interval([], [])
