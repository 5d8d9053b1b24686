"""Tests of the synthetic blood-smear generator (tiny sizes: the whole file runs in seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from cellkeras.data.imageset import ImageSet
from cellkeras.data.synthetic import (
    RED_CELL,
    SYNTHETIC_CLASSES,
    generate_cells,
    generate_scene,
)


@pytest.fixture(scope="module")
def cells48() -> ImageSet:
    return generate_cells(160, 48, seed=3)


def _white_box(data: ImageSet, i: int) -> np.ndarray:
    (white,) = np.flatnonzero(data.box_labels[i] >= 0)
    return data.boxes[i][white]


def _inside_box(shape: tuple[int, int], box: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[: shape[0], : shape[1]] + 0.5
    return (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])


def test_same_seed_is_bit_identical_and_other_seed_differs():
    a = generate_cells(12, 32, seed=7)
    b = generate_cells(12, 32, seed=7)
    c = generate_cells(12, 32, seed=8)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    for box_a, box_b in zip(a.boxes, b.boxes, strict=True):
        np.testing.assert_array_equal(box_a, box_b)
    assert not np.array_equal(a.images, c.images)
    # Every image differs, not just one: the per-image streams really depend on the seed.
    assert all(not np.array_equal(x, y) for x, y in zip(a.images, c.images, strict=True))


def test_larger_set_extends_smaller_set():
    small = generate_cells(6, 32, seed=1)
    large = generate_cells(15, 32, seed=1)
    np.testing.assert_array_equal(large.images[:6], small.images)
    np.testing.assert_array_equal(large.labels[:6], small.labels)
    for i in range(6):
        np.testing.assert_array_equal(large.boxes[i], small.boxes[i])
        np.testing.assert_array_equal(large.box_labels[i], small.box_labels[i])


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_dtypes(channels):
    data = generate_cells(8, (40, 56), seed=0, channels=channels)
    assert isinstance(data, ImageSet)
    assert data.images.shape == (8, 40, 56, channels)
    assert data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    assert data.classes == list(SYNTHETIC_CLASSES)
    assert data.name == "synthetic"
    assert len(data.boxes) == len(data.box_labels) == 8
    for boxes, labels in zip(data.boxes, data.box_labels, strict=True):
        assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
        assert np.issubdtype(labels.dtype, np.integer)


def test_grayscale_is_the_colour_image_converted():
    rgb = generate_cells(4, 32, seed=5).images.astype(np.float64)
    gray = generate_cells(4, 32, seed=5, channels=1).images[..., 0].astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.abs(gray - luma).max() <= 1.0


def test_classes_are_balanced_and_subsets_work():
    data = generate_cells(42, 24, seed=2)
    counts = data.class_counts()
    assert counts.max() - counts.min() <= 1 and counts.sum() == 42
    assert sorted(data.labels[:40].tolist()) == sorted(list(range(4)) * 10)
    two = generate_cells(10, 24, seed=2, classes=("neutrophil", "lymphocyte"))
    assert two.classes == ["neutrophil", "lymphocyte"]
    np.testing.assert_array_equal(two.class_counts(), [5, 5])
    for i in range(10):
        assert set(two.box_labels[i].tolist()) <= {int(two.labels[i]), RED_CELL}


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="classes"):
        generate_cells(4, 32, classes=("basophil",))
    with pytest.raises(ValueError, match="channels"):
        generate_cells(4, 32, channels=2)
    with pytest.raises(ValueError, match="seed"):
        generate_cells(4, 32, seed=-1)


def test_boxes_inside_image_with_positive_area(cells48):
    for i, (boxes, labels) in enumerate(zip(cells48.boxes, cells48.box_labels, strict=True)):
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
        assert np.all(boxes[:, 2] <= 48) and np.all(boxes[:, 3] <= 48)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        # Exactly one white cell, of the image's class; all other boxes are red cells.
        assert (labels >= 0).sum() == 1
        assert labels[labels >= 0][0] == cells48.labels[i]
        assert np.all(labels[labels < 0] == RED_CELL)
    # Red cells are there, and at least some are cut by the border (clipped boxes).
    all_boxes = np.concatenate(cells48.boxes)
    assert len(all_boxes) > 3 * len(cells48)
    assert np.any(all_boxes[:, 0] == 0) and np.any(all_boxes[:, 2] == 48)


def test_white_cell_box_holds_the_nucleus(cells48):
    """The centroid of the most purple pixels (nucleus stain) lies in the white cell's box."""
    hits = 0
    for i in range(len(cells48)):
        image = cells48.images[i].astype(np.int32)
        purple = (image[..., 2] - image[..., 1]).ravel()
        top = np.argsort(purple, kind="stable")[-max(3, purple.size // 100) :]
        ys, xs = np.unravel_index(top, image.shape[:2])
        x, y = xs.mean() + 0.5, ys.mean() + 0.5
        box = _white_box(cells48, i)
        hits += bool(box[0] <= x <= box[2] and box[1] <= y <= box[3])
    assert hits >= 0.95 * len(cells48)


def test_white_cells_are_not_always_centred(cells48):
    centres = np.array(
        [(_white_box(cells48, i)[:2] + _white_box(cells48, i)[2:]) / 2 for i in range(len(cells48))]
    )
    assert centres.std(axis=0).min() > 3.0


def test_classes_differ_by_morphology(cells48):
    """Eosinophils carry orange granules; lymphocytes are mostly nucleus; monocytes are biggest."""
    n = len(cells48)
    granules, nucleus_ratio, size = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        image = cells48.images[i].astype(np.int32)
        r, g, b = image[..., 0], image[..., 1], image[..., 2]
        box = _white_box(cells48, i)
        inside = _inside_box(image.shape[:2], box)
        cell_area = np.pi / 4 * (box[2] - box[0]) * (box[3] - box[1])
        granules[i] = ((r - b > 70) & (g > b))[inside].mean()
        nucleus = (b - g > 45) & (g < 0.6 * np.median(g))
        nucleus_ratio[i] = nucleus[inside].sum() / cell_area
        size[i] = np.sqrt(cell_area)
    idx = {name: cells48.labels == k for k, name in enumerate(cells48.classes)}
    mean = {
        name: (granules[m].mean(), nucleus_ratio[m].mean(), size[m].mean())
        for name, m in idx.items()
    }
    others = [c for c in SYNTHETIC_CLASSES if c != "eosinophil"]
    assert all(mean["eosinophil"][0] > 5 * mean[c][0] + 0.01 for c in others)
    others = [c for c in SYNTHETIC_CLASSES if c != "lymphocyte"]
    assert all(mean["lymphocyte"][1] > 1.5 * mean[c][1] for c in others)
    assert mean["monocyte"][2] > mean["neutrophil"][2] > mean["lymphocyte"][2]
    # ...but not trivially: the size ranges of neighbouring classes overlap.
    assert size[idx["monocyte"]].min() < size[idx["neutrophil"]].max()


def test_difficulty_changes_the_images():
    easy = generate_cells(8, 32, seed=4, difficulty=0.0)
    hard = generate_cells(8, 32, seed=4, difficulty=2.0)
    np.testing.assert_array_equal(easy.labels, hard.labels)
    assert not np.array_equal(easy.images, hard.images)


def test_scene_has_many_scattered_white_cells():
    scene = generate_scene((256, 320), num_cells=8, seed=1)
    image, boxes, labels = scene["image"], scene["boxes"], scene["box_labels"]
    assert image.shape == (256, 320, 3) and image.dtype == np.uint8
    assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
    white = boxes[labels >= 0]
    assert len(white) == 8
    np.testing.assert_array_equal(np.bincount(labels[labels >= 0], minlength=4), [2, 2, 2, 2])
    assert np.all(white[:, :2] >= 0) and np.all(white[:, 2] <= 320) and np.all(white[:, 3] <= 256)
    assert np.all(white[:, 2:] > white[:, :2])
    # Scattered: no two white boxes share a centre, and they spread over the field.
    centres = (white[:, :2] + white[:, 2:]) / 2
    dists = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1))
    assert dists[~np.eye(8, dtype=bool)].min() > 10
    assert np.ptp(centres[:, 0]) > 80 and np.ptp(centres[:, 1]) > 60
    assert (labels == RED_CELL).sum() > 20
    again = generate_scene((256, 320), num_cells=8, seed=1, channels=1)
    assert again["image"].shape == (256, 320, 1)
    np.testing.assert_array_equal(again["boxes"], boxes)


