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

import lazy_loader

# Eager on purpose: `overlay` is also this module's name, and a lazy lookup would hand back the
# module once anything had imported `cellkeras.explain.overlay`. It needs only OpenCV.
from cellkeras.explain.overlay import colorize as colorize
from cellkeras.explain.overlay import overlay as overlay
from cellkeras.explain.overlay import to_rgb_uint8 as to_rgb_uint8

# Plain imports too: lazy_loader only reaches submodules, and this one loads Keras on call only.
from cellkeras.inference.loading import ModelInfo as ModelInfo
from cellkeras.inference.loading import expand_image_paths as expand_image_paths
from cellkeras.inference.loading import load_image_for_model as load_image_for_model
from cellkeras.inference.loading import load_model_for_inference as load_model_for_inference

__getattr__, _, _lazy_names = lazy_loader.attach(
    __name__,
    submod_attrs={
        "cam": [
            "Explanation",
            "compute_explanation",
            "explain",
            "faster_scorecam",
            "feature_maps",
            "first_conv_kernels",
            "gradcam",
            "gradcam_plus_plus",
            "layercam",
            "normalize_maps",
            "occlusion",
            "predict",
            "scorecam",
        ],
        "faithfulness": ["average_drop", "deletion_curve", "keep_region"],
        "methods": ["ENGINES", "GRADIENT_METHODS", "MERGED", "METHODS", "SCORE_METHODS"],
        "targets": ["default_layer", "find_layer"],
    },
)
__all__ = sorted(
    [
        *_lazy_names,
        "ModelInfo",
        "colorize",
        "expand_image_paths",
        "load_image_for_model",
        "load_model_for_inference",
        "overlay",
        "to_rgb_uint8",
    ]
)


def __dir__() -> list[str]:
    # lazy_loader's own lists only the lazy names.
    return __all__
