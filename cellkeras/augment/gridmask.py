"""`SeededGridMask`: keras-cv's `GridMask`, with draws that a seed fully fixes.

keras-cv's `GridMask` (Chen et al. 2020: hide a rotated grid of squares so the model cannot
rely on one part of the cell) draws its grid ratio from a `FactorSampler` built on the legacy
`tf.random.uniform`, whose op seeds come from a per-process counter: two layers with the same
seed give different masks. Here the ratio comes from the layer's own `tf.random.Generator`, like
the unit size and offsets already do. Under a per-batch seed (`cellkeras.augment.seeding`,
`Augmenter(seed=...)`), each image's mask and rotation are drawn statelessly from that seed
folded with the image's index in the batch, so a batch's masks are a function of its seed
alone, whatever thread of a parallel `tf.data` map runs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf
from keras_cv.layers import GridMask

from cellkeras.augment.seeding import StatelessDraws


@keras.saving.register_keras_serializable(package="cellkeras")
class SeededGridMask(GridMask):
    """keras-cv `GridMask` with seed-reproducible draws.

    Args:
        ratio: (low, high) range of the ratio of a masked square's side to the grid unit,
            drawn uniformly per image; keras-cv's default (0, 0.5).
        rotation_factor: maximum grid rotation as a fraction of a full turn (keras-cv's).
        fill_value: value of masked pixels, in the images' units.
        seed: makes the sequence of draws reproducible; 0 is a valid seed.
        **kwargs: passed to keras-cv's `GridMask`.
    """

    def __init__(
        self,
        ratio: tuple[float, float] = (0.0, 0.5),
        rotation_factor: float = 0.15,
        fill_value: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        low, high = (float(r) for r in ratio)
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"GridMask ratio must satisfy 0 <= low <= high <= 1, got {ratio!r}.")
        # keras-cv tests `if seed:`, so seed 0 would fall back to the unseeded global generator.
        inner_seed = None if seed is None else seed + 1
        super().__init__(
            ratio_factor=(low, high),
            rotation_factor=rotation_factor,
            fill_value=fill_value,
            seed=inner_seed,
            **kwargs,
        )
        self.ratio = (low, high)
        self.seed = seed
        self._batch_seed: tf.Tensor | None = None
        self.ratio_factor = self._draw_ratio

    def _draw_ratio(self) -> tf.Tensor:
        return self._random_generator.uniform((), self.ratio[0], self.ratio[1])

    @contextlib.contextmanager
    def seeded(self, seed: tf.Tensor) -> Iterator[None]:
        """Within the block, image i of a batch draws from `fold_in(seed, i)` only."""
        self._batch_seed = seed
        try:
            yield
        finally:
            self._batch_seed = None

    def _batch_augment(self, inputs):
        if self._batch_seed is None:
            return super()._batch_augment(inputs)
        seed = self._batch_seed
        images = inputs["images"]
        index = tf.range(tf.shape(images)[0])

        def one(args):
            data, i = args
            image_seed = tf.random.experimental.stateless_fold_in(seed, i)
            rotate = self.random_rotate
            generators = self._random_generator, rotate._random_generator
            self._random_generator = StatelessDraws(image_seed)
            rotate._random_generator = StatelessDraws(
                tf.random.experimental.stateless_fold_in(image_seed, 1)
            )
            try:
                return self._augment(data)
            finally:
                self._random_generator, rotate._random_generator = generators

        signature = {key: tf.TensorSpec(v.shape[1:], v.dtype) for key, v in inputs.items()}
        return tf.map_fn(one, (inputs, index), fn_output_signature=signature)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("ratio_factor", None)
        config.update(ratio=list(self.ratio), seed=self.seed)
        return config
