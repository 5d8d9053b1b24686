"""The run's runtime, resolved once: strategy, this process's role, dtype policy, XLA and loop.

`resolve_runtime(train_config)` asks TensorFlow everything the run needs to know about the
machine (devices, cluster, precision) before anything else runs, and returns a frozen `Runtime`
that the data, phase and export steps receive. Nothing below it asks the strategy again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras

from trainer.cluster import (
    WorkerRole,
    is_multi_worker,
    make_multi_worker_strategy,
    parse_tf_config,
    role_of,
)
from trainer.config import DISTRIBUTIONS, MIXED_PRECISION_MODES, TRAINING_LOOPS
from trainer.xla import resolve_jit_compile


def resolve_precision(mode: str) -> str:
    """The Keras dtype policy for `--mixed_precision`: `auto` picks mixed_float16 on a GPU of
    compute capability 7.0 or newer (tensor cores) and float32 elsewhere."""
    import tensorflow as tf

    if mode not in MIXED_PRECISION_MODES:
        raise ValueError(f"unknown mixed_precision {mode!r}; known: {MIXED_PRECISION_MODES}")
    if mode == "off":
        return "float32"
    if mode in ("float16", "bfloat16"):
        return f"mixed_{mode}"
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and capability >= (7, 0):
            return "mixed_float16"
    return "float32"


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Sets Keras' global dtype policy for the run and restores the caller's afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def op_determinism(enabled: bool) -> Iterator[None]:
    """`--deterministic`: TensorFlow's op determinism for the block (same inputs, same
    outputs, for every op and for tf.data's order; ops without a deterministic kernel raise).

    It is process-global: every thread of the process runs deterministically while the block
    lasts, and a run in another thread meanwhile too. TensorFlow exports only the switch to
    turn it on; it is turned off again afterwards (through its non-exported counterpart, when
    the caller had not turned it on) so that later runs in the same process, tests and
    benchmarks, run at full speed.
    """
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    was_on = tf_config.is_op_determinism_enabled()
    if enabled:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not was_on:
            tf_config.disable_op_determinism()


def make_strategy(mode: str, tf_config: str | None = None):
    """The tf.distribute strategy for `--distribution`.

    `multi_worker` builds a `MultiWorkerMirroredStrategy` from `tf_config` (default: the
    `TF_CONFIG` environment variable); call it before TensorFlow runs anything else.

    Raises:
        ValueError: an unknown mode, or a missing or malformed TF_CONFIG for multi_worker.
    """
    import tensorflow as tf

    if mode not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {mode!r}; known: {DISTRIBUTIONS}")
    if mode == "multi_worker":
        text = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
        return make_multi_worker_strategy(parse_tf_config(text))
    gpus = tf.config.list_logical_devices("GPU")
    if mode == "mirrored" or (mode == "auto" and len(gpus) > 1):
        # Without GPUs, mirror over the logical CPUs (tests split one CPU into two).
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if mode == "one":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def use_custom_loop(loop: str, strategy) -> bool:
    """Whether stages train through `trainer.custom_loop.fit_stage_distributed` instead of
    `fit`.

    Raises:
        ValueError: an unknown loop, or `fit` under multi_worker (where Keras 3's fit fails).
    """
    if loop not in TRAINING_LOOPS:
        raise ValueError(f"unknown training_loop {loop!r}; known: {TRAINING_LOOPS}")
    if loop == "fit" and is_multi_worker(strategy):
        raise ValueError(
            "training_loop=fit cannot run under multi_worker: Keras 3's fit fails under "
            "MultiWorkerMirroredStrategy (keras-team/keras#20585); use auto or custom"
        )
    return loop == "custom" or is_multi_worker(strategy)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What the machine and cluster mean for this run, decided once.

    Attributes:
        strategy: the tf.distribute strategy every model and optimizer is created under.
        role: this process's place in the cluster (a one-process run is the chief).
        policy: the Keras dtype policy name (`float32`, `mixed_float16`, ...).
        jit_compile: what `compile(jit_compile=...)` receives.
        custom_loop: whether stages train through the custom loop instead of `fit`.
        folder: where this process writes the run (the run folder for the chief).
    """

    strategy: Any
    role: WorkerRole
    policy: str
    jit_compile: bool | str
    custom_loop: bool
    folder: Path

    @property
    def multi_worker(self) -> bool:
        return self.role.num_workers > 1 or is_multi_worker(self.strategy)

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def global_batch(self, per_replica: int) -> int:
        return per_replica * self.replicas

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Where models and optimizers are built: the run's dtype policy and strategy."""
        with dtype_policy(self.policy), self.strategy.scope():
            yield


def worker_folder(output_dir: str, worker_dir: str | None, role: WorkerRole) -> Path:
    """Where this process writes the run: the run folder for the chief; for any other worker
    a folder of its own (it saves everything the chief saves, since saving may read
    distributed variables through collectives every worker must join)."""
    if role.is_chief:
        return Path(output_dir)
    if worker_dir:
        return Path(worker_dir)
    return Path(output_dir) / ".workers" / role.name


def resolve_runtime(train, output_dir: str, worker_dir: str | None = None) -> Runtime:
    """The `Runtime` for a `TrainConfig`; call it before TensorFlow runs anything else (a
    MultiWorkerMirroredStrategy sets up collective ops, which TensorFlow accepts only at
    program start)."""
    strategy = make_strategy(train.distribution)
    role = role_of(strategy)
    return Runtime(
        strategy=strategy,
        role=role,
        policy=resolve_precision(train.mixed_precision),
        jit_compile=resolve_jit_compile(
            train.jit_compile, strategy, deterministic=train.deterministic
        ),
        custom_loop=use_custom_loop(train.training_loop, strategy),
        folder=worker_folder(output_dir, worker_dir, role),
    )
