"""`--jit_compile`: the resolution rule and that the flag reaches the compiled model."""

import json
import types

import pytest

from trainer.xla import JIT_COMPILE_MODES, resolve_jit_compile


def _strategy(replicas):
    return types.SimpleNamespace(num_replicas_in_sync=replicas)


@pytest.mark.parametrize(
    ("mode", "replicas", "on_gpu", "expected"),
    [
        ("auto", 1, False, "auto"),  # Keras' auto: off on a CPU-only machine
        ("auto", 1, True, "auto"),
        ("auto", 2, False, False),  # XLA's collectives fail to compile on CPU
        ("auto", 2, True, "auto"),  # Keras' auto: off under tf.distribute
        ("on", 1, False, True),
        ("on", 4, True, True),
        ("off", 1, True, False),
        ("off", 2, False, False),
    ],
)
def test_resolve_jit_compile(mode, replicas, on_gpu, expected):
    assert resolve_jit_compile(mode, _strategy(replicas), on_gpu=on_gpu) == expected


def test_resolve_jit_compile_refuses_what_fails():
    with pytest.raises(ValueError, match="known: auto, on, off"):
        resolve_jit_compile("xla", _strategy(1), on_gpu=True)
    with pytest.raises(ValueError, match="2 replicas on CPU"):
        resolve_jit_compile("on", _strategy(2), on_gpu=False)
    assert JIT_COMPILE_MODES == ("auto", "on", "off")


def test_auto_is_off_under_multi_worker():
    import tensorflow as tf

    class FakeMultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
        def __init__(self):  # no cluster: only the type matters
            pass

        num_replicas_in_sync = 1

    assert resolve_jit_compile("auto", FakeMultiWorker(), on_gpu=True) is False
    assert resolve_jit_compile("on", FakeMultiWorker(), on_gpu=True) is True


def test_flag_maps_to_the_config():
    from trainer.config import build_config
    from trainer.flags import flag_fields

    assert ("jit_compile", "train.jit_compile") in [(n, k) for n, k, *_ in flag_fields()]
    assert build_config("smoke").train.jit_compile == "auto"
    assert build_config("smoke", {"train.jit_compile": "off"}).train.jit_compile == "off"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["off", "on"])
def test_jit_compile_reaches_the_compiled_model(tmp_path, mode):
    import keras

    from trainer.config import build_config
    from trainer.task import run

    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append(self.model.jit_compile)

    overrides = {"train.augment": "none", "train.jit_compile": mode, "train.schedule": "16:1"}
    if mode == "on":  # Keras compiles no XLA step under op determinism
        with pytest.raises(ValueError, match="nodeterministic"):
            run(build_config("smoke", overrides), verbose=0)
        overrides["train.deterministic"] = False
    config = build_config("smoke", overrides)
    config.output_dir = str(tmp_path / "run")
    metrics = run(config, verbose=0, callbacks=[Record()])
    assert seen == [mode == "on"]
    assert metrics["jit_compile"] is (mode == "on")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["jit_compile"] is (
        mode == "on"
    )
