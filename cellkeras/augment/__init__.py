"""Augmentation stage: the vectorized fluidity distortion, named presets and previews.

`build_augmenter(preset, strength=...)` is what the data pipeline and the trainer call;
`FluidDistortion` is the layer behind the "fluid" and "basic" presets.
"""

from cellkeras.augment.fluid import FluidDistortion
from cellkeras.augment.presets import (
    AUGMENTATION_PRESETS,
    Augmenter,
    build_augmenter,
    strength_for_size,
)

__all__ = [
    "AUGMENTATION_PRESETS",
    "Augmenter",
    "FluidDistortion",
    "build_augmenter",
    "strength_for_size",
]
