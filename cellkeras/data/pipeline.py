"""`make_dataset`: the one tf.data factory from an `ImageSet` to training or evaluation batches.

A progressive schedule calls it again at each stage's image size. Order of work:

    decode (files/bytes) or slice (arrays) ─► resize ─► cache (when it fits) ─►
    [training: oversample or shuffle] ─► batch ─► [training: augment] ─► prefetch

Decoding runs `cellkeras.io.images.decode_image` (OpenCV / tifffile, which release the GIL)
inside `tf.numpy_function`, so every format and bit depth is normalized by the same code that
checked it. Batches are `(images, labels)`: float32 (B, H, W, C) in [0, 1] and one-hot float32
(B, K). An augmenter is called on `{"images": ..., "labels": ...}` and returns that dict.

With `epochs=range(...)` (the trainer's way) one dataset holds those epochs back to back, each
ordered and augmented from (seed, epoch) alone, so a resumed run's epochs are the ones it
would have had.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from cellkeras.data.imageset import ImageSet
from cellkeras.io.images import (
    Channels,
    ImageSize,
    decode_image,
    normalize,
    parse_image_size,
    select_channels,
)

BALANCE_MODES = (None, "oversample")
# Resized float32 images are cached in memory up to this size; above it every epoch decodes
# again, which is slower but never runs the machine out of memory.
DEFAULT_CACHE_BYTES = 2 * 1024**3


def class_weights(imageset: ImageSet) -> dict[int, float]:
    """Weights inversely proportional to class frequency (scikit-learn's "balanced" rule), for
    `model.fit(class_weight=...)` as the alternative to oversampling."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(imageset.labels)
    weights = compute_class_weight("balanced", classes=present, y=imageset.labels)
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


def _pixels(
    imageset: ImageSet,
    size: tuple[int, int],
    channels: Channels,
    out_channels: int,
    normalization: str,
) -> tf.data.Dataset:
    """Resized float32 images in the set's order."""
    if normalization == "frame_percentile":
        # A whole image is its own frame; patches already stretched by theirs only need [0, 1].
        normalization = "range" if imageset.frame_normalized else "frame_percentile"

    def resize(images):
        return tf.image.resize(images, size, method="bilinear", antialias=True)

    if imageset.images is not None:
        stored = select_channels(imageset.images, channels, imageset.name)
        if normalization == "range" and stored.dtype in (np.uint8, np.uint16):
            scale = 1.0 / np.iinfo(stored.dtype).max

            def to_float(batch):
                return resize(tf.cast(batch, tf.float32) * scale)

            pixels = tf.data.Dataset.from_tensor_slices(stored)
        else:
            pixels = tf.data.Dataset.from_tensor_slices(
                np.stack([normalize(image, normalization, imageset.name) for image in stored])
            )

            def to_float(batch):
                return resize(batch)

        # Same-size arrays resize fastest as whole batches.
        return pixels.batch(256).map(to_float, num_parallel_calls=tf.data.AUTOTUNE).unbatch()

    if imageset.paths is not None:
        stored, from_file = [str(p) for p in imageset.paths], True
    else:
        stored, from_file = imageset.encoded, False

    def decode(item: tf.Tensor) -> tf.Tensor:
        def load(value: bytes) -> np.ndarray:
            data = Path(value.decode()).read_bytes() if from_file else value
            return decode_image(data, channels, normalization, source=str(value[:200]))

        image = tf.numpy_function(load, [item], tf.float32, stateful=False)
        image.set_shape([None, None, out_channels])
        return resize(image)

    return tf.data.Dataset.from_tensor_slices(stored).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE
    )


