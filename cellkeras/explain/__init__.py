"""Explain: the Grad-CAM family, occlusion maps, faithfulness metrics and overlays.

```
maps = gradcam(model, images)                          # (N, H, W) in [0, 1] at input size
raw = explain(model, images, "gradcam", normalize=False)   # raw maps, for detection
maps = explain(model, images, "scorecam", branch="deep_narrow")
rgb = overlay(images[0], maps[0])                      # uint8 RGB, OpenCV colormap blend
model, info = load_model_for_inference("exports/cells")
```

Arrays in, arrays out; figures live in `cellkeras.explain.plots` (the only module here that
touches matplotlib) and are imported from there. Names are imported on first use, so the
`explain` command's `--help` does not load TensorFlow.
"""

from cellkeras._lazy import lazy_exports

# Eager on purpose: `overlay` is also this module's name, and a lazy lookup would hand back the
# module once anything had imported `cellkeras.explain.overlay`. It needs only OpenCV.
from cellkeras.explain.overlay import colorize as colorize
from cellkeras.explain.overlay import overlay as overlay
from cellkeras.explain.overlay import to_rgb_uint8 as to_rgb_uint8

_EXPORTS = {
    "ENGINES": "cellkeras.explain.methods",
    "Explanation": "cellkeras.explain.cam",
    "GRADIENT_METHODS": "cellkeras.explain.methods",
    "MERGED": "cellkeras.explain.methods",
    "METHODS": "cellkeras.explain.methods",
    "ModelInfo": "cellkeras.inference.loading",
    "SCORE_METHODS": "cellkeras.explain.methods",
    "average_drop": "cellkeras.explain.faithfulness",
    "compute_explanation": "cellkeras.explain.cam",
    "default_layer": "cellkeras.explain.targets",
    "deletion_curve": "cellkeras.explain.faithfulness",
    "expand_image_paths": "cellkeras.inference.loading",
    "explain": "cellkeras.explain.cam",
    "faster_scorecam": "cellkeras.explain.cam",
    "feature_maps": "cellkeras.explain.cam",
    "find_layer": "cellkeras.explain.targets",
    "first_conv_kernels": "cellkeras.explain.cam",
    "gradcam": "cellkeras.explain.cam",
    "gradcam_plus_plus": "cellkeras.explain.cam",
    "keep_region": "cellkeras.explain.faithfulness",
    "layercam": "cellkeras.explain.cam",
    "load_image_for_model": "cellkeras.inference.loading",
    "load_model_for_inference": "cellkeras.inference.loading",
    "normalize_maps": "cellkeras.explain.cam",
    "occlusion": "cellkeras.explain.cam",
    "predict": "cellkeras.explain.cam",
    "scorecam": "cellkeras.explain.cam",
}
__getattr__, __dir__, _lazy_names = lazy_exports(__name__, _EXPORTS)
__all__ = sorted([*_lazy_names, "colorize", "overlay", "to_rgb_uint8"])
