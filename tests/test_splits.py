"""Block splits of ordered (video) data."""

import numpy as np
import pytest

from cellkeras.data.splits import block_split


def video_like(counts=(100, 60, 40), fps=5.0):
    """Consecutive classes of frames, as a time-lapse cut into stages would give (shuffled)."""
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    order = np.arange(len(labels)) / fps
    perm = np.random.default_rng(1).permutation(
        len(labels)
    )  # the split must not rely on input order
    return order[perm], labels[perm]


def sorted_positions(order, labels, cls):
    """index -> rank of the frame in its class's time order."""
    idx = np.flatnonzero(labels == cls)
    idx = idx[np.argsort(order[idx], kind="stable")]
    return {int(i): r for r, i in enumerate(idx)}


@pytest.mark.parametrize("gap", [0, 1, 3])
def test_gap_separates_validation_from_training(gap):
    order, labels = video_like()
    train, val = block_split(order, labels, 0.2, block_size=8, gap=gap, seed=3)
    assert len(np.intersect1d(train, val)) == 0
    for cls in np.unique(labels):
        rank = sorted_positions(order, labels, cls)
        t = np.array([rank[i] for i in train if labels[i] == cls])
        v = np.array([rank[i] for i in val if labels[i] == cls])
        assert len(t) and len(v)
        assert np.abs(t[:, None] - v[None, :]).min() > gap


def test_fraction_spread_and_blocks_are_contiguous():
    order, labels = video_like(counts=(200,))
    train, val = block_split(order, labels, 0.25, block_size=10, gap=2, seed=0)
    # 5 of 20 blocks; the guard gaps cost training at most 2 * 2 frames per validation block.
    assert 0.24 <= len(val) / (len(train) + len(val)) <= 0.28
    frames = np.sort(np.rint(order[val] * 5).astype(int))
    runs = np.split(frames, np.flatnonzero(np.diff(frames) > 1) + 1)
    assert all(len(r) % 10 == 0 for r in runs)  # whole blocks only
    # Spread: one validation block in each fifth of the class's time range, not all at the end.
    assert np.unique(frames // 40).tolist() == [0, 1, 2, 3, 4]


def test_deterministic_from_seed():
    order, labels = video_like()
    a = block_split(order, labels, 0.2, block_size=5, gap=1, seed=7)
    b = block_split(order, labels, 0.2, block_size=5, gap=1, seed=7)
    c = block_split(order, labels, 0.2, block_size=5, gap=1, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_block_seconds_and_default_blocks():
    order, labels = video_like(counts=(100, 50))
    train, val = block_split(order, labels, 0.2, block_seconds=2.0, gap=1, seed=0)
    assert len(train) and len(val)
    # 2 s at 5 fps = 10-frame blocks; a validation run is a multiple of 10 frames.
    frames = np.sort(np.rint(order[val[labels[val] == 0]] * 5).astype(int))
    runs = np.split(frames, np.flatnonzero(np.diff(frames) > 1) + 1)
    assert all(len(r) % 10 == 0 for r in runs)
    train, val = block_split(order, labels, 0.3, seed=0)
    assert set(labels[val]) == {0, 1} and set(labels[train]) == {0, 1}


def test_every_class_keeps_train_and_val_even_when_tiny():
    order, labels = video_like(counts=(100, 4))
    train, val = block_split(order, labels, 0.05, block_size=1, gap=1, seed=0)
    for cls in (0, 1):
        assert (labels[train] == cls).any() and (labels[val] == cls).any()


def test_too_few_frames_errors_name_the_class():
    order, labels = video_like(counts=(100, 3))
    with pytest.raises(ValueError, match="class 1: 3 frames"):
        block_split(order, labels, 0.2, block_size=5, seed=0)
    with pytest.raises(ValueError, match="class 1: 3 frames.*no training frame"):
        block_split(order, labels, 0.2, block_size=1, gap=2, seed=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"val_fraction": 0.0},
        {"val_fraction": 1.0},
        {"val_fraction": 0.2, "block_size": 0},
        {"val_fraction": 0.2, "block_size": 3, "block_seconds": 1.0},
        {"val_fraction": 0.2, "gap": -1},
    ],
)
def test_bad_arguments(kwargs):
    order, labels = video_like()
    with pytest.raises(ValueError):
        block_split(order, labels, **kwargs)