def test_scene_too_crowded_raises():
    with pytest.raises(ValueError, match="fit"):
        generate_scene((64, 64), num_cells=30, seed=0)


def _colour_histograms(data: ImageSet, bins: int = 6) -> np.ndarray:
    """Joint RGB histogram per image (square-rooted): position-free colour statistics."""
    q = data.images.astype(np.int64) * bins // 256
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    hist = [np.bincount(i.ravel(), minlength=bins**3) / i.size for i in index]
    return np.sqrt(np.stack(hist))


def test_learnable_but_not_from_mean_colour():
    """Colour statistics of granules, nucleus and cytoplasm separate the classes well above
    chance, while the mean colour (a trivial feature, blurred by stain jitter) does not."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, val = generate_cells(400, 32, seed=10), generate_cells(200, 32, seed=11)

    def score(features) -> float:
        scaler = StandardScaler().fit(features(train))
        clf = LogisticRegression(max_iter=3000, C=0.1)
        clf.fit(scaler.transform(features(train)), train.labels)
        return clf.score(scaler.transform(features(val)), val.labels)

    mean_colour = score(lambda d: d.images.reshape(len(d), -1, 3).mean(axis=1))
    histogram = score(_colour_histograms)
    assert mean_colour < 0.55
    assert histogram > 0.6
    assert histogram > mean_colour + 0.15


@pytest.mark.slow
def test_a_tiny_cnn_learns_the_classes():
    keras = pytest.importorskip("keras")
    from keras import layers

    train, val = generate_cells(480, 32, seed=20), generate_cells(160, 32, seed=21)
    keras.utils.set_random_seed(0)
    blocks = []
    for filters in (16, 32):
        blocks += [
            layers.Conv2D(filters, 3, padding="same", use_bias=False),
            # Few steps: a low momentum lets the moving statistics catch up with the weights.
            layers.BatchNormalization(momentum=0.8),
            layers.ReLU(),
            layers.MaxPooling2D(),
        ]
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Rescaling(1.0 / 255),
            *blocks,
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(4, activation="softmax"),
        ]
    )
    epochs = 6
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=epochs * 15)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(train.images, train.labels, epochs=epochs, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(val.images, val.labels, verbose=0)
    assert accuracy > 0.5  # measured 0.66 (chance is 0.25)
