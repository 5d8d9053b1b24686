"""Train/validation splits.

`time_block_split` splits ordered data (video frames): neighbouring frames are nearly
identical, so a random split puts near-copies of validation frames into training and reports a
validation accuracy that says nothing about unseen data. It cuts each class's frames into
contiguous blocks in time, gives whole blocks to validation and leaves a guard gap between
validation and training. `split_imageset` uses it for every ordered source: in-memory video,
class folders with a frame manifest (`frames.csv`) and CSVs with a `frame` column.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import numpy as np

from cellkeras.data.imageset import ImageSet


def time_block_split(
    positions: np.ndarray,
    labels: np.ndarray,
    fraction: float,
    gap: int = 1,
    seed: int = 0,
    *,
    sequences: np.ndarray | None = None,
    block_size: int | None = None,
    block_seconds: float | None = None,
    class_names: Sequence[str] | None = None,
    placement: str = "spread",
) -> tuple[np.ndarray, np.ndarray]:
    """Splits ordered data into kept and held-out indices by contiguous time blocks per class.

    The one block-split rule, for validation (and any other held-out set) of every ordered
    source: in-memory video, class folders with a frame manifest, CSVs with a `frame` column.

    Within each class, images are sorted by (`sequences`, `positions`) and cut into contiguous
    blocks, either of `block_size` images or spanning `block_seconds` of `positions`. About
    `fraction` of the blocks are held out: with `placement="spread"`, one drawn at random (from
    `seed`) within each of equal strata of the class's time range, so they cover early and
    late parts of every class rather than only its end; with `placement="edges"`, the class's
    last and first blocks (then the next ones in), so the held-out frames lie before or after
    every frame the class trains on, as a new recording's do. Then every kept image within `gap` frame steps of a held-out image in its
    sequence, of any class, is dropped from both sides: neighbouring frames are near-copies,
    whether or not a class boundary lies between them.

    With neither `block_size` nor `block_seconds`, each class is cut into about 10 blocks.
    A class too short to keep any training image after those blocks' guard gaps (a brief stage
    of a time-lapse) holds out only its last block instead, with a warning.

    Args:
        positions: (N,) position of each image in its sequence (seconds or frame indices).
        labels: (N,) class index of each image.
        fraction: target share of each class's blocks to hold out, in (0, 1).
        gap: frame steps dropped on each side of each held-out block; a step is the
            sequence's median spacing of `positions` (1 frame, or 1/fps seconds, or the frame
            step of a thinned video), so frames deleted from a run still count.
        seed: makes the choice of held-out blocks reproducible.
        sequences: (N,) the sequence (video) of each image; positions in different sequences
            are never neighbours. None: one sequence.
        block_size: images per block.
        block_seconds: length of a block in `positions` units (blocks start at the class's
            first image in each sequence).
        class_names: names of the label values, for the messages (default: the values).
        placement: "spread" or "edges", where the held-out blocks lie (above).

    Returns:
        `(kept_idx, held_idx)`: sorted int64 index arrays. Guard-gap images are in neither.

    Raises:
        ValueError: bad arguments, or a class with too few images (or blocks) to give both a
            kept and a held-out block after the guard gaps; the message names the class.
    """
    if placement not in BLOCK_PLACEMENTS:
        raise ValueError(f"unknown block placement {placement!r}; known: {BLOCK_PLACEMENTS}")
    positions, labels, seq = _check_block_args(
        positions, labels, fraction, gap, sequences, block_size, block_seconds
    )

    def named(cls) -> str:
        return repr(class_names[int(cls)]) if class_names is not None else str(cls)

    held = np.zeros(len(labels), bool)
    blocks: dict[int, tuple[int, int]] = {}  # class -> (images, blocks)
    last_block: dict[int, np.ndarray] = {}  # class -> indices of its last block in time
    for k, cls in enumerate(np.unique(labels)):
        idx = np.flatnonzero(labels == cls)
        idx = idx[np.lexsort((positions[idx], seq[idx]))]
        block_of = _blocks_of(positions[idx], seq[idx], block_size, block_seconds)
        n_blocks = int(block_of.max()) + 1 if len(idx) else 0
        if n_blocks < 2:
            raise ValueError(
                f"class {named(cls)}: {len(idx)} frames make {n_blocks} block(s); need at least 2 for "
                "a train and a validation block (use smaller blocks or more frames)."
            )
        chosen = _held_blocks(n_blocks, fraction, placement, seed, k)
        held[idx[np.isin(block_of, chosen)]] = True
        blocks[int(cls)] = (len(idx), n_blocks)
        last_block[int(cls)] = idx[block_of == n_blocks - 1]
    kept, short = _kept_after_gaps(positions, seq, labels, held, gap, last_block)
    for cls, (n, n_blocks) in blocks.items():
        if not kept[labels == cls].any():
            raise ValueError(
                f"class {named(cls)}: {n} frames in {n_blocks} blocks leave no training frame after "
                f"a guard gap of {gap} frame(s) around its validation block(s), even with only "
                "its last block held out; use smaller blocks, a smaller gap or more frames."
            )
    if short:
        warnings.warn(
            f"class(es) {', '.join(map(named, short))}: too few frames for {fraction:.0%} of "
            f"their blocks in validation with a guard gap of {gap}; each holds out only its "
            "last block instead.",
            stacklevel=2,
        )
    return np.flatnonzero(kept).astype(np.int64), np.flatnonzero(held).astype(np.int64)


def _kept_after_gaps(positions, seq, labels, held, gap, last_block) -> tuple[np.ndarray, list]:
    """The images kept for training once every image within `gap` steps of a held-out one is
    dropped, and the classes left with none that were given their last block instead (`held`
    is updated in place for them)."""
    kept = ~held & (_places_to_held(positions, seq, held) > gap)
    short = [cls for cls in last_block if not kept[labels == cls].any()]
    if short:
        # A class too short for its spread-out blocks and their guard gaps (a brief stage of a
        # time-lapse) holds out only its last block, which needs a gap on one side alone.
        for cls in short:
            held[labels == cls] = False
            held[last_block[cls]] = True
        kept = ~held & (_places_to_held(positions, seq, held) > gap)
    return kept, short


def _held_blocks(n_blocks: int, fraction: float, placement: str, seed: int, k: int) -> list[int]:
    """The block numbers held out of the `k`-th class's `n_blocks` (`placement`: "edges" or
    "spread"; a spread draw is seeded per class, so one class's draw does not depend on the
    classes before it)."""
    if placement == "edges":
        return _edge_blocks(n_blocks, fraction)
    return _spread_blocks(n_blocks, fraction, np.random.default_rng([seed % 2**32, k]))


def _held_count(n_blocks: int, fraction: float) -> int:
    return min(max(1, round(fraction * n_blocks)), n_blocks - 1)


def _edge_blocks(n_blocks: int, fraction: float) -> list[int]:
    """About `fraction` of `n_blocks` block numbers taken from both ends inwards, the last
    block first: last, first, second to last, second, ..."""
    ends = [
        b for pair in zip(range(n_blocks - 1, -1, -1), range(n_blocks), strict=True) for b in pair
    ]
    return sorted(list(dict.fromkeys(ends))[: _held_count(n_blocks, fraction)])


def _spread_blocks(n_blocks: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """About `fraction` of `n_blocks` block numbers (at least 1, never all), one drawn within
    each of equal strata of the range, so held-out blocks cover early and late times alike."""
    n_held = _held_count(n_blocks, fraction)
    edges = np.round(np.linspace(0, n_blocks, n_held + 1)).astype(np.int64)
    return [int(rng.integers(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def _check_block_args(positions, labels, fraction, gap, sequences, block_size, block_seconds):
    positions = np.asarray(positions, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(positions) != len(labels):
        raise ValueError(f"order has {len(positions)} entries but labels has {len(labels)}.")
    if sequences is None:
        seq = np.zeros(len(labels), np.int64)
    else:
        names = np.asarray(sequences).astype(str).reshape(-1)
        if len(names) != len(labels):
            raise ValueError(f"sequences has {len(names)} entries but labels has {len(labels)}.")
        seq = np.unique(names, return_inverse=True)[1].reshape(-1)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}.")
    if block_size is not None and block_seconds is not None:
        raise ValueError("give block_size or block_seconds, not both.")
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    if block_seconds is not None and not block_seconds > 0:
        raise ValueError(f"block_seconds must be > 0, got {block_seconds}.")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}.")
    if not np.all(np.isfinite(positions)):
        raise ValueError("order holds NaN or infinite values.")
    return positions, labels, seq


def _blocks_of(t, seq, block_size, block_seconds) -> np.ndarray:
    """Block number of each of one class's images, sorted by (sequence, position)."""
    n = len(t)
    if block_seconds is not None:
        # Sorted by (sequence, position): each sequence's first image is its start.
        first = np.r_[True, seq[1:] != seq[:-1]] if n else np.zeros(0, bool)
        start = t[first][np.cumsum(first) - 1]
        raw = np.floor((t - start) / block_seconds).astype(np.int64)
        # Renumber so empty time blocks (pauses between ranges) do not count as blocks.
        pairs = np.stack([seq, raw], axis=1)
        return np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1)
    size = block_size if block_size is not None else max(1, math.ceil(n / 10))
    return np.arange(n) // size


