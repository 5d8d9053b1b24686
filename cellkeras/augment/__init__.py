"""Augmentation stage: the vectorized fluidity distortion, named presets and previews.

`build_augmenter(preset, strength=...)` is what the data pipeline and the trainer call;
`FluidDistortion` is the layer behind the "fluid" and "basic" presets. Names are imported on
first use, so listing the presets does not load TensorFlow.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "fluid": ["FluidDistortion"],
        "fold": ["fold_geometric"],
        "gridmask": ["SeededGridMask"],
        "intensity": ["IntensityJitter"],
        "preset_names": ["AUGMENTATION_PRESETS"],
        "presets": ["Augmenter", "build_augmenter", "strength_for_size"],
    },
)
