"""The run's inputs: the configured source read and checked, split, and turned into batches.

`Inputs.load(config, runtime, first_size)` reads every image once, splits it into training,
validation and test images (`trainer.heldout`), and fixes the steps per epoch (agreed across
workers under file sharding); its `dataset` method is the one place the trainer calls
`cellkeras.data.make_dataset`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from cellkeras.augment import build_augmenter, strength_for_size
from cellkeras.data import load_tfrecords, make_dataset
from cellkeras.data.dim_images import (
    choose_normalization,
    decoded_sample,
    dim_counts,
    range_shares,
)
from cellkeras.data.imageset import ImageSet
from cellkeras.data.sources import check_images, open_source
from cellkeras.data.tfrecord import expand_tfrecord_paths, shard_tfrecord_files
from cellkeras.io.images import parse_channels
from cellkeras.models.registry import model_min_side
from cellkeras.training import (
    DEFAULT_SCHEDULE,
    MIN_STAGE_SIZE,
    Stage,
    auto_schedule,
    fit_to_images,
    parse_schedule,
)
from trainer.cluster import is_multi_worker, local_replicas, role_of
from trainer.config import RunConfig
from trainer.heldout import assign_splits, load_test_set, split_rows
from trainer.runtime import Runtime
from trainer.sharding import (
    InputSharding,
    agree_across_workers,
    agree_on_classes,
    even_batches_across_workers,
    per_worker_input,
    shard_by_data,
)


def load_data(config: RunConfig, strategy=None):
    """Reads the configured source and checks every image; returns (ImageSet, channels,
    `trainer.sharding.InputSharding`, normalization), the last "auto" resolved
    (`cellkeras.data.dim_images.choose_normalization`).

    Under a multi-worker `strategy`, TFRecords are sharded by file at the source: each worker
    reads and checks only its share of the files (`files[i::workers]` of the sorted list), so
    no file is read, decoded or augmented twice, and agrees with the others on the class names
    (a share may lack a class) and the channel count. With fewer files than workers, and for
    every other source, each worker reads everything and the batches are sharded by data.
    """

    data = config.data
    sharding = InputSharding(policy="none")
    if strategy is not None and is_multi_worker(strategy):
        sharding = InputSharding(policy="data")
        tfrecords = data.source == "tfrecords" or (
            data.source == "auto" and data.tfrecords and not (data.data_dir or data.labels_csv)
        )
        if tfrecords:
            sharded = _load_tfrecord_share(config, strategy)
            if sharded is not None:
                return sharded
        role = role_of(strategy)
        print(f"input sharding: data · {role.name} reads every input and keeps its share")
    images = open_source(
        data.source,
        data_dir=data.data_dir,
        labels_csv=data.labels_csv,
        image_root=data.image_root,
        tfrecords=data.tfrecords,
        nuclei_sources=data.nuclei_sources,
        num_images=data.synthetic_images,
        image_size=data.synthetic_size,
        difficulty=data.synthetic_difficulty,
        channels=data.channels,
        seed=config.train.seed,
        skip_bad_images=data.skip_bad_images,
        normalization=data.normalization,
    )
    normalization = resolve_normalization(data.normalization, images)
    images, channels = check_images(
        images,
        data.channels,
        skip_bad_images=data.skip_bad_images,
        normalization=normalization,
    )
    return images, channels, dataclasses.replace(sharding, images=len(images)), normalization


def resolve_normalization(requested: str, images: ImageSet, strategy=None) -> str:
    """`requested`, or for "auto" what the images call for (printed with the reason). Workers
    that each read a share of the files add up their counts and apply one rule to the sum."""
    if requested != "auto":
        return requested
    shares, counts = range_shares(images), None
    if strategy is not None and is_multi_worker(strategy):
        per_worker = local_replicas(strategy)  # one value per replica comes back
        counts = tuple(
            sum(agree_across_workers(strategy, c)[::per_worker]) for c in dim_counts(shares)
        )
    chosen, why = choose_normalization(images, counts, shares)
    print(f"normalization: auto -> {chosen} ({why})")
    return chosen


def _load_tfrecord_share(config: RunConfig, strategy):
    """`load_data` for this worker's share of the TFRecord files, or None (with a note) when
    there are fewer files than workers, so that sharding by data applies instead."""

    data, role = config.data, role_of(strategy)
    files = sorted(set(expand_tfrecord_paths(data.tfrecords)))
    if len(files) < role.num_workers:
        print(
            f"input sharding: {len(files)} TFRecord file(s) from {data.tfrecords!r} for "
            f"{role.num_workers} workers, too few to give each worker a file: sharding by data "
            f"instead (every worker reads all files); write at least {role.num_workers} shards "
            "to shard by file"
        )
        return None
    share = shard_tfrecord_files(files, role.worker_index, role.num_workers)
    images = load_tfrecords(
        share, resolve_classes=lambda named, count: agree_on_classes(strategy, named, count)
    )
    normalization = resolve_normalization(data.normalization, images, strategy)
    images, channels = check_images(
        images,
        data.channels,
        skip_bad_images=data.skip_bad_images,
        normalization=normalization,
    )
    if data.channels is None:
        # As for all files read at once: RGB wins over grey (a grey-only share is replicated).
        channels = max(agree_across_workers(strategy, channels))
    sharding = InputSharding("file", tuple(share), len(files), len(images))
    print(f"input sharding: file · {role.name} · " + json.dumps(sharding.to_dict()))
    return images, channels, sharding, normalization


def parse_strength_ramp(spec: str) -> tuple[float, float]:
    """`train.stage_strength` "START:END" as two strengths (END alone: no ramp).

    Raises:
        ValueError: naming the field, for anything but one or two numbers >= 0 with
            START <= END (a ramp that weakens with size is not progressive learning).
    """
    parts = str(spec).split(":")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=-1.0) < 0:
        raise ValueError(
            f"train.stage_strength {spec!r} is not START:END (two numbers >= 0, e.g. 0.5:1)"
        )
    start, end = values if len(values) == 2 else (values[0], values[0])
    if start > end:
        raise ValueError(
            f"train.stage_strength {spec!r}: START {start:g} is above END {end:g}; "
            "regularization grows with the image size"
        )
    return start, end


def stage_strength(stages: list[Stage], index: int, ramp: str = "0.5:1") -> float:
    """Augmentation strength for a stage (`build_augmenter`'s, which scales every magnitude
    of the preset), ramped with image size as in EfficientNetV2's progressive learning: small
    images carry less detail to regularize and a model early in training underfits, so they
    get weak augmentation; the final size gets the full END. `ramp` is `train.stage_strength`:
    START at the schedule's smallest side, END at its largest, linear in the side between
    (`strength_for_size`); a one-size schedule trains at END throughout, so a fixed-size run
    and a progressive run's final stage are regularized alike."""
    start, end = parse_strength_ramp(ramp)
    sides = [max(stage.size) for stage in stages]
    return strength_for_size(sides[index], min(sides), max(sides), start=start, end=end)


