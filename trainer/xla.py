"""`--jit_compile`: whether the training step is compiled with XLA.

`resolve_jit_compile(mode, strategy)` turns the flag into what Keras' `compile(jit_compile=...)`
takes. "auto" keeps the trainer's long-standing choice: off under multi-worker (cross-worker
collectives inside XLA are untested here) and for multi-replica runs on CPU (XLA's collectives
fail to compile there), otherwise Keras' own "auto", which compiles on a GPU and not on a
CPU-only machine or under a tf.distribute strategy. "on" forces XLA, "off" turns it off.
Keras compiles nothing with XLA while TensorFlow's op determinism is on (`--deterministic`, the
default), so "auto" runs without XLA then and "on" asks for `--nodeterministic`.
`scripts/gpu_bench.py` measures both on a GPU.
"""

from __future__ import annotations

from typing import Any

JIT_COMPILE_MODES = ("auto", "on", "off")


def _is_multi_worker(strategy: Any) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def resolve_jit_compile(
    mode: str, strategy: Any, *, on_gpu: bool | None = None, deterministic: bool = False
) -> bool | str:
    """The `jit_compile` argument of `compile` for `--jit_compile=mode`.

    Args:
        mode: "auto", "on" or "off".
        strategy: the run's tf.distribute strategy (its `num_replicas_in_sync` is read).
        on_gpu: whether the run has a GPU; None asks TensorFlow for logical GPU devices.
        deterministic: whether the run has op determinism on.

    Returns:
        False, True, or "auto" (Keras decides at compile time).

    Raises:
        ValueError: for an unknown mode (the message lists the known ones), and for "on" with
            several replicas on CPU, where XLA's collectives fail to compile, and for "on" under
            op determinism, where Keras would quietly train without XLA.
    """
    if mode not in JIT_COMPILE_MODES:
        raise ValueError(f"unknown jit_compile {mode!r}; known: {', '.join(JIT_COMPILE_MODES)}")
    if mode == "off":
        return False
    if mode == "on" and deterministic:
        raise ValueError(
            "jit_compile=on with --deterministic (the default): Keras compiles no XLA step "
            "under op determinism; add --nodeterministic"
        )
    if on_gpu is None:
        on_gpu = _has_gpu()
    multi_replica_cpu = not on_gpu and strategy.num_replicas_in_sync > 1
    if mode == "on":
        if multi_replica_cpu:
            raise ValueError(
                f"jit_compile=on with {strategy.num_replicas_in_sync} replicas on CPU: XLA's "
                "collectives fail to compile there; use --jit_compile=auto or off"
            )
        return True
    if multi_replica_cpu or _is_multi_worker(strategy):
        return False
    return "auto"