def _oversample(
    examples: tf.data.Dataset, imageset: ImageSet, seed: int | None, reshuffle: bool = True
) -> tuple[tf.data.Dataset, int]:
    """Every class `largest class` times per epoch, in a class order drawn anew each epoch.

    Each class is a stream of its images, reshuffled at every pass, repeated. The order in which
    classes take turns is a shuffle of `largest * [each present class]`, redrawn every time the
    dataset is iterated (each epoch): a fixed-seed random choice would repeat the same order
    every epoch, and independent draws would balance the classes only on average. With
    `reshuffle` False the order is the seed's alone (each epoch of `make_dataset(epochs=...)`
    then has a seed of its own).
    """
    counts = imageset.class_counts()
    present = [c for c in range(imageset.num_classes) if counts[c]]
    largest = int(counts.max())
    per_class = [
        examples.filter(lambda _, label, c=c: tf.equal(label, c))
        .shuffle(int(counts[c]), seed=None if seed is None else seed + 1 + c)
        .repeat()
        for c in present
    ]
    turns = np.repeat(np.arange(len(present), dtype=np.int64), largest)
    choice = tf.data.Dataset.from_tensor_slices(turns).shuffle(
        len(turns), seed=seed, reshuffle_each_iteration=reshuffle
    )
    return tf.data.Dataset.choose_from_datasets(per_class, choice), len(turns)


