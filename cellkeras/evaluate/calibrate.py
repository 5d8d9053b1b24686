"""Calibrating the heat threshold on labelled images, then freezing it.

`calibrate_threshold` sweeps fixed thresholds over the heatmaps of a labelled split and returns
the one with the best pooled F1 (the "frozen" threshold used on new images), and, labelled as
such, the per-image optimum: the F1 reached when every image gets its own best threshold — an
upper bound that needs the answer, reported only to show how much a single threshold costs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from cellkeras.detect.boxes import BoxParams, heatmap_to_boxes
from cellkeras.evaluate.detection import match_boxes


def _f1(tp: int, n_pred: int, n_true: int) -> float:
    return 2.0 * tp / (n_pred + n_true) if n_pred + n_true else 1.0


def calibrate_threshold(
    heatmaps: Sequence[np.ndarray],
    true_boxes: Sequence[np.ndarray],
    params: BoxParams | None = None,
    thresholds: Sequence[float] | None = None,
    iou_threshold: float = 0.5,
    erode: Sequence[int] | None = None,
    images: Sequence[np.ndarray] | None = None,
    min_distance: Sequence[float] | None = None,
) -> dict:
    """The fixed heat threshold (erosion, marker distance) that maximizes pooled F1 on labelled
    heatmaps.

    Args:
        heatmaps: per image (H, W) maps in [0, 1].
        true_boxes: per image (T_i, 4) true boxes.
        params: the other `BoxParams` (their `threshold`/`value` are replaced by "fixed"/t;
            `min_peak` is lowered to t when above it, so the sweep is not cut off).
        thresholds: levels to try (default 0.05, 0.10, ..., 0.95).
        iou_threshold: IoU for a true positive (Hungarian matching).
        erode: erosion sizes to try jointly with the thresholds (default: `params.erode` only).
        images: the images, for `params.extent="image"`.
        min_distance: split-marker distances to try jointly (default: `params.min_distance`).

    Returns:
        A dict: `threshold`, `erode` and `min_distance` (the frozen choice), `f1` (pooled F1
        there), `sweep` (list of `{threshold, erode, min_distance, f1, tp, num_pred,
        num_true}`), `per_image_optimum_f1` (pooled F1 when each image takes its own best
        choice: an upper bound, not a result) and `per_image_thresholds`.
    """
    params = params or BoxParams()
    levels = np.round(np.arange(0.05, 0.96, 0.05), 4) if thresholds is None else thresholds
    grid = [
        (float(t), int(e), float(d))
        for d in (min_distance or [params.min_distance])
        for e in (erode or [params.erode])
        for t in levels
    ]
    n = len(heatmaps)
    images = list(images) if images is not None else [None] * n
    tp = np.zeros((len(grid), n), np.int64)
    n_pred = np.zeros((len(grid), n), np.int64)
    n_true = np.array([len(np.asarray(b).reshape(-1, 4)) for b in true_boxes])
    for i, (t, e, d) in enumerate(grid):
        p = dataclasses.replace(
            params,
            threshold="fixed",
            value=t,
            min_peak=min(params.min_peak, t),
            erode=e,
            min_distance=d,
        )
        for k, (heat, true) in enumerate(zip(heatmaps, true_boxes, strict=True)):
            boxes, _ = heatmap_to_boxes(heat, p, images[k])
            tp[i, k] = len(match_boxes(boxes, true, iou_threshold)[0])
            n_pred[i, k] = len(boxes)
    total = int(n_true.sum())
    pooled = [_f1(int(tp[i].sum()), int(n_pred[i].sum()), total) for i in range(len(grid))]
    best = int(np.argmax(pooled))
    per_image = np.array(
        [
            [_f1(int(tp[i, k]), int(n_pred[i, k]), int(n_true[k])) for k in range(n)]
            for i in range(len(grid))
        ]
    ).reshape(len(grid), n)
    choice = per_image.argmax(axis=0) if n else np.zeros(0, int)
    cols = np.arange(n)
    oracle = _f1(int(tp[choice, cols].sum()), int(n_pred[choice, cols].sum()), total)
    return {
        "threshold": grid[best][0],
        "erode": grid[best][1],
        "min_distance": grid[best][2],
        "f1": float(pooled[best]),
        "sweep": [
            {
                "threshold": t,
                "erode": e,
                "min_distance": d,
                "f1": float(pooled[i]),
                "tp": int(tp[i].sum()),
                "num_pred": int(n_pred[i].sum()),
                "num_true": total,
            }
            for i, (t, e, d) in enumerate(grid)
        ],
        "per_image_optimum_f1": float(oracle),
        "per_image_thresholds": [grid[int(c)][0] for c in choice],
    }
