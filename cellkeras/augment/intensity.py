"""`IntensityJitter`: a random gain and gamma per image, for brightness that is not the label.

Fluorescence brightness moves with things a classifier should not read: exposure, laser power,
stain batch, photobleaching and, in a time-lapse, expression that builds up over hours. In the
devolearn embryo video the mean pixel value rises about tenfold from the first stage to the
last (`python scripts/real_sets.py embryo6 --brightness`), so brightness alone orders the
frames in time, and a model that leans on it sends the last frames of a stage to the next one.
Each image here gets ``clip(gain * x ** gamma, 0, 1)`` with gain and gamma drawn log-uniformly,
so brightness and contrast stop telling the classes apart and shape has to (nnU-Net's
multiplicative brightness and gamma augmentations, in one step). Where brightness is part of
what a class is, that costs accuracy: on the embryo's time-block cuts it did (0.64 against 0.81
on embryo6:end, seeds 0-1; docs/BENCHMARKS.md "Real data"), since expression there builds up
with development. One gain and gamma serve every channel of an image.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

# Strength 1: gain in [1/2, 2], gamma in [1/1.5, 1.5], both log-uniform (symmetric about 1).
DEFAULT_GAIN = 1.0
DEFAULT_GAMMA = 0.5


@keras.saving.register_keras_serializable(package="cellkeras")
class IntensityJitter(keras.layers.Layer):
    """Per image ``clip(gain * x ** gamma, 0, 1)``, gain and gamma drawn log-uniformly.

    Takes a batch of images (B, H, W, C) float32 in [0, 1], or the keras-cv dict with them
    under "images" (labels, boxes and masks pass through: nothing moves).

    Args:
        gain: the gain is drawn from [1 / (1 + gain), 1 + gain]; 0 keeps brightness.
        gamma: the exponent is drawn from [1 / (1 + gamma), 1 + gamma]; 0 keeps contrast.
        seed: seeds the layer's generator (0 is a valid seed); under a per-batch seed
            (`cellkeras.augment.seeding.drawing_from`) the draws are a function of it alone.
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(
        self,
        gain: float = DEFAULT_GAIN,
        gamma: float = DEFAULT_GAMMA,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if gain < 0 or gamma < 0:
            raise ValueError(f"gain and gamma must be >= 0, got gain={gain}, gamma={gamma}.")
        self.gain = float(gain)
        self.gamma = float(gamma)
        self.seed = seed
        self._random_generator = (
            tf.random.Generator.from_non_deterministic_state()
            if seed is None
            else tf.random.Generator.from_seed(seed)
        )

    def _log_uniform(self, batch: tf.Tensor, spread: float) -> tf.Tensor:
        bound = math.log1p(spread)
        draw = self._random_generator.uniform((batch, 1, 1, 1), -bound, bound)
        return tf.exp(draw)

    def call(self, inputs, training: bool | None = True):
        if training is False:
            return inputs
        data = dict(inputs) if isinstance(inputs, dict) else {"images": inputs}
        images = data["images"]
        if not images.dtype.is_floating:
            raise TypeError(
                f"IntensityJitter takes float images in [0, 1], got {images.dtype.name}: "
                "normalize them first (the pipeline hands it float32)"
            )
        batch = tf.shape(images)[0]
        gain = self._log_uniform(batch, self.gain)
        gamma = self._log_uniform(batch, self.gamma)
        values = tf.maximum(tf.cast(images, tf.float32), 0.0)  # pow of a negative is NaN
        jittered = gain * tf.pow(values, gamma)
        data["images"] = tf.cast(tf.clip_by_value(jittered, 0.0, 1.0), images.dtype)
        return data if isinstance(inputs, dict) else data["images"]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(gain=self.gain, gamma=self.gamma, seed=self.seed)
        return config
