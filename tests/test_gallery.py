"""Tests of the class gallery (in-memory and file-backed image sets)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cellkeras.data.gallery import _load_for_display, draw_boxes, draw_gallery
from cellkeras.data.imageset import ImageSet
from cellkeras.data.synthetic import RED_CELL, generate_cells


def _read_png(path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} is not a readable image"
    return image


def test_gallery_of_synthetic_set(tmp_path):
    data = generate_cells(12, 32, seed=0)
    out = draw_gallery(data, tmp_path / "sub" / "g.png", per_class=4, title="t")
    image = _read_png(out)
    assert image.shape[0] > 200 and image.shape[1] > 300


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3])
def test_gallery_of_any_dtype(tmp_path, dtype, channels):
    rng = np.random.default_rng(0)
    scale = {np.uint8: 255, np.uint16: 4095, np.float32: 1.0}[dtype]
    images = (rng.random((6, 20, 30, channels)) * scale).astype(dtype)
    data = ImageSet(classes=["a", "b", "c"], labels=[0, 1, 2, 0, 1, 1], images=images)
    _read_png(draw_gallery(data, tmp_path / "g.png", per_class=3))


def test_gallery_of_file_backed_set(tmp_path):
    paths = []
    for i in range(4):
        gray16 = np.full((24, 24), 1000 * (i + 1), dtype=np.uint16)
        gray16[8:16, 8:16] = 4000
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), gray16)
        paths.append(str(path))
    colour = np.zeros((24, 24, 3), dtype=np.uint8)
    colour[..., 2] = 255  # red in BGR
    cv2.imwrite(str(tmp_path / "red.png"), colour)
    paths.append(str(tmp_path / "red.png"))
    data = ImageSet(classes=["x", "y"], labels=[0, 0, 1, 1, 1], paths=paths)
    assert _load_for_display(data, 4)[0, 0].tolist() == [255, 0, 0]  # BGR file -> RGB
    assert _load_for_display(data, 0).dtype == np.uint16
    _read_png(draw_gallery(data, tmp_path / "g.png", per_class=2, draw_boxes=False))


def test_missing_file_raises(tmp_path):
    data = ImageSet(classes=["x"], labels=[0], paths=[str(tmp_path / "nope.png")])
    with pytest.raises(OSError, match="nope"):
        draw_gallery(data, tmp_path / "g.png")


def test_draw_boxes_colours_white_cells_and_greys_red_cells():
    image = np.full((40, 40, 3), 255, dtype=np.uint8)
    boxes = np.array([[5, 5, 20, 20], [22, 22, 38, 38]], dtype=np.float32)
    out = draw_boxes(image, boxes, np.array([1, RED_CELL]))
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    left = out[12, 5].astype(int)  # on the class box's left edge: coloured, not grey
    assert left.max() - left.min() > 50
    right = out[30, 22].astype(int)  # on the red cell's edge: grey
    assert right.max() - right.min() < 10 and right.max() < 255
