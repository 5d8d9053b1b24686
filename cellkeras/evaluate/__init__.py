"""Evaluation: classification metrics, branch diversity, calibration, detection matching and their plots.

`calibrate` fits detection thresholds against labelled images (it sits here, above `detect`,
because it scores `detect`'s boxes with this package's matching).

`classification` is numpy/scikit-learn only; `plots` is the only module touching matplotlib;
`branches` runs a model and writes the per-branch report into a run folder.
"""

from cellkeras.evaluate.branches import evaluate_branches, predict_branches
from cellkeras.evaluate.calibrate import calibrate_threshold
from cellkeras.evaluate.classification import (
    accuracy,
    bootstrap_accuracy_interval,
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
from cellkeras.evaluate.detection import (
    average_precision,
    box_iou,
    coco_ap,
    detection_scores,
    greedy_match,
    image_f1,
    masks_to_boxes,
    match_boxes,
    max_box_acc_v2,
)

__all__ = [
    "accuracy",
    "average_precision",
    "bootstrap_accuracy_interval",
    "box_iou",
    "brier_score",
    "calibrate_threshold",
    "classification_summary",
    "coco_ap",
    "compare_models",
    "confusion_matrix",
    "detection_scores",
    "disagreement",
    "double_fault",
    "evaluate_branches",
    "expected_calibration_error",
    "greedy_match",
    "image_f1",
    "masks_to_boxes",
    "match_boxes",
    "max_box_acc_v2",
    "predict_branches",
    "reliability_bins",
    "to_labels",
]
