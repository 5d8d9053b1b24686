"""Explain: the Grad-CAM family, occlusion maps, faithfulness metrics and overlays.

```
maps = gradcam(model, images)                          # (N, H, W) in [0, 1] at input size
raw = explain(model, images, "gradcam", normalize=False)   # raw maps, for detection
maps = explain(model, images, "scorecam", branch="deep_narrow")
rgb = overlay(images[0], maps[0])                      # uint8 RGB, OpenCV colormap blend
model, info = load_model_for_inference("exports/cells")
```

Arrays in, arrays out; figures live in `cellkeras.explain.plots` (the only module here that
touches matplotlib) and are imported from there.
"""

from cellkeras.explain.cam import (
    ENGINES,
    GRADIENT_METHODS,
    MERGED,
    METHODS,
    SCORE_METHODS,
    Explanation,
    compute_explanation,
    default_layer,
    explain,
    faster_scorecam,
    feature_maps,
    find_layer,
    first_conv_kernels,
    gradcam,
    gradcam_plus_plus,
    layercam,
    normalize_maps,
    occlusion,
    predict,
    scorecam,
)
from cellkeras.explain.faithfulness import average_drop, deletion_curve, keep_region
from cellkeras.explain.loading import (
    ModelInfo,
    expand_image_paths,
    load_image_for_model,
    load_model_for_inference,
)
from cellkeras.explain.overlay import colorize, overlay, to_rgb_uint8

__all__ = [
    "ENGINES",
    "GRADIENT_METHODS",
    "MERGED",
    "METHODS",
    "SCORE_METHODS",
    "Explanation",
    "ModelInfo",
    "average_drop",
    "colorize",
    "compute_explanation",
    "default_layer",
    "deletion_curve",
    "expand_image_paths",
    "explain",
    "faster_scorecam",
    "feature_maps",
    "find_layer",
    "first_conv_kernels",
    "gradcam",
    "gradcam_plus_plus",
    "keep_region",
    "layercam",
    "load_image_for_model",
    "load_model_for_inference",
    "normalize_maps",
    "occlusion",
    "overlay",
    "predict",
    "scorecam",
    "to_rgb_uint8",
]
