"""The augmentation presets' names, apart from their Keras layers so that listing them is cheap."""

AUGMENTATION_PRESETS: dict[str, str] = {
    "none": "no augmentation: returns its input",
    "basic": "flips, rotation up to 15 deg, translation up to 1 % x 10 % (the seed's RandomAffine)",
    "fluid": "mesh distortion 4x4 (magnitude 0.03) + flips + 90 %-area random crop, resized back "
    "(the seed's Augmentor pipeline), one fused resample",
    "gridmask": "basic, then keras-cv GridMask (masked square side U(0, 0.5) x grid unit, grid "
    "rotated up to 0.15 turn, masked pixels 0)",
    "randaugment": "keras-cv RandAugment, 2 ops per image, magnitude 0.5",
    "intensity": "per image, gain 0.5-2x and gamma 0.67-1.5 (log-uniform), clipped to [0, 1]: "
    "brightness and contrast that drift with exposure or stain stop telling classes apart",
    "mix": "keras-cv MixUp (alpha 0.2) or CutMix (alpha 1.0), one of the two per batch; needs labels",
}
"""Known preset names and what each does at strength 1."""

# Variants of "fluid" that the augmentation study compares (scripts/experiment_augment.py),
# named so the trainer's --augment takes them as they are: (strength factor, displacement
# field). The factor multiplies "fluid"'s strength at every stage of a schedule.
FLUID_VARIANTS: dict[str, tuple[float, str]] = {
    "fluid_half": (0.5, "mesh"),
    "fluid_double": (2.0, "mesh"),
    "fluid_elastic": (1.0, "elastic"),
}
AUGMENTATION_PRESETS.update(
    {
        name: f"'fluid' at {factor:g}x its strength, {field} field"
        for name, (factor, field) in FLUID_VARIANTS.items()
    }
)