# --- three-way splits -----------------------------------------------------------------------------


def _paths_set(n_per_class=30, classes=3, split=None, order=None):
    from cellkeras.data.imageset import ImageSet

    labels = np.repeat(np.arange(classes), n_per_class)
    return ImageSet(
        classes=[f"c{k}" for k in range(classes)],
        labels=labels,
        paths=[f"img{i}.png" for i in range(len(labels))],
        split=split,
        order=order,
    )


def test_a_given_test_split_stays_test_and_validation_comes_from_training():
    from cellkeras.data.splits import three_way_split

    split = np.array(["train", "test"] * 45, dtype=object)
    images = _paths_set(split=split)
    assigned = three_way_split(images, 0.25, seed=0)
    np.testing.assert_array_equal(assigned == "test", split == "test")  # the TEST folder, whole
    val = np.flatnonzero(assigned == "val")
    assert len(val) and np.all(split[val] == "train")  # carved from TRAIN, never from TEST
    assert abs(len(val) / np.sum(split == "train") - 0.25) < 0.05
    assert set(images.labels[val]) == {0, 1, 2}  # stratified
    assert set(assigned) == {"train", "val", "test"}


def test_test_fraction_carves_three_disjoint_stratified_parts():
    from cellkeras.data.splits import three_way_split

    images = _paths_set(n_per_class=40)
    assigned = three_way_split(images, 0.2, 0.25, seed=3)
    counts = {name: int(np.sum(assigned == name)) for name in ("train", "val", "test")}
    assert counts == {"train": 66, "val": 24, "test": 30}  # shares of all 120 images
    for name in counts:
        assert set(images.labels[assigned == name]) == {0, 1, 2}
    np.testing.assert_array_equal(assigned, three_way_split(images, 0.2, 0.25, seed=3))


def test_frames_get_time_blocks_with_guard_gaps_between_all_three_splits():
    from cellkeras.data.imageset import ImageSet
    from cellkeras.data.splits import GAP, three_way_split

    order, labels = video_like(counts=(120, 80))

    frames = ImageSet(
        classes=["a", "b"], labels=labels, images=np.zeros((200, 2, 2, 1)), order=order
    )
    assigned = three_way_split(frames, 0.2, 0.2, seed=0, gap=2)
    assert {"train", "val", "test", GAP} <= set(assigned)
    for cls in (0, 1):
        rank = sorted_positions(order, labels, cls)
        ranks = {n: np.array([rank[i] for i in np.flatnonzero((assigned == n) & (labels == cls))])
                 for n in ("train", "val", "test")}  # fmt: skip
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            # Neighbouring frames are near-copies: at least the gap apart across splits.
            assert np.abs(ranks[a][:, None] - ranks[b][None, :]).min() > 2, (a, b)


@pytest.mark.parametrize(
    ("kwargs", "split", "message"),
    [
        ({"val_fraction": 0.5, "test_fraction": 0.5}, None, "leave no training"),
        ({"test_fraction": 1.2}, None, "must be in"),
        ({"test_fraction": 0.2}, ["train", "test"] * 45, "already has a test split"),
        ({}, ["train", "holdout"] * 45, "unknown split names"),
    ],
)
def test_three_way_split_refuses_what_it_cannot_do(kwargs, split, message):
    from cellkeras.data.splits import three_way_split

    images = _paths_set(split=None if split is None else np.array(split, dtype=object))
    with pytest.raises(ValueError, match=message):
        three_way_split(images, **kwargs)
