"""Augmentation presets by name, and the strength ramp for progressive resizing.

`build_augmenter(preset, strength=...)` returns an `Augmenter`: a Keras layer that takes what
the data pipeline hands it after batching, a dict `{"images": (B, H, W, C) float32 in [0, 1],
"labels": (B, K) one-hot}` with optional "bounding_boxes" (keras-cv dict) and
"segmentation_masks", and returns a dict with the same keys, images still float32 in [0, 1]
and the same (H, W). A bare image batch works too. At inference (`training=False`) it is the
identity, so it can also sit at the front of a model.

Strength: 0 is the identity for every preset; 1 is the seed's setting; values in between and
above scale every magnitude linearly (distortion, rotation, translation, crop, RandAugment
magnitude, mixing alpha, the spread of gain and gamma). Flips are on for any strength above
0. The trainer rebuilds the augmenter at every progressive-resizing stage with
`strength_for_size(...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from cellkeras.augment.fluid import FluidDistortion
from cellkeras.augment.gridmask import SeededGridMask
from cellkeras.augment.intensity import DEFAULT_GAIN, DEFAULT_GAMMA, IntensityJitter
from cellkeras.augment.preset_names import AUGMENTATION_PRESETS, FLUID_VARIANTS
from cellkeras.augment.seeding import drawing_from

# The seed's settings, i.e. strength 1.
_ROTATION_DEG = 15.0
_TRANSLATE = (0.01, 0.1)  # torchvision RandomAffine(translate=(0.01, 0.1)): (x, y) fractions
_FLUID_MAGNITUDE = 0.03
_FLUID_GRID = 4
_CROP_AREA_LOST = 0.1  # Augmentor crop_random(percentage_area=0.9)
_RANDAUGMENT_MAGNITUDE = 0.5
_MIXUP_ALPHA = 0.2
_CUTMIX_ALPHA = 1.0
_GRIDMASK_RATIO = 0.5  # keras-cv's default: masked square side U(0, 0.5) x grid unit
_GRIDMASK_ROTATION = 0.15  # keras-cv's default, fraction of a turn
# Layers that draw once per batch through `self._random_generator`, so a per-batch seed can
# stand in for it (`drawing_from`).
_BATCH_DRAWING_LAYERS = (FluidDistortion, IntensityJitter)


@keras.saving.register_keras_serializable(package="cellkeras")
class Augmenter(keras.layers.Layer):
    """A named preset: a chain of augmentation layers applied to a batch dict in turn.

    Args:
        preset: the preset name (kept for logs and `get_config`).
        strength: the strength it was built with.
        layers: augmentation layers, each taking and returning the keras-cv dict.
        num_classes: when set, integer labels (B,) are one-hot encoded before the layers run.
        needs_labels: raise a clear error when called without labels (mixing presets).
        rgb_only: the layers need 3 channels; 1-channel images are run as grey RGB and
            averaged back, other channel counts raise.
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(
        self,
        preset: str,
        strength: float,
        layers: Sequence[keras.layers.Layer] = (),
        num_classes: int | None = None,
        needs_labels: bool = False,
        rgb_only: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.preset = preset
        self.strength = float(strength)
        self.augmentation_layers = list(layers)
        self.num_classes = num_classes
        self.needs_labels = needs_labels
        self.rgb_only = rgb_only

    def call(self, inputs, training: bool | None = True, seed=None):
        """`seed`: an int (2,) tensor the batch's `FluidDistortion` and `IntensityJitter` draws
        are a function of (stateless; `cellkeras.data.make_dataset` passes one per batch), and
        so are `SeededGridMask`'s, image by image; None draws from the layers' seeded
        generators. Other keras-cv layers always draw from their generators."""
        if training is False or not self.augmentation_layers:
            return inputs
        is_dict = isinstance(inputs, dict)
        data = dict(inputs) if is_dict else {"images": inputs}
        if self.needs_labels and "labels" not in data:
            raise ValueError(
                f"augmentation preset {self.preset!r} mixes labels; call it on a dict with "
                "'images' and one-hot 'labels'."
            )
        if "labels" in data and self.num_classes and data["labels"].shape.rank == 1:
            data["labels"] = tf.one_hot(tf.cast(data["labels"], tf.int32), self.num_classes)
        channels = data["images"].shape[-1]
        if self.rgb_only and channels not in (1, 3):
            raise ValueError(
                f"augmentation preset {self.preset!r} works on 1- or 3-channel images, "
                f"got {channels} channels; use 'fluid' or 'basic' for other stains."
            )
        grey = self.rgb_only and channels == 1
        if grey:
            data["images"] = tf.image.grayscale_to_rgb(data["images"])
        for index, layer in enumerate(self.augmentation_layers):
            if seed is None:
                data = layer(data)
                continue
            layer_seed = tf.random.experimental.stateless_fold_in(seed, index)
            if isinstance(layer, _BATCH_DRAWING_LAYERS):
                with drawing_from(layer, layer_seed):
                    data = layer(data)
            elif isinstance(layer, SeededGridMask):
                with layer.seeded(layer_seed):
                    data = layer(data)
            else:
                data = layer(data)
        data = dict(data)
        if grey:
            data["images"] = tf.reduce_mean(data["images"], axis=-1, keepdims=True)
        if is_dict:
            return data
        return data["images"]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            preset=self.preset,
            strength=self.strength,
            layers=[
                keras.saving.serialize_keras_object(layer) for layer in self.augmentation_layers
            ],
            num_classes=self.num_classes,
            needs_labels=self.needs_labels,
            rgb_only=self.rgb_only,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> Augmenter:
        config = dict(config)
        config["layers"] = [keras.saving.deserialize_keras_object(c) for c in config["layers"]]
        return cls(**config)


def _basic_geometry(strength: float, seed: int | None) -> dict[str, Any]:
    """`FluidDistortion`'s arguments for the "basic" flips, rotation and translation (no warp)."""
    return dict(
        magnitude=0.0,
        flip_horizontal=True,
        flip_vertical=True,
        rotation=_ROTATION_DEG * strength,
        translate=(_TRANSLATE[0] * strength, _TRANSLATE[1] * strength),
        seed=seed,
    )


def build_augmenter(
    preset: str,
    image_size: int | tuple[int, int] | None = None,
    strength: float = 1.0,
    seed: int | None = None,
    num_classes: int | None = None,
    **kw,
) -> Augmenter:
    """The augmentation layer for a preset name.

    Args:
        preset: one of `AUGMENTATION_PRESETS`.
        image_size: the size the pipeline feeds. Accepted for a uniform call from the trainer;
            no preset needs it, since every magnitude is a fraction of the image size.
        strength: 0 = identity, 1 = the seed's setting, linear in between and beyond (see the
            module docstring).
        seed: seeds every random layer of the preset (reproducible sequence of draws).
        num_classes: one-hot encodes integer labels (B,) before mixing; one-hot labels need
            nothing.
        **kw: overrides for the preset's main layer: `FluidDistortion` arguments for "basic" and
            "fluid" (e.g. `mode="elastic"`, `bounding_box_format="xyxy"`), `IntensityJitter`
            arguments for "intensity", `SeededGridMask` arguments for "gridmask", `RandAugment`
            arguments for "randaugment".

    Returns:
        An `Augmenter` layer.

    Raises:
        ValueError: unknown preset (the message lists the known ones) or negative strength.
    """
    del image_size  # every preset is size-agnostic; see Args
    if preset not in AUGMENTATION_PRESETS:
        raise ValueError(
            f"Unknown augmentation preset {preset!r}; known presets: "
            f"{', '.join(AUGMENTATION_PRESETS)}."
        )
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}.")
    s = float(strength)
    common = {"preset": preset, "strength": s, "num_classes": num_classes}
    if preset in FLUID_VARIANTS:
        factor, field = FLUID_VARIANTS[preset]
        fluid = build_augmenter("fluid", strength=s * factor, seed=seed, **{"mode": field, **kw})
        return Augmenter(layers=fluid.augmentation_layers, **common)
    if preset == "none" or s == 0:
        return Augmenter(**common)
    if preset == "basic":
        return Augmenter(layers=[FluidDistortion(**{**_basic_geometry(s, seed), **kw})], **common)
    if preset == "intensity":
        args = dict(gain=DEFAULT_GAIN * s, gamma=DEFAULT_GAMMA * s, seed=seed)
        return Augmenter(layers=[IntensityJitter(**{**args, **kw})], **common)
    if preset == "gridmask":
        # GridMask (Chen et al. 2020) is meant on top of the usual geometric augmentation, so
        # the preset is "basic" followed by the mask; compared with "basic" it isolates the mask.
        mask = dict(
            ratio=(0.0, min(1.0, _GRIDMASK_RATIO * s)),
            rotation_factor=_GRIDMASK_ROTATION,
            seed=seed,
        )
        layers = [FluidDistortion(**_basic_geometry(s, seed)), SeededGridMask(**{**mask, **kw})]
        return Augmenter(layers=layers, **common)
    if preset == "fluid":
        args = dict(
            mode="mesh",
            magnitude=_FLUID_MAGNITUDE * s,
            grid=_FLUID_GRID,
            flip_horizontal=True,
            flip_vertical=True,
            crop_area=max(0.25, 1.0 - _CROP_AREA_LOST * s),
            seed=seed,
        )
        return Augmenter(layers=[FluidDistortion(**{**args, **kw})], **common)
    return _keras_cv_augmenter(preset, s, seed, common, kw)


