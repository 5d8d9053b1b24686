"""Calibrating the heat threshold on labelled images, then freezing it.

`calibrate_threshold` sweeps fixed thresholds over the heatmaps of a labelled split and returns
the one with the best pooled F1 (the "frozen" threshold used on new images), and, labelled as
such, the per-image optimum: the F1 reached when every image gets its own best threshold — an
upper bound that needs the answer, reported only to show how much a single threshold costs.

`sweep_threshold` is what `cellkeras calibrate` runs: the same sweep on `DEFAULT_GRID`
(0.02..0.98, step 0.02, wide enough that the optimum is normally inside it), refined past the
edge when the best threshold lies on it, the middle of a plateau of equal F1 chosen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from cellkeras.detect.boxes import BoxParams, heatmap_to_boxes
from cellkeras.evaluate.detection import match_boxes, precision_recall_f1

DEFAULT_GRID = {"start": 0.02, "stop": 0.98, "step": 0.02}
# Past the grid's edges, in finer steps: heat is in [0, 1], and a softmax classifier's heat
# often piles up near 1, where 0.98 may still be too permissive.
_EDGE_STEP = 0.002


def _f1(tp: int, n_pred: int, n_true: int) -> float:
    return precision_recall_f1(tp, n_pred, n_true)["f1"]


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
        thresholds: levels to try (default `DEFAULT_GRID`: 0.02, 0.04, ..., 0.98).
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
    levels = _grid_levels(DEFAULT_GRID) if thresholds is None else thresholds
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


def _grid_levels(grid: dict) -> list[float]:
    count = int(round((grid["stop"] - grid["start"]) / grid["step"])) + 1
    return [round(grid["start"] + i * grid["step"], 4) for i in range(count)]


def _plateau_middle(sweep: list[dict]) -> int:
    """Index of the middle of the longest run of thresholds sharing the best F1 (ties are
    common on small label sets; the middle is the choice least sensitive to the heat's drift)."""
    best = max(row["f1"] for row in sweep)
    runs: list[list[int]] = []
    for i, row in enumerate(sweep):
        if row["f1"] == best:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
    longest = max(runs, key=len)
    return longest[len(longest) // 2]


def sweep_threshold(
    heatmaps: Sequence[np.ndarray],
    true_boxes: Sequence[np.ndarray],
    params: BoxParams | None = None,
    images: Sequence[np.ndarray] | None = None,
    iou_threshold: float = 0.5,
    grid: dict | None = None,
) -> dict:
    """The frozen fixed threshold with the best pooled F1@`iou_threshold`, on a wide grid.

    When the best threshold lies on the grid's first or last level the grid is extended past
    it in steps of 0.002 (towards 0 or 1) and swept again; `refined` says so, and `at_edge`
    says whether the optimum is still on the (extended) edge.

    Returns:
        `calibrate_threshold`'s dict (`threshold`, `f1`, `sweep`, ...) with the plateau's middle
        as the choice, plus `precision`, `recall`, `grid` (start, stop, step), `refined` and
        `at_edge`.
    """
    grid = dict(grid or DEFAULT_GRID)
    levels = _grid_levels(grid)
    result = calibrate_threshold(heatmaps, true_boxes, params, levels, iou_threshold, images=images)
    refined = False
    best = _plateau_middle(result["sweep"])
    if best in (0, len(levels) - 1):
        refined = True
        low, high = levels[0], levels[-1]
        extra = (
            np.arange(low - _EDGE_STEP, 0, -_EDGE_STEP)
            if best == 0
            else np.arange(high + _EDGE_STEP, 1.0, _EDGE_STEP)
        )
        levels = sorted({*levels, *(round(float(t), 4) for t in extra)})
        result = calibrate_threshold(
            heatmaps, true_boxes, params, levels, iou_threshold, images=images
        )
        best = _plateau_middle(result["sweep"])
    row = result["sweep"][best]
    result.update(
        threshold=row["threshold"],
        **precision_recall_f1(row["tp"], row["num_pred"], row["num_true"]),
        grid=grid,
        refined=refined,
        at_edge=best in (0, len(levels) - 1),
    )
    return result
