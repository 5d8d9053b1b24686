"""Augmentation stage: the vectorized fluidity distortion, named presets and previews.

`build_augmenter(preset, strength=...)` is what the data pipeline and the trainer call;
`FluidDistortion` is the layer behind the "fluid" and "basic" presets. Names are imported on
first use, so listing the presets does not load TensorFlow.
"""

from cellkeras._lazy import lazy_exports

_EXPORTS = {
    "AUGMENTATION_PRESETS": "cellkeras.augment.preset_names",
    "Augmenter": "cellkeras.augment.presets",
    "FluidDistortion": "cellkeras.augment.fluid",
    "build_augmenter": "cellkeras.augment.presets",
    "strength_for_size": "cellkeras.augment.presets",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