def _keras_cv_augmenter(
    preset: str, s: float, seed: int | None, common: dict, kw: dict
) -> Augmenter:
    """The presets built from keras-cv layers: "randaugment" and "mix"."""
    import keras_cv  # imported here: keras-cv's full layer set is slow to import

    # keras-cv's vectorized layers test `if seed:`, so seed 0 would draw from TensorFlow's
    # unseeded global generator (which op determinism refuses): shift every seed off 0. Some
    # layers RandAugment makes take no seed at all and keep the global generator, so it is
    # replaced by one of `seed` (process-wide: a later unseeded user of it draws from it too).
    if seed is not None:
        seed += 1
        tf.random.set_global_generator(tf.random.Generator.from_seed(seed))

    if preset == "randaugment":
        args = dict(
            value_range=(0.0, 1.0),
            augmentations_per_image=2,
            magnitude=min(1.0, _RANDAUGMENT_MAGNITUDE * s),
            seed=seed,
        )
        return Augmenter(
            layers=[keras_cv.layers.RandAugment(**{**args, **kw})], rgb_only=True, **common
        )
    # "mix": one of MixUp / CutMix per batch, as timm alternates them.
    choice = keras_cv.layers.RandomChoice(
        [
            keras_cv.layers.MixUp(alpha=_MIXUP_ALPHA * s, seed=seed),
            keras_cv.layers.CutMix(alpha=_CUTMIX_ALPHA * s, seed=seed),
        ],
        batchwise=True,
        seed=seed,
    )
    return Augmenter(layers=[choice], needs_labels=True, **common)


def strength_for_size(
    image_size: int,
    min_size: int,
    max_size: int,
    start: float = 0.3,
    end: float = 1.0,
) -> float:
    """Augmentation strength for a progressive-resizing stage, EfficientNetV2-style.

    Small early images get weak augmentation and the final size full strength: strength grows
    linearly with the image side from `start` at `min_size` to `end` at `max_size` (clamped
    outside). Pass the result to `build_augmenter(..., strength=...)`.

    Args:
        image_size: this stage's image side (the larger side for non-square images).
        min_size: the first stage's side.
        max_size: the last stage's side.
        start: strength at `min_size`.
        end: strength at `max_size`.

    Returns:
        The strength for this stage.
    """
    if max_size <= min_size:
        return float(end)
    t = (image_size - min_size) / (max_size - min_size)
    t = min(1.0, max(0.0, t))
    return float(start + (end - start) * t)
