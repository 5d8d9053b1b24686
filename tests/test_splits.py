"""Block splits of ordered (video) data."""

import numpy as np
import pytest

from cellkeras.data.imageset import ImageSet
from cellkeras.data.splits import block_split, split_imageset, time_block_split


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


def test_a_brief_stage_holds_out_only_its_last_block():
    """A stage of 8 frames between two long ones (the embryo's brief stages): the spread-out
    blocks and their guard gaps would leave it nothing to train on; its last block goes to
    validation instead, with a warning, and the long stages split as before."""
    order, labels = video_like(counts=(100, 8, 60))
    with pytest.warns(UserWarning, match="class\\(es\\) 1: too few frames"):
        train, val = block_split(order, labels, 0.2, gap=2, seed=0)
    brief = np.flatnonzero(labels == 1)
    last = brief[np.argmax(order[brief])]
    assert list(val[labels[val] == 1]) == [last]
    # Frames 6 and 7 of the stage are the guard gap; frames 1-5 train.
    assert np.sum(labels[train] == 1) == 5
    assert not set(train) & set(val)
    for cls in (0, 2):
        assert (labels[val] == cls).sum() >= 2  # several blocks, as without the brief stage


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


def neighbours_across_the_split(frames, sequences, train, val):
    """(val frame, train frame) pairs that sit next to each other in one sequence's time order."""
    pairs = []
    for s in np.unique(sequences):
        idx = np.flatnonzero(sequences == s)
        idx = idx[np.argsort(frames[idx], kind="stable")]
        side = np.where(np.isin(idx, val), "v", np.where(np.isin(idx, train), "t", "-"))
        for a, b in zip(range(len(idx) - 1), range(1, len(idx)), strict=True):
            if {side[a], side[b]} == {"v", "t"}:
                pairs.append((int(frames[idx[a]]), int(frames[idx[b]])))
    return pairs


def test_guard_gap_holds_across_class_boundaries():
    # Adjacent segments: frame 49 (class 0) and frame 50 (class 1) are near-copies.
    frames = np.arange(100)
    labels = (frames >= 50).astype(int)
    sequences = np.zeros(100, str)
    for seed in range(20):
        train, val = time_block_split(frames, labels, 0.3, 1, seed, block_size=5)
        assert neighbours_across_the_split(frames, sequences, train, val) == []
        assert set(labels[train]) == set(labels[val]) == {0, 1}


def test_sequences_are_split_apart():
    # Two videos of one class, frames numbered from 0 in each: frame 7 of one is no neighbour
    # of frame 7 of the other, and each block lies in one video.
    frames = np.concatenate([np.arange(60), np.arange(60)])
    sequences = np.repeat(["a", "b"], 60)
    labels = np.zeros(120, int)
    train, val = time_block_split(frames, labels, 0.25, 2, 0, sequences=sequences, block_size=6)
    assert neighbours_across_the_split(frames, sequences, train, val) == []
    for s in ("a", "b"):
        held = np.sort(frames[val][sequences[val] == s])
        runs = np.split(held, np.flatnonzero(np.diff(held) > 1) + 1)
        assert all(len(r) % 6 == 0 for r in runs if len(r))
    # Without the sequences the two videos' frames interleave in one time order.
    _, mixed = time_block_split(frames, labels, 0.25, 2, 0, block_size=6)
    assert not np.array_equal(np.sort(mixed), np.sort(val))


