"""Train/validation splits.

`block_split` splits ordered data (video frames): neighbouring frames are nearly identical, so a
random split puts near-copies of validation frames into training and reports a validation
accuracy that says nothing about unseen data. It cuts each class's frames into contiguous blocks
in time, gives whole blocks to validation and leaves a guard gap between validation and training.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from cellkeras.data.imageset import ImageSet


def block_split(
    order: np.ndarray,
    labels: np.ndarray,
    val_fraction: float,
    *,
    block_size: int | None = None,
    block_seconds: float | None = None,
    gap: int = 1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Splits ordered data into train and validation indices by contiguous blocks per class.

    Within each class, frames are sorted by `order` and cut into contiguous blocks, either of
    `block_size` frames or spanning `block_seconds` of `order`. About `val_fraction` of the blocks
    go to validation, one drawn at random (from `seed`) within each of equal strata of the class's
    time range, so validation covers early and late parts of every class rather than only its end.
    The `gap` training frames on each side of every validation block (neighbours in the class's
    sorted order) are dropped from both sides, because they are near-copies of validation frames.

    With neither `block_size` nor `block_seconds`, each class is cut into about 10 blocks.

    Args:
        order: (N,) position of each image in time (e.g. `ImageSet.order`, seconds).
        labels: (N,) class index of each image.
        val_fraction: target share of each class's blocks for validation, in (0, 1).
        block_size: frames per block.
        block_seconds: length of a block in `order` units (blocks start at the class's first frame).
        gap: frames dropped on each side of each validation block, counted in the class's sorted
            order (so the dropped frames are the `gap` nearest neighbours in time).
        seed: makes the choice of validation blocks reproducible.

    Returns:
        `(train_idx, val_idx)`: sorted int64 index arrays into `order`/`labels`. Guard-gap frames
        are in neither.

    Raises:
        ValueError: bad arguments, or a class with too few frames (or blocks) to give both a
            training and a validation block after the guard gaps; the message names the class.
    """
    order = np.asarray(order, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(order) != len(labels):
        raise ValueError(f"order has {len(order)} entries but labels has {len(labels)}.")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    if block_size is not None and block_seconds is not None:
        raise ValueError("give block_size or block_seconds, not both.")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    if block_seconds is not None and not block_seconds > 0:
        raise ValueError(f"block_seconds must be > 0, got {block_seconds}.")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}.")
    if not np.all(np.isfinite(order)):
        raise ValueError("order holds NaN or infinite values.")

    train_parts, val_parts = [], []
    for k, cls in enumerate(np.unique(labels)):
        idx = np.flatnonzero(labels == cls)
        idx = idx[np.argsort(order[idx], kind="stable")]
        n = len(idx)
        if block_seconds is not None:
            t = order[idx]
            raw = np.floor((t - t[0]) / block_seconds).astype(np.int64)
            # Renumber so empty time blocks (pauses between ranges) do not count as blocks.
            block_of = np.unique(raw, return_inverse=True)[1].reshape(-1)
        else:
            size = block_size if block_size is not None else max(1, math.ceil(n / 10))
            block_of = np.arange(n) // size
        n_blocks = int(block_of.max()) + 1 if n else 0
        if n_blocks < 2:
            raise ValueError(
                f"class {cls}: {n} frames make {n_blocks} block(s); need at least 2 for a "
                "train and a validation block (use smaller blocks or more frames)."
            )
        n_val = min(max(1, round(val_fraction * n_blocks)), n_blocks - 1)
        # One validation block per stratum keeps them spread over the class's time range.
        edges = np.round(np.linspace(0, n_blocks, n_val + 1)).astype(np.int64)
        # Seeded per class so one class's draw does not depend on the classes before it.
        rng = np.random.default_rng([seed % 2**32, k])
        val_blocks = [rng.integers(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        is_val = np.isin(block_of, val_blocks)

        # Distance (in sorted positions) from each frame to the nearest validation frame.
        pos = np.arange(n)
        val_pos = pos[is_val]
        nearest = np.searchsorted(val_pos, pos)
        left = np.abs(pos - val_pos[np.clip(nearest - 1, 0, len(val_pos) - 1)])
        right = np.abs(val_pos[np.clip(nearest, 0, len(val_pos) - 1)] - pos)
        dist = np.minimum(left, right)
        is_train = ~is_val & (dist > gap)
        if not is_train.any():
            raise ValueError(
                f"class {cls}: {n} frames in {n_blocks} blocks leave no training frame after "
                f"a guard gap of {gap} frame(s) around {n_val} validation block(s); use smaller "
                "blocks, a smaller gap or a smaller val_fraction."
            )
        train_parts.append(idx[is_train])
        val_parts.append(idx[is_val])
    train = np.sort(np.concatenate(train_parts)) if train_parts else np.zeros(0, np.int64)
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, np.int64)
    return train.astype(np.int64), val.astype(np.int64)


def split_imageset(
    imageset: ImageSet,
    val_fraction: float = 0.2,
    seed: int = 0,
    gap: int = 2,
) -> tuple[ImageSet, ImageSet]:
    """Splits an `ImageSet` into training and validation sets, the right way for its kind.

    * A split given by the source (`ImageSet.split`, e.g. the blood-cell TRAIN/TEST folders) is
      kept: "val" images validate, or "test" images when there is no "val"; the rest train.
    * Ordered data (`ImageSet.order`, video frames) is cut by `block_split` into contiguous time
      blocks with `gap` frames left out around each validation block.
    * Grouped data (`ImageSet.groups`) keeps each group on one side, stratified by class.
    * Anything else gets a stratified random split.

    Raises:
        ValueError: when a class cannot appear on both sides.
    """
    labels = imageset.labels
    if imageset.split is not None:
        split = np.asarray(imageset.split).astype(str)
        held_out = "val" if np.any(split == "val") else "test"
        val_idx = np.flatnonzero(split == held_out)
        train_idx = np.flatnonzero(split == "train")
        if not len(val_idx) or not len(train_idx):
            raise ValueError(
                f"{imageset.name}: the given split needs 'train' and 'val' or 'test' images"
            )
    elif imageset.order is not None:
        train_idx, val_idx = block_split(imageset.order, labels, val_fraction, gap=gap, seed=seed)
    elif imageset.groups is not None:
        from sklearn.model_selection import StratifiedGroupKFold

        folds = max(2, round(1 / val_fraction))
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        train_idx, val_idx = next(splitter.split(labels, labels, imageset.groups))
    else:
        from sklearn.model_selection import train_test_split

        counts = imageset.class_counts()
        if counts[counts > 0].min() < 2:
            lonely = [imageset.classes[c] for c in np.flatnonzero(counts == 1)]
            raise ValueError(f"classes {lonely} have one image; a split needs at least two each")
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed
        )
    return imageset.subset(np.sort(train_idx)), imageset.subset(np.sort(val_idx))