def typical_size(images: ImageSet, sample: int = 16) -> tuple[int, int]:
    """The median (height, width) of up to `sample` images spread over the set (a frame
    sequence or a folder tree is one size throughout, or nearly so)."""
    if images.images is not None:
        return tuple(int(v) for v in images.images.shape[1:3])
    sizes = [pixels.shape[:2] for pixels in decoded_sample(images, sample)]
    height, width = np.median(np.array(sizes), axis=0)
    return int(height), int(width)


def resolve_schedule(config: RunConfig, inputs: Inputs) -> list[Stage]:
    """The run's stages: `train.schedule` as given; or, when none is given, the automatic
    one: its sizes at the training images' aspect, never above their size nor below the
    model's smallest input (`model_min_side`), its epochs
    stretched to `train.min_steps` (unless `train.steps_per_epoch` fixes the steps already,
    as TFX's `train_steps` does)."""
    train = config.train
    min_side = model_min_side(train.model)
    if train.schedule:
        stages = parse_schedule(train.schedule)
        small = [str(stage) for stage in stages if min(stage.size) < min_side]
        if small:
            raise ValueError(
                f"--schedule={train.schedule}: stage(s) {', '.join(small)} are smaller than "
                f"--model={train.model} runs on ({min_side} px on the short side); give stages "
                f"of at least {min_side} px, or leave --schedule out for the automatic one"
            )
        return stages
    size = typical_size(inputs.train_set)
    if train.steps_per_epoch:
        return fit_to_images(parse_schedule(DEFAULT_SCHEDULE), size, min_side)
    return auto_schedule(size, inputs.steps_per_epoch, train.min_steps, min_side=min_side)


