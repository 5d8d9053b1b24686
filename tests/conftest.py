"""Shared fixtures: tiny image files of every kind the data layer must read."""

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