SPLIT_NAMES = ("train", "val", "test")
GAP = "gap"  # a guard-gap frame, left out of every split


def three_way_split(
    imageset: ImageSet,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    *,
    seed: int = 0,
    gap: int = 2,
) -> np.ndarray:
    """Assigns every image to "train", "val" or "test" ("gap" for guard-gap frames).

    The test split is what the source gives (`ImageSet.split` "test", e.g. a TEST folder), or,
    when it gives none, `test_fraction` of the images carved off first. Validation is the
    source's "val" images, or `val_fraction` carved from what is left for training: never
    the source's test images. Each carve is `split_imageset`'s, so frames of a sequence
    (`ImageSet.order`) go by contiguous time blocks with `gap` frames dropped around each
    held-out block (marked "gap"), groups stay whole, anything else is stratified at random.
    Both fractions are shares of the pool they are carved from (all images, or the source's
    training images when it gives a split); `val_fraction=0` carves no validation (it comes
    from elsewhere), `test_fraction=0` no test.

    Returns:
        (N,) array of "train" / "val" / "test" / "gap", one entry per image.

    Raises:
        ValueError: fractions out of range, a `test_fraction` for a source that already
            gives a test split, unknown split names, or no training images left.
    """
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1)"
        )
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction {val_fraction} + test_fraction {test_fraction} leave no training images"
        )
    n = len(imageset)
    if imageset.split is None:
        given = np.full(n, "train", dtype=object)
    else:
        given = np.asarray(imageset.split).astype(str).astype(object)
        unknown = sorted(set(given) - set(SPLIT_NAMES))
        if unknown:
            raise ValueError(
                f"{imageset.name}: unknown split names {unknown}; known: {SPLIT_NAMES}"
            )
    assigned = given.copy()
    pool = np.flatnonzero(given == "train")
    if test_fraction > 0:
        if np.any(given == "test"):
            raise ValueError(
                f"{imageset.name} already has a test split (a TEST folder); a test_fraction "
                "would carve a second one from the training images: set it to 0"
            )
        pool = _carve(imageset, pool, test_fraction, "test", assigned, seed, gap)
    if val_fraction > 0 and not np.any(given == "val"):
        # Carved from what the test carve left: scaled so it is `val_fraction` of the pool.
        share = val_fraction / (1.0 - test_fraction)
        pool = _carve(imageset, pool, share, "val", assigned, seed, gap)
    if not len(pool):
        raise ValueError(f"{imageset.name}: no training images left after the splits")
    return assigned


def _carve(
    imageset: ImageSet,
    pool: np.ndarray,
    fraction: float,
    name: str,
    assigned: np.ndarray,
    seed: int,
    gap: int,
) -> np.ndarray:
    """Holds out `fraction` of the images at `pool` by `split_imageset`, marking them `name`
    in `assigned` (guard-gap frames `GAP`); returns the indices left for training."""
    if not len(pool):
        raise ValueError(f"{imageset.name}: no training images to carve a {name} split from")
    if imageset.images is not None:  # a split needs no pixels: do not copy them
        imageset = dataclasses.replace(imageset, images=None, encoded=[b""] * len(imageset))
    # split_imageset returns subsets, not indices; each image carries its position through
    # it in a field no split reads (box_labels, of this throwaway copy only).
    tagged = dataclasses.replace(
        imageset.subset(pool), split=None, box_labels=[np.array([i]) for i in range(len(pool))]
    )
    kept, held = split_imageset(tagged, fraction, seed=seed, gap=gap)

    def positions(subset: ImageSet) -> np.ndarray:
        return np.array([int(b[0]) for b in subset.box_labels or []], dtype=np.int64)

    kept_idx, held_idx = pool[positions(kept)], pool[positions(held)]
    assigned[np.setdiff1d(pool, np.concatenate([kept_idx, held_idx]))] = GAP
    assigned[held_idx] = name
    return kept_idx
