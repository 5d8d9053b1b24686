"""Shared fixtures: tiny image files of every kind the data layer must read."""

import json
import os

# Quiet TensorFlow's C++ start-up chatter before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def write_png(path, pixels):
    """Writes RGB (or grey) pixels to a PNG, converting to OpenCV's BGR order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), pixels)
    return path


def checkpointed_epochs(checkpoint) -> int:
    """The epochs the newest whole checkpoint in a run's `checkpoint` folder holds (0 while
    there is none), read while the run may be replacing it."""
    from trainer.checkpoint import latest_checkpoint

    try:
        latest = latest_checkpoint(checkpoint)
        return (
            0
            if latest is None
            else json.loads((latest / "progress.json").read_text())["epochs_done"]
        )
    except (FileNotFoundError, json.JSONDecodeError):  # removed as the next epoch's came
        return 0


TINY_CLASSES = ["alpha", "beta", "gamma"]


def tiny_model():
    """A three-class RGB classifier small enough for command tests: any image size, its last
    conv layer named "last", the same weights every call."""
    import keras

    keras.utils.set_random_seed(0)
    images = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(images)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="last")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(images, keras.layers.Dense(3, activation="softmax")(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A versioned export of `tiny_model()` at 16 px with `TINY_CLASSES`."""
    from cellkeras.serving.export import export_model

    root = tmp_path_factory.mktemp("export")
    export_model(tiny_model(), root, classes=TINY_CLASSES, image_size=16, channels=3)
    return root


@pytest.fixture
def class_tree(tmp_path):
    """root/<class>/<n>.png with 6 images per class, each filled with its class's colour."""
    root = tmp_path / "tree"
    colours = {"alpha": (255, 0, 0), "beta": (0, 255, 0), "gamma": (0, 0, 255)}
    for name, colour in colours.items():
        for i in range(6):
            pixels = np.zeros((20, 24, 3), np.uint8)
            pixels[:] = colour
            pixels[0, 0] = i  # every file differs
            write_png(root / name / f"{i}.png", pixels)
    return root
