"""The augmentation presets' names, apart from their Keras layers so that listing them is cheap."""

AUGMENTATION_PRESETS: dict[str, str] = {
    "none": "no augmentation: returns its input",
    "basic": "flips, rotation up to 15 deg, translation up to 1 % x 10 % (the seed's RandomAffine)",
    "fluid": "mesh distortion 4x4 (magnitude 0.03) + flips + 90 %-area random crop, resized back "
    "(the seed's Augmentor pipeline), one fused resample",
    "gridmask": "basic, then keras-cv GridMask (masked square side U(0, 0.5) x grid unit, grid "
    "rotated up to 0.15 turn, masked pixels 0)",
    "randaugment": "keras-cv RandAugment, 2 ops per image, magnitude 0.5",
    "mix": "keras-cv MixUp (alpha 0.2) or CutMix (alpha 1.0), one of the two per batch; needs labels",
}
"""Known preset names and what each does at strength 1."""
