"""The classical peer of the learned detector: Otsu's threshold and a distance watershed.

What a bio-imaging user would run without a model (Fiji's "Auto Threshold" then "Watershed",
or scikit-image's tutorial): smooth, threshold at Otsu's level, split touching nuclei at the
peaks of the distance transform. The detection benchmarks score it on the same images as
cellkeras, with the best setting of a small grid (`scripts/_detection_loso.py`).
"""

from __future__ import annotations

import numpy as np

from cellkeras.detect.boxes import BoxParams, heatmap_to_boxes, image_foreground


def otsu_watershed(
    image: np.ndarray,
    sigma: float = 1.0,
    min_distance: float = 5.0,
    offset: float = 0.0,
    mode: str = "otsu",
    min_area: float = 12.0,
    nms_iou: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of Otsu's foreground (shifted by `offset`) split by a distance watershed.

    Args:
        image: (H, W[, C]) image, bright nuclei on a dark background.
        sigma: Gaussian smoothing before the threshold, pixels.
        min_distance: least distance between two nucleus centres, pixels (about a radius).
        offset: shift of Otsu's level on the image's 0.5-99.8 percentile scale.
        mode: "otsu", or "local" to add what is brighter than its neighbourhood
            (`image_foreground`).
        min_area: smallest nucleus kept, pixels: at 12 px nuclei (about 110 px) this drops
            specks of noise; scale it with the nuclei.
        nms_iou: boxes overlapping a better one by more are dropped.

    Returns:
        `(boxes, scores)` as `heatmap_to_boxes` gives them; every score is 1.
    """
    foreground = image_foreground(image, sigma, mode, offset).astype(np.float32)
    params = BoxParams(
        threshold="fixed", value=0.5, min_peak=0.5, split="distance",
        min_distance=min_distance, min_area=min_area, score="mean", nms_iou=nms_iou,
    )  # fmt: skip
    return heatmap_to_boxes(foreground, params)
