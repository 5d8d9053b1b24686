"""Evaluation: classification metrics, branch diversity, calibration and their plots.

`classification` is numpy/scikit-learn only; `plots` is the only module touching matplotlib;
`branches` runs a model and writes the per-branch report into a run folder.
"""

from cellkeras.evaluate.branches import evaluate_branches, predict_branches
from cellkeras.evaluate.classification import (
    accuracy,
    brier_score,
    classification_summary,
    compare_models,
    confusion_matrix,
    disagreement,
    double_fault,
    expected_calibration_error,
    reliability_bins,
    to_labels,
)

__all__ = [
    "accuracy",
    "brier_score",
    "classification_summary",
    "compare_models",
    "confusion_matrix",
    "disagreement",
    "double_fault",
    "evaluate_branches",
    "expected_calibration_error",
    "predict_branches",
    "reliability_bins",
    "to_labels",
]