def make_dataset(
    imageset: ImageSet,
    image_size: ImageSize | str,
    training: bool,
    batch_size: int = 32,
    channels: Channels = None,
    augment: Callable[[dict], dict] | None = None,
    balance: str | None = None,
    normalization: str = "range",
    seed: int | None = 0,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    drop_remainder: bool = False,
    epochs: range | None = None,
    epoch_batches: int | None = None,
) -> tf.data.Dataset:
    """Builds the tf.data pipeline of (images, one-hot labels) batches at `image_size`.

    Args:
        imageset: any source's images; file-backed sets should have passed
            `cellkeras.data.check_images` (which also tells the channel count).
        image_size: output (height, width), or one int for squares.
        training: shuffle (or oversample) every epoch and apply `augment`.
        batch_size: images per batch; the last batch may be smaller.
        channels: as in `cellkeras.io.images`; None keeps the stored count (in-memory arrays)
            and must be given for files, where it is what `check_images` returned.
        augment: called on each training batch as a dict with "images" and "labels".
        balance: "oversample" gives every class the same number of images per epoch (each
            epoch holds `num_classes * largest class` images, every class exactly `largest
            class` of them, in a class order drawn anew each epoch); None keeps the stored
            frequencies.
        normalization: "range", "percentile" or "frame_percentile", see
            `cellkeras.io.images` (a `frame_normalized` set is already stretched).
        seed: shuffling seed; None gives a different order on every run.
        cache_bytes: cache resized images in memory when they fit in this many bytes.
        drop_remainder: leave out the last batch when it is smaller than `batch_size`, so
            every batch splits evenly across the replicas of a tf.distribute strategy (the
            multi-worker loop); training batches are reshuffled every epoch, so a different
            remainder is left out each time.
        epochs: training only: the (run's) epochs to make, back to back in one dataset, to be
            iterated once with `steps_per_epoch` (a resumed run asks for the epochs it has
            left). Epoch e's order is drawn from `epoch_seed(seed, e)` alone, and an augmenter
            whose `call` takes a `seed` gets `(epoch_seed(seed, e), batch index)` for each
            batch, so epoch e holds the same batches whether or not the run was interrupted
            before it. None: one epoch, reshuffled (and augmented afresh) on every iteration.
        epoch_batches: exactly this many batches in every epoch: the epoch's batches repeat
            when it has fewer, the rest is cut when it has more (workers whose shares differ in
            size must all take the same number of steps; `--steps_per_epoch` fixes it).

    Returns:
        A dataset of `(float32 (B, H, W, C), float32 (B, K))` with known cardinality.
    """
    if balance not in BALANCE_MODES:
        raise ValueError(f"unknown balance {balance!r}; known: {BALANCE_MODES}")
    if len(imageset) == 0:
        raise ValueError(f"image set {imageset.name!r} is empty")
    size = parse_image_size(image_size)
    if channels is None:
        if imageset.images is None:
            raise ValueError("channels must be given for file-backed sets (see check_images)")
        channels = select_channels(imageset.images[0], None).shape[-1]
    out_channels = channels if isinstance(channels, int) else len(channels)

    num_classes = imageset.num_classes
    pixels = _pixels(imageset, size, channels, out_channels, normalization)
    labels = tf.data.Dataset.from_tensor_slices(imageset.labels)
    examples = tf.data.Dataset.zip(pixels, labels)
    if len(imageset) * size[0] * size[1] * out_channels * 4 <= cache_bytes:
        examples = examples.cache()

    if not training:
        epoch_size = len(imageset)
        pieces = [_one_hot_batches(examples, num_classes, batch_size, drop_remainder)]
    else:
        tagged = epochs is not None and seed is not None and _takes_seed(augment)
        pieces = []
        for epoch_drawn in [seed] if epochs is None else [_seed_of(seed, e) for e in epochs]:
            ordered, epoch_size = _epoch_order(
                examples, imageset, balance, epoch_drawn, reshuffle=epochs is None
            )
            piece = _one_hot_batches(ordered, num_classes, batch_size, drop_remainder)
            # Exactly `epoch_batches`: fewer images repeat the epoch's batches, more are cut.
            piece = piece if epoch_batches is None else piece.repeat().take(epoch_batches)
            pieces.append(_with_batch_seeds(piece, epoch_drawn) if tagged else piece)
    if not pieces:
        raise ValueError("epochs is empty: pass the range of epochs to make batches for")
    batches = functools.reduce(tf.data.Dataset.concatenate, pieces)
    if training and augment is not None:

        def apply(images, one_hot, batch_seed=None):
            data = {"images": images, "labels": one_hot}
            out = augment(data) if batch_seed is None else augment(data, seed=batch_seed)
            return out["images"], out["labels"]

        batches = batches.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    steps = epoch_size // batch_size if drop_remainder else math.ceil(epoch_size / batch_size)
    steps = steps if epoch_batches is None else epoch_batches
    batches = batches.apply(tf.data.experimental.assert_cardinality(steps * len(pieces)))
    options = tf.data.Options()
    options.deterministic = seed is not None
    return batches.with_options(options).prefetch(tf.data.AUTOTUNE)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s data order and augmentation in a run seeded `seed`.

    Hashed, not `seed + epoch`: that would give seed 0's epoch 1 the order of seed 1's epoch 0,
    so two "independent" seeds would train on shifted copies of one sequence."""
    return int(np.random.SeedSequence([seed % 2**32, epoch]).generate_state(1)[0])


def _seed_of(seed: int | None, epoch: int) -> int | None:
    return None if seed is None else epoch_seed(seed, epoch)


def _takes_seed(augment: Callable | None) -> bool:
    """Whether `augment` draws from a seed it is given (`cellkeras.augment.Augmenter` does)."""
    if augment is None:
        return False
    try:
        return "seed" in inspect.signature(getattr(augment, "call", augment)).parameters
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        return False


def _with_batch_seeds(batches: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Adds to every batch its augmentation seed `(seed, batch index)`, a stateless random
    ops' seed: a batch's draws then depend on the seed alone, not on the batches before it nor
    on which of the parallel map's threads got there first."""

    def tag(step, batch):
        return (*batch, tf.stack([tf.constant(seed, tf.int64), step]))

    return batches.enumerate().map(tag)


def _one_hot_batches(
    examples: tf.data.Dataset, num_classes: int, batch_size: int, drop_remainder: bool
) -> tf.data.Dataset:
    batches = examples.map(lambda image, label: (image, tf.one_hot(label, num_classes)))
    return batches.batch(batch_size, drop_remainder=drop_remainder)


def _epoch_order(
    examples: tf.data.Dataset,
    imageset: ImageSet,
    balance: str | None,
    seed: int | None,
    reshuffle: bool,
) -> tuple[tf.data.Dataset, int]:
    """One epoch of training examples in an order drawn from `seed` (a new one on every
    iteration when `reshuffle`), and the epoch's size."""
    if balance == "oversample":
        return _oversample(examples, imageset, seed, reshuffle)
    else:
        epoch_size = len(imageset)
        examples = examples.shuffle(len(imageset), seed=seed, reshuffle_each_iteration=reshuffle)
    return examples, epoch_size