def _places_to_held(positions, seq, held) -> np.ndarray:
    """For each image, how many frame steps away in its sequence the nearest held-out image is
    (infinite when its sequence has none).

    A step is the sequence's median spacing of positions, so `gap` counts frames whatever the
    unit (seconds or frame indices) and the frame step: every 5th frame kept makes frames 5
    and 10 one step apart, while frames 13 and 24 across a left-out stretch stay 11 apart.
    """
    places = np.full(len(positions), np.inf)
    for s in np.unique(seq):
        idx = np.flatnonzero(seq == s)
        here = positions[idx]
        held_at = np.unique(here[held[idx]])
        if not len(held_at):
            continue
        spacing = np.diff(np.unique(here))
        step = float(np.median(spacing)) if len(spacing) else 1.0
        nearest = np.searchsorted(held_at, here)
        left = np.abs(here - held_at[np.clip(nearest - 1, 0, len(held_at) - 1)])
        right = np.abs(held_at[np.clip(nearest, 0, len(held_at) - 1)] - here)
        # Rounded so that 3/7 s - 1/7 s counts as exactly 2 steps of 1/7 s.
        places[idx] = np.round(np.minimum(left, right) / step, 6)
    return places


def block_split(
    order: np.ndarray,
    labels: np.ndarray,
    val_fraction: float,
    *,
    block_size: int | None = None,
    block_seconds: float | None = None,
    gap: int = 1,
    seed: int = 0,
    sequences: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`time_block_split` as `(train_idx, val_idx)`, under its earlier name and arguments."""
    return time_block_split(
        order,
        labels,
        val_fraction,
        gap,
        seed,
        sequences=sequences,
        block_size=block_size,
        block_seconds=block_seconds,
    )


def split_imageset(
    imageset: ImageSet,
    val_fraction: float = 0.2,
    seed: int = 0,
    gap: int = 2,
    placement: str = "spread",
) -> tuple[ImageSet, ImageSet]:
    """Splits an `ImageSet` into training and validation sets, the right way for its kind.

    * A split given by the source (`ImageSet.split`, e.g. the blood-cell TRAIN/TEST folders) is
      kept: "val" images validate, or "test" images when there is no "val"; the rest train.
    * Ordered data (`ImageSet.order`, video frames) is cut by `time_block_split` into contiguous
      time blocks (per `ImageSet.sequence`) with `gap` frames left out around each validation
      block, the validation blocks placed as `placement` says.
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
        train_idx, val_idx = time_block_split(
            imageset.order,
            labels,
            val_fraction,
            gap,
            seed,
            sequences=imageset.sequence,
            class_names=imageset.classes,
            placement=placement,
        )
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
BLOCK_PLACEMENTS = ("spread", "edges")
GAP = "gap"  # a guard-gap frame, left out of every split


def three_way_split(
    imageset: ImageSet,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    *,
    seed: int = 0,
    gap: int = 2,
    val_placement: str = "spread",
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
    from elsewhere), `test_fraction=0` no test. `val_placement` places the validation blocks
    of ordered data (`time_block_split`'s `placement`; a carved test split is spread).

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
        pool = _carve(imageset, pool, test_fraction, "test", assigned, seed, gap, "spread")
    if val_fraction > 0 and not np.any(given == "val"):
        # Carved from what the test carve left: scaled so it is `val_fraction` of the pool.
        share = val_fraction / (1.0 - test_fraction)
        pool = _carve(imageset, pool, share, "val", assigned, seed, gap, val_placement)
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
    placement: str,
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
    kept, held = split_imageset(tagged, fraction, seed=seed, gap=gap, placement=placement)

    def positions(subset: ImageSet) -> np.ndarray:
        return np.array([int(b[0]) for b in subset.box_labels or []], dtype=np.int64)

    kept_idx, held_idx = pool[positions(kept)], pool[positions(held)]
    assigned[np.setdiff1d(pool, np.concatenate([kept_idx, held_idx]))] = GAP
    assigned[held_idx] = name
    return kept_idx