def test_split_imageset_uses_time_blocks_whenever_positions_exist():
    frames = np.arange(80)
    labels = (frames // 20) % 2
    imageset = ImageSet(
        classes=["a", "b"],
        labels=labels,
        paths=[f"f{i}.png" for i in frames],
        order=frames.astype(float),
        sequence=np.array(["clip"] * 80, dtype=object),
    )
    train, val = split_imageset(imageset, 0.25, seed=1, gap=1)
    train_idx = [int(p[1:-4]) for p in train.paths]
    val_idx = [int(p[1:-4]) for p in val.paths]
    assert neighbours_across_the_split(frames, imageset.sequence, train_idx, val_idx) == []
    assert train.sequence.tolist() == ["clip"] * len(train)


def test_split_messages_name_the_class():
    def stages(counts):
        labels = np.repeat([0, 1, 2], counts)
        return ImageSet(
            classes=["cleavage", "comma_fold", "bean"],
            labels=labels,
            paths=[f"f{i}.png" for i in range(len(labels))],
            order=np.arange(len(labels), dtype=float),
        )

    with pytest.warns(UserWarning, match="class\\(es\\) 'comma_fold': too few frames"):
        split_imageset(stages([40, 8, 40]), 0.2, seed=0, gap=2)
    with pytest.raises(ValueError, match="class 'comma_fold': 3 frames"):
        split_imageset(stages([40, 3, 40]), 0.2, seed=0, gap=2)


def test_gap_counts_frame_steps_not_ranks():
    # Every 5th frame kept: neighbours are 5 apart, and a gap of 1 still drops them.
    frames = np.arange(0, 500, 5)
    labels = np.zeros(100, int)
    train, val = time_block_split(frames, labels, 0.2, 1, 0, block_size=10)
    assert neighbours_across_the_split(frames, np.zeros(100), train, val) == []
    # Frames 20-39 left out between two segments: their ends, 21 frames apart, are no
    # neighbours, so a held-out frame 19 does not cost frame 40 its place in training.
    frames = np.r_[np.arange(20), np.arange(40, 60)]
    labels = (frames >= 40).astype(int)
    outcomes = [time_block_split(frames, labels, 0.3, 2, s, block_size=4) for s in range(30)]
    cases = [
        set(frames[t])
        for t, v in outcomes
        if 19 in frames[v] and not {40, 41, 42, 43} & set(frames[v])
    ]
    assert cases and all(40 in train for train in cases)


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


def test_edge_blocks_hold_out_frames_before_and_after_every_training_frame():
    order, labels = video_like()
    train, val = time_block_split(order, labels, 0.2, 2, seed=5, placement="edges")
    for cls in np.unique(labels):
        rank = sorted_positions(order, labels, cls)
        t = np.array([rank[i] for i in train if labels[i] == cls])
        v = np.array([rank[i] for i in val if labels[i] == cls])
        size = -(-len(rank) // 10)  # 10 blocks a class: the first and the last are held out
        np.testing.assert_array_equal(np.sort(v), np.r_[0:size, len(rank) - size : len(rank)])
        assert v.min() < t.min() and t.max() < v.max()
        assert np.abs(t[:, None] - v[None, :]).min() > 2
    # The edges do not depend on the seed; a third block comes from the end, then the start.
    again = time_block_split(order, labels, 0.2, 2, seed=6, placement="edges")
    np.testing.assert_array_equal(val, again[1])
    first = order[labels == 0]  # 100 frames: 10 blocks of 10
    three = time_block_split(first, labels[labels == 0], 0.3, 0, placement="edges")
    assert np.unique(np.rint(first[three[1]] * 5).astype(int) // 10).tolist() == [0, 8, 9]
    with pytest.raises(ValueError, match="unknown block placement 'middle'"):
        time_block_split(order, labels, 0.2, placement="middle")


def test_the_trainer_places_validation_blocks_as_asked():
    from cellkeras.data.splits import three_way_split

    order, labels = video_like(counts=(120, 80))
    frames = ImageSet(
        classes=["a", "b"], labels=labels, images=np.zeros((200, 2, 2, 1)), order=order
    )
    spread = three_way_split(frames, 0.2, seed=0, gap=2)
    edges = three_way_split(frames, 0.2, seed=0, gap=2, val_placement="edges")
    for cls in (0, 1):
        rank = sorted_positions(order, labels, cls)
        val = np.array([rank[i] for i in np.flatnonzero((edges == "val") & (labels == cls))])
        assert val.min() == 0 and val.max() == len(rank) - 1
    assert not np.array_equal(spread, edges)


def test_the_trainer_validates_on_each_stage_edges_by_default():
    from trainer.config import build_config
    from trainer.heldout import assign_splits

    order, labels = video_like(counts=(120, 80))
    frames = ImageSet(
        classes=["a", "b"], labels=labels, images=np.zeros((200, 2, 2, 1)), order=order
    )
    assigned, _ = assign_splits(build_config(), frames, has_val=False, has_test=False)
    for cls in (0, 1):
        rank = sorted_positions(order, labels, cls)
        val = [rank[i] for i in np.flatnonzero((assigned == "val") & (labels == cls))]
        assert min(val) == 0 and max(val) == len(rank) - 1
    spread = build_config(overrides={"data.val_blocks": "spread"})
    assert not np.array_equal(assign_splits(spread, frames, False, False)[0], assigned)
