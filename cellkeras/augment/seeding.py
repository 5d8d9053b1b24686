"""Per-batch seeds for augmentation layers: a batch's draws as a function of its seed alone.

A `tf.random.Generator` (what `FluidDistortion` and keras-cv's layers draw from) is state that
advances with every call, so what a batch draws depends on how many batches were augmented
before it, and, inside a parallel `tf.data` map, on which thread got there first; a resumed
run, whose generator starts afresh, replays the first epoch's draws. `StatelessDraws` stands
in for the generator during one call, with its `uniform` and `normal` drawn by stateless ops
from a seed, which `cellkeras.data.make_dataset` derives from (run seed, epoch, batch index).

It only fits layers that draw once per batch with batch-shaped calls (`FluidDistortion`,
`IntensityJitter`): keras-cv layers that draw inside a `tf.map_fn` over images would give
every image of the batch the same draws, so they keep their generators.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import tensorflow as tf


class StatelessDraws:
    """The `uniform` and `normal` of a `tf.random.Generator`, drawn statelessly from `seed`
    (an int (2,) tensor); each call folds in its own count, so two calls differ."""

    def __init__(self, seed: tf.Tensor):
        self._seed = tf.cast(seed, tf.int64)
        self._calls = 0

    def _next_seed(self) -> tf.Tensor:
        self._calls += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._calls)

    def uniform(self, shape, minval=0, maxval=None, dtype=tf.float32, name=None):
        seed = self._next_seed()
        return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype, name=name)

    def normal(self, shape, mean=0.0, stddev=1.0, dtype=tf.float32, name=None):
        seed = self._next_seed()
        return tf.random.stateless_normal(shape, seed, mean, stddev, dtype, name=name)


@contextlib.contextmanager
def drawing_from(layer, seed: tf.Tensor) -> Iterator[None]:
    """Within the block, `layer` draws from `seed` instead of its generator (the swap happens
    while the caller's function is traced, so the traced graph holds the stateless ops)."""
    generator = layer._random_generator
    layer._random_generator = StatelessDraws(seed)
    try:
        yield
    finally:
        layer._random_generator = generator