@dataclasses.dataclass
class Inputs:
    """The checked images of a run, split, with what batching them needs.

    Under file sharding each worker's training images (and a validation split cut from them)
    are its own input, batched per replica (`per_worker_input`); `--eval_tfrecords` are read
    whole on every worker and sharded by data, so the validation metrics, sums over every
    replica, and the final evaluation on each worker cover every image once.
    """

    config: RunConfig
    runtime: Runtime
    images: ImageSet
    train_set: ImageSet
    val_set: ImageSet
    channels: int
    sharding: InputSharding
    skipped: list[dict[str, str]]
    steps_per_epoch: int = 0
    # Per-worker steps per epoch once the workers agree, and this worker's validation batch
    # sizes (as many as every other worker's); both only under file sharding.
    agreed_steps: int | None = None
    val_batch_sizes: list[int] | None = None
    # The images scored once at the end (None: no test split), where they came from, and
    # `split.csv`'s rows.
    test_set: ImageSet | None = None
    test_source: str | None = None
    split_rows: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    @classmethod
    def load(
        cls,
        config: RunConfig,
        runtime: Runtime,
        first_size: tuple[int, int] = (MIN_STAGE_SIZE, MIN_STAGE_SIZE),
    ) -> Inputs:
        """Reads, checks and splits the configured data and sizes the epochs (their step
        count does not depend on `first_size`, the size the batches are counted at).

        Raises:
            ValueError: too few training images for one full global batch, or a bad
                `train.stage_strength` (checked before any image is read).
        """
        for name in ("steps_per_epoch", "validation_steps"):
            steps = getattr(config.train, name)
            if steps is not None and steps < 1:
                raise ValueError(f"train.{name} must be at least 1 (or None), got {steps}")
        parse_strength_ramp(config.train.stage_strength)  # before any image is read
        images, channels, sharding, normalization = load_data(config, runtime.strategy)
        # Every later step (the pipelines, config.json, the export, the card) reads the
        # resolved value, never "auto".
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, normalization=normalization)
        )
        data_cfg = config.data
        val_given = None
        if data_cfg.eval_tfrecords:
            val_given = load_tfrecords(data_cfg.eval_tfrecords, classes=images.classes)
        test_given, test_source = load_test_set(config, images.classes)
        assigned, source_test = assign_splits(
            config, images, val_given is not None, test_given is not None
        )

        def part(name: str) -> ImageSet:
            return images.subset(np.flatnonzero(assigned == name))

        train_set = part("train")
        val_set = val_given if val_given is not None else part("val")
        test_set = test_given if test_given is not None else part("test") if source_test else None
        skipped = [
            {"input": where, "reason": why}
            for where, why in images.skipped + (test_given.skipped if test_given else [])
        ]
        inputs = cls(config, runtime, images, train_set, val_set, channels, sharding, skipped)
        inputs.test_set, inputs.test_source = test_set, test_source or source_test
        inputs.split_rows = split_rows(config, images, assigned, val_given, test_given)
        inputs.steps_per_epoch = len(
            inputs.dataset(train_set, first_size, training=True, for_fit=True)
        )
        if sharding.policy == "file":
            inputs._agree_on_steps()
        if inputs.steps_per_epoch < 1:
            raise ValueError(
                f"{len(train_set)} training images make no full global batch of "
                f"{runtime.global_batch(config.train.batch_size)} (the custom loop drops partial "
                "batches): lower --batch_size or add images"
            )
        return inputs

    def _agree_on_steps(self) -> None:
        """Shares of whole files hold different numbers of images; every worker trains the
        smallest share's full steps (agreed before the learning-rate schedule is sized)."""
        strategy = self.runtime.strategy
        mine = self.steps_per_epoch // local_replicas(strategy)
        everyone = agree_across_workers(strategy, mine)
        self.agreed_steps = self.steps_per_epoch = min(everyone)
        print(
            f"input sharding: {len(self.train_set)} training images here, {mine} step(s) per "
            f"epoch; all workers {sorted(set(everyone))}: agreed {self.agreed_steps} step(s) "
            "per epoch"
        )
        if not self.config.data.eval_tfrecords:
            self.val_batch_sizes = even_batches_across_workers(
                strategy, len(self.val_set), self.config.train.batch_size
            )

    @property
    def channel_indices(self) -> tuple[int, ...] | None:
        picked = parse_channels(self.config.data.channels)
        return picked if isinstance(picked, tuple) else None

    def describe(self) -> str:
        skipped = len(self.skipped)
        test = f" / {len(self.test_set)} test" if self.test_set is not None else ""
        return (
            f"data: {self.images.name} · {len(self.train_set)} train / {len(self.val_set)} val"
            f"{test} images · classes {self.images.classes} · {self.channels} channel(s)"
            + (f" · {skipped} skipped (see skipped.json)" if skipped else "")
        )

    @property
    def test_is_per_worker(self) -> bool:
        """Whether each worker holds its own part of the test images (cut from its share of
        the files under file sharding), not all of them (a `--test_*` input)."""
        data = self.config.data
        given = data.test_dir or data.test_labels_csv or data.test_tfrecords
        return self.sharding.policy == "file" and not given

    def _epoch_batches(self, training: bool, per_worker: bool, for_fit: bool) -> int | None:
        """Training batches per epoch when fixed: every worker must run the same number of
        steps, or the others wait forever in the next step's all-reduce (all take the smallest
        share's count); else `train.steps_per_epoch` for `fit`; else one pass (None)."""
        if not training:
            return None
        if per_worker and self.agreed_steps is not None:
            return self.agreed_steps * local_replicas(self.runtime.strategy)
        return self.config.train.steps_per_epoch if for_fit else None

    def dataset(
        self,
        subset: ImageSet,
        size,
        training: bool,
        strength: float = 1.0,
        for_fit: bool = False,
        epochs: range | None = None,
    ) -> Any:
        """Batches of `subset` at `size`, augmented at `strength` when `training`, placed for
        the run's strategy (sharded by data, or this worker's own input under file sharding).

        `for_fit`: the batches of one epoch of `fit`: `train.steps_per_epoch` training batches
        (the images repeat as needed) or `train.validation_steps` validation batches, where
        set; the final evaluations score every image. `epochs` (training): the run's epochs to
        make back to back, each drawn from (seed, epoch) as `make_dataset` says, so that a
        resumed run draws what it would have."""
        train_cfg, data_cfg, runtime = self.config.train, self.config.data, self.runtime
        if subset is self.test_set:
            per_worker = self.test_is_per_worker
        else:
            per_worker = self.sharding.policy == "file" and (
                training or not data_cfg.eval_tfrecords
            )
        augmenter = None
        if training and train_cfg.augment != "none":
            augmenter = build_augmenter(
                train_cfg.augment,
                image_size=size,
                strength=strength,
                seed=train_cfg.seed,
                num_classes=self.images.num_classes,
            )
        batches = make_dataset(
            subset,
            size,
            training=training,
            batch_size=train_cfg.batch_size
            if per_worker
            else runtime.global_batch(train_cfg.batch_size),
            # Channel indices ("0,2") are picked from every image; else the checked count.
            channels=self.channel_indices or self.channels,
            augment=augmenter,
            balance=data_cfg.balance if training else None,
            normalization=data_cfg.normalization,
            seed=train_cfg.seed,
            # Under tf.distribute a partial global batch splits unevenly (some replicas get
            # few or no images, and under multi_worker the workers' iterators must agree on
            # an extra, ragged step); the custom loop trains on full global batches only.
            # Validation keeps every image: its metrics are sums, which empty shares leave
            # unchanged.
            drop_remainder=training and runtime.custom_loop,
            epochs=epochs if training else None,
            epoch_batches=self._epoch_batches(training, per_worker, for_fit),
        )
        if for_fit and not training and train_cfg.validation_steps:
            batches = batches.take(train_cfg.validation_steps)
        if per_worker:
            if not training and self.val_batch_sizes and subset is self.val_set:
                batches = batches.rebatch(self.val_batch_sizes)
            return per_worker_input(batches)
        return shard_by_data(batches) if runtime.multi_worker else batches
