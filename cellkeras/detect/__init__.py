"""Detection: a classifier's heatmap → threshold → contours → boxes, with touching-cell splitting
and tiling of large images.

```
from cellkeras.detect import DetectConfig, detect
dets = detect(model, image, DetectConfig.for_workflow("nuclei"), class_names=["background", "nucleus"])
boxes, scores = dets.boxes, dets.scores         # [x_min, y_min, x_max, y_max] pixels, (K,)
boxes, scores = heatmap_to_boxes(heat, BoxParams(threshold="otsu", split="distance"))
```

`boxes` holds the pure heatmap → boxes steps, `heatmaps` the ways to get a heatmap from a model
(sliding window, Grad-CAM, tiling, rescaling), `dense` the sliding window's heat from one conv-trunk
pass per image, `pipeline` the two put together, `draw` and `coco` the outputs. Scoring and the calibration of
frozen thresholds against labels live in `cellkeras.evaluate`; the `cellkeras detect` command in
`cellkeras.cli.detect`.
"""

from cellkeras.detect.boxes import (
    BoxParams,
    area_limits_px,
    contour_labels,
    heatmap_to_boxes,
    heatmap_to_instances,
    heatmaps_to_boxes,
    label_boxes,
    non_max_suppression,
    peak_markers,
    split_touching,
    threshold_heatmap,
)
from cellkeras.detect.coco import merge_coco, to_coco, xywh_to_xyxy, xyxy_to_xywh
from cellkeras.detect.dense import (
    HEAT_PATHS,
    NotConvertible,
    classifier_heatmap,
    dense_classifier,
    dense_heatmap,
)
from cellkeras.detect.heatmaps import (
    gradcam_heatmap,
    normalize_windows,
    rescale_for_diameter,
    sliding_window_heatmap,
    target_classes,
    tiled_heatmap,
)
from cellkeras.detect.pipeline import (
    HEATMAP_METHODS,
    WORKFLOWS,
    DetectConfig,
    DetectError,
    Detections,
    check_model,
    detect,
)

__all__ = [
    "HEATMAP_METHODS",
    "HEAT_PATHS",
    "NotConvertible",
    "classifier_heatmap",
    "dense_classifier",
    "dense_heatmap",
    "WORKFLOWS",
    "BoxParams",
    "DetectConfig",
    "DetectError",
    "Detections",
    "area_limits_px",
    "check_model",
    "contour_labels",
    "detect",
    "gradcam_heatmap",
    "heatmap_to_boxes",
    "heatmap_to_instances",
    "heatmaps_to_boxes",
    "label_boxes",
    "merge_coco",
    "non_max_suppression",
    "normalize_windows",
    "peak_markers",
    "rescale_for_diameter",
    "sliding_window_heatmap",
    "split_touching",
    "target_classes",
    "threshold_heatmap",
    "tiled_heatmap",
    "to_coco",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]
