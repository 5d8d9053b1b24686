"""Classification metrics on arrays: accuracy, confusion matrices, branch diversity, calibration.

Plain numpy in, plain Python / numpy out, no Keras: the same functions score a model's
predictions, its branches', or predictions loaded from disk. Labels may be given as class indices
(N,) or one-hot / probability rows (N, K) everywhere a label is expected.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm


def to_labels(y: Any) -> np.ndarray:
    """Class indices (N,) from indices, or from one-hot / probability rows (N, K)."""
    y = np.asarray(y)
    return np.argmax(y, axis=-1).astype(np.int64) if y.ndim == 2 else y.astype(np.int64)


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of correct predictions."""
    return float(skm.accuracy_score(to_labels(y_true), to_labels(y_pred)))


def bootstrap_accuracy_interval(
    y_true: Any, y_pred: Any, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the accuracy: `resamples` draws of N samples with
    replacement, the (1 - level) / 2 and (1 + level) / 2 quantiles of their accuracies.

    It says how far the accuracy of a small test set could move on another draw of the same
    size; it does not cover a shift between the test images and the images a model will see.
    The same `seed` resamples the same rows for every model scored on the same samples.

    Raises:
        ValueError: no samples, or a level outside (0, 1).
    """
    correct = to_labels(y_true) == to_labels(y_pred)
    if not len(correct):
        raise ValueError("a bootstrap interval needs at least one sample")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    # In chunks, so a large test set does not build one resamples x N index array.
    chunk = max(1, 2**22 // len(correct))
    means = np.concatenate(
        [
            correct[
                rng.integers(0, len(correct), (min(chunk, resamples - start), len(correct)))
            ].mean(axis=1)
            for start in range(0, resamples, chunk)
        ]
    )
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Counts (K, K): row = true class, column = predicted class (scikit-learn's convention)."""
    return skm.confusion_matrix(to_labels(y_true), to_labels(y_pred), labels=range(num_classes))


def disagreement(pred_a: Any, pred_b: Any) -> float:
    """Fraction of samples on which two models predict different classes."""
    return float(np.mean(to_labels(pred_a) != to_labels(pred_b)))


def double_fault(y_true: Any, pred_a: Any, pred_b: Any) -> float:
    """Fraction of samples that both models get wrong (low = complementary mistakes)."""
    y = to_labels(y_true)
    return float(np.mean((to_labels(pred_a) != y) & (to_labels(pred_b) != y)))


def reliability_bins(y_true: Any, probs: Any, num_bins: int = 10) -> dict[str, np.ndarray]:
    """Top-label confidence histogram: per equal-width confidence bin, the count, mean
    confidence and accuracy (NaN for empty bins). Feeds `expected_calibration_error` and the
    reliability plot."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == to_labels(y_true)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # Right-closed bins, with confidence 0 in the first: (0, 1/n], ..., ((n-1)/n, 1].
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    count = np.bincount(which, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, weights=confidence, minlength=num_bins) / count
        acc = np.bincount(which, weights=correct, minlength=num_bins) / count
    return {"edges": edges, "count": count, "confidence": conf, "accuracy": acc}


def expected_calibration_error(y_true: Any, probs: Any, num_bins: int = 10) -> float:
    """Top-label ECE: sum over confidence bins of (bin share) * |accuracy - mean confidence|.

    scikit-learn has no multi-class ECE (`calibration_curve` is binary), hence this one.
    """
    bins = reliability_bins(y_true, probs, num_bins)
    filled = bins["count"] > 0
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(bins["count"][filled] * gap) / bins["count"].sum())


def brier_score(y_true: Any, probs: Any) -> float:
    """Multi-class Brier score: mean over samples of sum_k (p_k - y_k)^2, in [0, 2]."""
    probs = np.asarray(probs, dtype=np.float64)
    # float32 softmax rows miss 1 by rounding, which scikit-learn warns about.
    probs = probs / probs.sum(axis=1, keepdims=True)
    return float(
        skm.brier_score_loss(
            to_labels(y_true), probs, labels=range(probs.shape[1]), scale_by_half=False
        )
    )


def classification_summary(
    y_true: Any, probs: Any, classes: Sequence[str], num_bins: int = 10
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, confusion matrix and calibration of one model.

    Returns:
        A JSON-ready dict: `accuracy`, `balanced_accuracy`, `ece`, `brier`, `confusion_matrix`
        (list of rows), `per_class` ({class: {precision, recall, f1-score, support}}).
    """
    y = to_labels(y_true)
    pred = to_labels(probs)
    labels = list(range(len(classes)))
    report = skm.classification_report(
        y, pred, labels=labels, target_names=list(classes), output_dict=True, zero_division=0
    )
    return {
        "accuracy": accuracy(y, pred),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "ece": expected_calibration_error(y, probs, num_bins),
        "brier": brier_score(y, probs),
        "confusion_matrix": confusion_matrix(y, pred, len(classes)).tolist(),
        "per_class": {c: {k: float(v) for k, v in report[c].items()} for c in classes},
    }


def compare_models(
    y_true: Any, probs_by_model: Mapping[str, Any], classes: Sequence[str], num_bins: int = 10
) -> dict[str, Any]:
    """Summaries of several models on the same samples, and how their mistakes overlap.

    Args:
        y_true: labels (N,) or one-hot (N, K).
        probs_by_model: model name -> probabilities (N, K), e.g. each branch and the merge.
        classes: class names.
        num_bins: confidence bins for the ECE.

    Returns:
        A JSON-ready dict: `classes`, `num_samples`, `models` ({name: `classification_summary`})
        and `pairs`, one entry per pair of models with `disagreement`, `double_fault` and
        `oracle_accuracy` (right when either is right: the most a merge of the two could reach).
    """
    y = to_labels(y_true)
    pairs = []
    for a, b in itertools.combinations(probs_by_model, 2):
        pa, pb = to_labels(probs_by_model[a]), to_labels(probs_by_model[b])
        pairs.append(
            {
                "models": [a, b],
                "disagreement": disagreement(pa, pb),
                "double_fault": double_fault(y, pa, pb),
                "oracle_accuracy": float(np.mean((pa == y) | (pb == y))),
            }
        )
    return {
        "classes": list(classes),
        "num_samples": len(y),
        "models": {
            name: classification_summary(y, p, classes, num_bins)
            for name, p in probs_by_model.items()
        },
        "pairs": pairs,
    }
