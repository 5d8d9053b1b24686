"""`python -m trainer.task`: train a cellkeras model and write a run folder.

    python -m trainer.task                          # synthetic cells, the default schedule
    python -m trainer.task --preset=smoke           # the whole path in seconds
    python -m trainer.task --data_dir=images/ --schedule=64:4,128:2 --model=parallel_three
    TF_CONFIG=... python -m trainer.task --distribution=multi_worker   # on every machine

Multi-worker runs (one process per machine, the cluster in TF_CONFIG) train through the custom
loop in `trainer.distributed`; see docs/DISTRIBUTED.md.

Flags are read here, once, into a `RunConfig`; everything below takes that config (or parts of
it) as arguments. The run folder holds `config.json`, `metrics.json`, `history.csv`,
`skipped.json`, `training_curves.png`, `model.keras` and TensorBoard logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# TensorFlow's C++ INFO/WARNING start-up lines bury the run's own output; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from trainer.config import RunConfig, build_config  # noqa: E402
from trainer.schedule import (  # noqa: E402
    JOINT,
    JOINT_HEAD,
    Phase,
    Stage,
    format_schedule,
    parse_schedule,
    plan_phases,
    total_epochs,
)

MIXED_PRECISION_MODES = ("auto", "off", "float16", "bfloat16")
DISTRIBUTIONS = ("auto", "one", "mirrored", "multi_worker")
TRAINING_LOOPS = ("auto", "fit", "custom")
LATER_STAGE_MODES = ("all", "head")
TRAINING_MODES = ("joint", "stagewise")


def resolve_precision(mode: str) -> str:
    """The Keras dtype policy for `--mixed_precision`: `auto` picks mixed_float16 on a GPU of
    compute capability 7.0 or newer (tensor cores) and float32 elsewhere."""
    import tensorflow as tf

    if mode not in MIXED_PRECISION_MODES:
        raise ValueError(f"unknown mixed_precision {mode!r}; known: {MIXED_PRECISION_MODES}")
    if mode == "off":
        return "float32"
    if mode in ("float16", "bfloat16"):
        return f"mixed_{mode}"
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and capability >= (7, 0):
            return "mixed_float16"
    return "float32"


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Sets Keras' global dtype policy for the run and restores the caller's afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make_strategy(mode: str, tf_config: str | None = None):
    """The tf.distribute strategy for `--distribution`.

    `multi_worker` builds a `MultiWorkerMirroredStrategy` from `tf_config` (default: the
    `TF_CONFIG` environment variable); call it before TensorFlow runs anything else.

    Raises:
        ValueError: an unknown mode, or a missing or malformed TF_CONFIG for multi_worker.
    """
    import tensorflow as tf

    if mode not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {mode!r}; known: {DISTRIBUTIONS}")
    if mode == "multi_worker":
        from trainer.distributed import make_multi_worker_strategy, parse_tf_config

        text = os.environ.get("TF_CONFIG") if tf_config is None else tf_config
        return make_multi_worker_strategy(parse_tf_config(text))
    gpus = tf.config.list_logical_devices("GPU")
    if mode == "mirrored" or (mode == "auto" and len(gpus) > 1):
        # Without GPUs, mirror over the logical CPUs (tests split one CPU into two).
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if mode == "one":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def _use_xla(strategy, mode: str = "auto") -> bool | str:
    """`--jit_compile` for this strategy; see `trainer.xla.resolve_jit_compile`."""
    from trainer.xla import resolve_jit_compile

    return resolve_jit_compile(mode, strategy)


def _use_custom_loop(loop: str, strategy) -> bool:
    """Whether stages train through `fit_stage_distributed` instead of `fit`."""
    from trainer.distributed import is_multi_worker

    if loop not in TRAINING_LOOPS:
        raise ValueError(f"unknown training_loop {loop!r}; known: {TRAINING_LOOPS}")
    if loop == "fit" and is_multi_worker(strategy):
        raise ValueError(
            "training_loop=fit cannot run under multi_worker: Keras 3's fit fails under "
            "MultiWorkerMirroredStrategy (keras-team/keras#20585); use auto or custom"
        )
    return loop == "custom" or is_multi_worker(strategy)


def _worker_folder(config: RunConfig, role) -> Path:
    """Where this process writes the run: the run folder for the chief; for any other worker
    a folder of its own (it saves everything the chief saves, since saving may read
    distributed variables through collectives every worker must join)."""
    if role.is_chief:
        return Path(config.output_dir)
    if config.worker_dir:
        return Path(config.worker_dir)
    return Path(config.output_dir) / ".workers" / role.name


def _stagewise_parts(model: keras.Model, train_cfg) -> list[str] | None:
    """What stage-wise training fits in turn (None for joint training).

    Raises:
        ValueError: an unknown mode, or stage-wise training of a model that is not parallel.
    """
    from cellkeras.models import branch_names, stagewise_parts

    if train_cfg.training_mode not in TRAINING_MODES:
        raise ValueError(
            f"unknown training_mode {train_cfg.training_mode!r}; known: {TRAINING_MODES}"
        )
    if train_cfg.training_mode == "joint":
        return None
    if len(branch_names(model)) < 2:
        raise ValueError(
            f"training_mode=stagewise trains the branches of a parallel model one by one; "
            f"{train_cfg.model!r} has {len(branch_names(model))} branch (use a parallel_* model)"
        )
    if train_cfg.later_stages != "all":
        raise ValueError(
            "later_stages=head is a joint-training variant; stage-wise training already "
            "trains the head alone after the branches (--head_epochs)"
        )
    return stagewise_parts(model, train_cfg.head_epochs)


def load_data(config: RunConfig, strategy=None):
    """Reads the configured source and checks every image; returns (ImageSet, channels,
    `trainer.distributed.InputSharding`).

    Under a multi-worker `strategy`, TFRecords are sharded by file at the source: each worker
    reads and checks only its share of the files (`files[i::workers]` of the sorted list), so
    no file is read, decoded or augmented twice, and agrees with the others on the class names
    (a share may lack a class) and the channel count. With fewer files than workers, and for
    every other source, each worker reads everything and the batches are sharded by data.
    """
    from cellkeras.data.sources import check_images, open_source
    from trainer.distributed import InputSharding, is_multi_worker, role_of

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
        num_images=data.synthetic_images,
        image_size=data.synthetic_size,
        difficulty=data.synthetic_difficulty,
        channels=data.channels,
        seed=config.train.seed,
        skip_bad_images=data.skip_bad_images,
    )
    images, channels = check_images(images, data.channels, skip_bad_images=data.skip_bad_images)
    return images, channels, dataclasses.replace(sharding, images=len(images))


def _load_tfrecord_share(config: RunConfig, strategy):
    """`load_data` for this worker's share of the TFRecord files, or None (with a note) when
    there are fewer files than workers, so that sharding by data applies instead."""
    from cellkeras.data.sources import check_images
    from cellkeras.data.tfrecord import expand_tfrecord_paths, load_tfrecords, shard_tfrecord_files
    from trainer.distributed import (
        InputSharding,
        agree_across_workers,
        agree_on_classes,
        role_of,
    )

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
    images, channels = check_images(images, data.channels, skip_bad_images=data.skip_bad_images)
    if data.channels is None:
        # As for all files read at once: RGB wins over grey (a grey-only share is replicated).
        channels = max(agree_across_workers(strategy, channels))
    sharding = InputSharding("file", tuple(share), len(files), len(images))
    print(f"input sharding: file · {role.name} · " + json.dumps(sharding.to_dict()))
    return images, channels, sharding


class RunProgress(keras.callbacks.Callback):
    """Makes a run resumable and keeps its best model.

    After every epoch it saves the weights and optimizer state of the model being fitted, and
    the progress through the schedule, atomically, into the run's checkpoint folder; rerunning
    the same command after a crash or `kill -9` continues after the last finished epoch,
    mid-stage included (at most the epoch in flight is lost). Keras' BackupAndRestore does not
    fit a schedule of several `fit` calls: it restores the epoch counter into whichever call
    comes first and deletes its backup when that call ends. It also keeps the watched model's
    weights whenever validation accuracy improves (written out as `best.keras` at the end,
    `write_best`), and records each stage when its last epoch ends, in the same write as the
    epoch, so a crash between the two cannot lose the record.
    """

    def __init__(self, folder: Path, fingerprint: dict[str, Any]):
        super().__init__()
        self.folder = folder
        self.fingerprint = fingerprint
        self.epochs_done = 0
        self.best_val_accuracy = -1.0
        self.stages: list[dict[str, Any]] = []
        self.partial_seconds: dict[str, float] = {}
        self._stage = 0
        self._stage_end = 0
        self._stage_record: dict[str, Any] = {}
        self._started = time.perf_counter()
        self._carried = 0.0
        self._watched: keras.Model | None = None
        self._whole_classifier: keras.Model | None = None
        self._restore_from = self.weights_path

    @property
    def weights_path(self) -> Path:
        return self.folder / "state.weights.h5"

    @classmethod
    def resume_or_start(
        cls, folder: Path, config: RunConfig, read_from: Path | None = None
    ) -> RunProgress:
        """The saved progress of an unfinished run of the same config, or a fresh start.

        `read_from` is the checkpoint folder to resume from when it is not `folder`: a
        multi-worker run's non-chief workers resume from the chief's checkpoint, so that every
        worker restores the same state, and save their own into `folder`.

        Raises:
            ValueError: the folder holds an unfinished run of a different configuration.
        """
        fingerprint = {
            "data": dataclasses.asdict(config.data),
            "train": dataclasses.asdict(config.train),
        }
        progress = cls(folder, fingerprint)
        source = read_from or folder
        saved = source / "progress.json"
        progress._restore_from = source / progress.weights_path.name
        if not saved.is_file() or not progress._restore_from.is_file():
            return progress
        state = json.loads(saved.read_text())
        if state["fingerprint"] != fingerprint:
            raise ValueError(
                f"{source.parent} holds an unfinished run with a different configuration; "
                "pass another --output_dir, or delete the folder to start over"
            )
        progress.epochs_done = state["epochs_done"]
        progress.best_val_accuracy = state["best_val_accuracy"]
        progress.stages = state["stages"]
        progress.partial_seconds = state["partial_seconds"]
        return progress

    @property
    def resumed_from(self) -> Path:
        """The run folder whose checkpoint this progress was read from."""
        return self._restore_from.parent.parent

    @property
    def classifier_path(self) -> Path:
        return self.weights_path.with_name("classifier.npz")

    @property
    def best_path(self) -> Path:
        return self.weights_path.with_name("best.npz")

    def restore(self, fit_model: keras.Model, classifier: keras.Model | None = None) -> None:
        """Loads the saved state into the (compiled) model to fit: first the whole
        classifier's weights, when saved (a stage-wise part fits only some of them), then the
        fitted model's weights and optimizer state."""
        saved_classifier = self._restore_from.with_name(self.classifier_path.name)
        if classifier is not None and saved_classifier.is_file():
            _load_weights_npz(classifier, saved_classifier)
        saved_best = self._restore_from.with_name(self.best_path.name)
        if saved_best.is_file() and saved_best != self.best_path:  # a worker's own copy
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(saved_best, self.best_path)
        fit_model.optimizer.build(fit_model.trainable_variables)
        fit_model.load_weights(self._restore_from)

    def watch(self, model: keras.Model | None, whole_classifier: keras.Model | None = None) -> None:
        """`model`'s weights are kept as the best when validation accuracy improves (the
        classifier, not the training wrapper; None while the fitted model's accuracy is not
        the classifier's). `whole_classifier` is saved with every epoch's state when the
        fitted model holds only part of its weights."""
        self._watched = model
        self._whole_classifier = whole_classifier

    def begin_stage(self, index: int, end_epoch: int, record: dict[str, Any]) -> None:
        """Stage `index` ends after epoch `end_epoch` (counted over the run); `record` is its
        entry for `stages`, completed with its seconds and validation accuracy then."""
        self._stage = index
        self._stage_end = end_epoch
        self._stage_record = record
        self._started = time.perf_counter()
        self._carried = self.partial_seconds.get(str(index), 0.0)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs_done = epoch + 1
        elapsed = self._carried + time.perf_counter() - self._started
        self.partial_seconds[str(self._stage)] = elapsed
        self.folder.mkdir(parents=True, exist_ok=True)
        val_accuracy = (logs or {}).get("val_accuracy")
        improved = val_accuracy is not None and val_accuracy > self.best_val_accuracy
        if self._watched is not None and improved:
            self.best_val_accuracy = float(val_accuracy)
            _save_weights_npz(self._watched, self.best_path)
        if self._whole_classifier is not None:
            _save_weights_npz(self._whole_classifier, self.classifier_path)
        _save_atomically(self.model.save_weights, self.weights_path)
        if self.epochs_done == self._stage_end and len(self.stages) == self._stage:
            self.stages.append(
                {
                    **self._stage_record,
                    "seconds": round(elapsed, 2),
                    "val_accuracy": None if val_accuracy is None else float(val_accuracy),
                }
            )
        self.save()

    def write_best(self, model: keras.Model, path: Path) -> None:
        """Saves `model` with the best weights seen as `path` (a `.keras` file), then puts its
        own weights back. Weights only, then a whole save of the final model: a best kept
        mid-run as a `.keras` file would carry an optimizer built for the part of the model
        being trained then, and loading it would warn and drop it."""
        if not self.best_path.is_file():
            return
        final = model.get_weights()
        _load_weights_npz(model, self.best_path)
        _save_atomically(model.save, path)
        model.set_weights(final)

    def save(self) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "epochs_done": self.epochs_done,
            "best_val_accuracy": self.best_val_accuracy,
            "stages": self.stages,
            "partial_seconds": self.partial_seconds,
        }
        _save_atomically(
            lambda path: Path(path).write_text(json.dumps(state, indent=2) + "\n"),
            self.folder / "progress.json",
        )

    def finish(self) -> None:
        """The run is complete: a rerun of the same command starts a new one."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _save_weights_npz(model: keras.Model, path: Path) -> None:
    weights = model.get_weights()
    _save_atomically(
        lambda temporary: np.savez(temporary, **{f"w{i}": w for i, w in enumerate(weights)}),
        path,
    )


def _load_weights_npz(model: keras.Model, path: Path) -> None:
    with np.load(path) as arrays:
        model.set_weights([arrays[f"w{i}"] for i in range(len(arrays.files))])


def _save_atomically(write, path: Path) -> None:
    """Calls `write(temporary)` beside `path`, then renames: a kill never leaves half a file."""
    temporary = path.with_name(f".partial-{path.name}")
    write(str(temporary))
    os.replace(temporary, path)


def _stage_strength(stages: list[Stage], index: int) -> float:
    """Augmentation strength for a stage, ramped with image size (EfficientNetV2's progressive
    learning: small images carry less detail to regularize, so they get weaker augmentation)."""
    from cellkeras.augment import strength_for_size

    sides = [max(stage.size) for stage in stages]
    return strength_for_size(sides[index], min(sides), max(sides), start=0.5)


def _make_augmenter(name: str, size: tuple[int, int], strength: float, seed: int, classes: int):
    if name == "none":
        return None
    from cellkeras.augment import build_augmenter

    return build_augmenter(name, image_size=size, strength=strength, seed=seed, num_classes=classes)


def run(
    config: RunConfig,
    verbose: int | str = "auto",
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> dict[str, Any]:
    """Trains as configured, writes the run folder and returns the metrics dict.

    `callbacks` are added to every stage's `fit` (they see the model being fitted, which with
    auxiliary branch losses wraps the classifier).

    Under `distribution="multi_worker"` every worker runs this same function: stages train
    through `trainer.distributed.fit_stage_distributed` instead of `fit`, the chief writes the
    run folder, and each other worker writes its copy into a folder of its own (see
    `RunConfig.worker_dir`) that is removed at the end. Every worker resumes from the chief's
    checkpoint, so `output_dir` must be storage they all see.
    """
    from cellkeras.data import make_dataset
    from cellkeras.data.splits import split_imageset
    from cellkeras.evaluate import evaluate_branches
    from cellkeras.models import create_model
    from cellkeras.models.training import (
        HEAD,
        AliasMergedMetrics,
        compile_classifier,
        joint_trainer,
        set_trainable,
        stagewise_trainer,
    )
    from trainer.distributed import (
        agree_across_workers,
        fit_stage_distributed,
        is_multi_worker,
        role_of,
        shard_by_data,
    )

    stages: list[Stage] = parse_schedule(config.train.schedule)
    if config.train.later_stages not in LATER_STAGE_MODES:
        raise ValueError(
            f"unknown later_stages {config.train.later_stages!r}; known: {LATER_STAGE_MODES}"
        )
    train_cfg, data_cfg = config.train, config.data
    # Before anything else runs TensorFlow: a MultiWorkerMirroredStrategy sets up collective
    # ops, which TensorFlow accepts only at program start.
    strategy = make_strategy(train_cfg.distribution)
    custom_loop = _use_custom_loop(train_cfg.training_loop, strategy)
    multi_worker = is_multi_worker(strategy)
    role = role_of(strategy)
    out = _worker_folder(config, role)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.json")
    if multi_worker:
        print(
            f"multi-worker: {role.name} of {role.num_workers} workers · "
            + ("chief, writes " if role.is_chief else "writes its copy to ")
            + str(out)
        )
    keras.utils.set_random_seed(train_cfg.seed)

    images, channels, sharding = load_data(config, strategy)
    if data_cfg.eval_tfrecords:
        from cellkeras.data import load_tfrecords

        train_set, val_set = images, load_tfrecords(data_cfg.eval_tfrecords, classes=images.classes)
    else:
        train_set, val_set = split_imageset(images, data_cfg.val_fraction, seed=train_cfg.seed)
    skipped = [{"input": where, "reason": why} for where, why in images.skipped]
    (out / "skipped.json").write_text(json.dumps(skipped, indent=2) + "\n")
    print(
        f"data: {images.name} · {len(train_set)} train / {len(val_set)} val images · "
        f"classes {images.classes} · {channels} channel(s)"
        + (f" · {len(skipped)} skipped (see skipped.json)" if skipped else "")
    )

    # Under file sharding each worker's training images (and a validation split cut from
    # them) are its own input, batched per replica (`per_worker_input`); --eval_tfrecords
    # are read whole on every worker and sharded by data, so the validation metrics, sums
    # over every replica, and the final evaluation on each worker cover every image once.
    agreed_steps: int | None = None  # per-worker steps per epoch, once the workers agree
    val_batch_sizes: list[int] | None = None  # this worker's, as many as every other's

    def dataset(subset, size, training, strength=1.0):
        from trainer.distributed import local_replicas, per_worker_input

        per_worker = sharding.policy == "file" and (training or not data_cfg.eval_tfrecords)
        augmenter = (
            _make_augmenter(train_cfg.augment, size, strength, train_cfg.seed, images.num_classes)
            if training
            else None
        )
        batches = make_dataset(
            subset,
            size,
            training=training,
            batch_size=train_cfg.batch_size if per_worker else global_batch,
            channels=channels,
            augment=augmenter,
            balance=data_cfg.balance if training else None,
            normalization=data_cfg.normalization,
            seed=train_cfg.seed,
            # Under tf.distribute a partial global batch splits unevenly (some replicas get
            # few or no images, and under multi_worker the workers' iterators must agree on
            # an extra, ragged step); the custom loop trains on full global batches only.
            # Validation keeps every image: its metrics are sums, which empty shares leave
            # unchanged.
            drop_remainder=training and custom_loop,
        )
        if per_worker:
            if training and agreed_steps is not None:
                # Every worker must run the same number of steps, or the others wait forever
                # in the next step's all-reduce: all take the smallest share's step count.
                batches = batches.take(agreed_steps * local_replicas(strategy))
            if not training and val_batch_sizes:
                batches = batches.rebatch(val_batch_sizes)
            return per_worker_input(batches)
        return shard_by_data(batches) if multi_worker else batches

    policy = resolve_precision(train_cfg.mixed_precision)
    global_batch = train_cfg.batch_size * strategy.num_replicas_in_sync
    steps_per_epoch = len(dataset(train_set, stages[0].size, True))
    if sharding.policy == "file":
        from trainer.distributed import even_batches_across_workers, local_replicas

        # Shares of whole files hold different numbers of images; every worker trains the
        # smallest share's full steps (agreed before the learning-rate schedule is sized).
        mine = steps_per_epoch // local_replicas(strategy)
        everyone = agree_across_workers(strategy, mine)
        agreed_steps = steps_per_epoch = min(everyone)
        print(
            f"input sharding: {len(train_set)} training images here, {mine} step(s) per epoch; "
            f"all workers {sorted(set(everyone))}: agreed {agreed_steps} step(s) per epoch"
        )
        if not data_cfg.eval_tfrecords:
            val_batch_sizes = even_batches_across_workers(
                strategy, len(val_set), train_cfg.batch_size
            )
    if steps_per_epoch < 1:
        raise ValueError(
            f"{len(train_set)} training images make no full global batch of {global_batch} "
            "(the custom loop drops partial batches): lower --batch_size or add images"
        )
    progress = RunProgress.resume_or_start(
        out / "checkpoint",
        config,
        read_from=None if role.is_chief else Path(config.output_dir) / "checkpoint",
    )
    with dtype_policy(policy), strategy.scope():
        model = create_model(train_cfg.model, images.num_classes, channels=channels)
    phases = plan_phases(
        stages,
        _stagewise_parts(model, train_cfg),
        train_cfg.head_epochs,
        later_stages_head_only=train_cfg.later_stages == "head",
    )
    xla = _use_xla(strategy, train_cfg.jit_compile)
    phase_ends = list(itertools.accumulate(phase.stage.epochs for phase in phases))
    all_epochs = phase_ends[-1]

    def trainer_for(phase: Phase, previous: keras.Model | None = None):
        """The compiled model to fit in `phase` and its label function. Joint training keeps
        one optimizer and learning-rate schedule across all its phases (`previous`'s);
        stage-wise gives each part its own, decaying over that part's epochs."""
        part_epochs = sum(p.stage.epochs for p in phases if p.part == phase.part)
        joint = phase.part in (JOINT, JOINT_HEAD)
        with dtype_policy(policy), strategy.scope():
            if previous is not None and joint:
                optimizer = previous.optimizer
            else:
                optimizer = keras.optimizers.Adam(
                    keras.optimizers.schedules.CosineDecay(
                        train_cfg.learning_rate,
                        steps_per_epoch * (total_epochs(stages) if joint else part_epochs),
                        alpha=0.05,
                    )
                )
            if not joint:
                fitted = stagewise_trainer(model, phase.part, optimizer, jit_compile=xla)
                return fitted, lambda data: data
            if phase.part == JOINT_HEAD:
                # The seed's variant: features learned on small images stay, the head
                # relearns at the larger size. Keras 3 fixes the trainable set at compile time.
                set_trainable(model, branches=False, head=True)
            return joint_trainer(model, optimizer, train_cfg.branch_loss_weight, jit_compile=xla)

    # The checkpoint was written by the phase that holds the last finished epoch (the one
    # that ended, at a phase boundary). A joint run's optimizer was built over the whole model
    # in its first phase, so its saved state loads into that phase's trainer; a stage-wise
    # part's, into that part's; the loop then moves on to the next part with a fresh one.
    saved_by = next(
        (i for i, end in enumerate(phase_ends) if progress.epochs_done <= end), len(phases) - 1
    )
    built = phases[0] if phases[saved_by].part in (JOINT, JOINT_HEAD) else phases[saved_by]
    fit_model, to_labels = trainer_for(built)
    if progress.epochs_done:
        with dtype_policy(policy), strategy.scope():  # the optimizer's slots are built here
            progress.restore(fit_model, classifier=model)
        print(
            f"resuming {progress.resumed_from} after epoch {progress.epochs_done} of {all_epochs}"
        )
    if multi_worker:
        # A worker that resumed from elsewhere (or not at all) would step out of sync with the
        # others' collectives and hang; fail on every worker instead.
        done = agree_across_workers(strategy, progress.epochs_done)
        if len(set(done)) > 1:
            raise RuntimeError(
                f"workers would resume after different epochs {done}: every worker resumes "
                f"from the chief's checkpoint in {Path(config.output_dir) / 'checkpoint'}, so "
                "--output_dir must be a folder all workers see (shared disk, /gcs/ mount)"
            )
    print(
        f"model: {train_cfg.model} · {model.count_params():,} parameters · policy {policy} · "
        f"{strategy.num_replicas_in_sync} replica(s) · schedule {format_schedule(stages)}"
        + (
            f" · stage-wise: {', '.join(dict.fromkeys(p.part for p in phases))}"
            if train_cfg.training_mode == "stagewise"
            else ""
        )
        + (" · custom training loop" if custom_loop else "")
    )

    if not progress.epochs_done:
        (out / "history.csv").unlink(missing_ok=True)
        (out / "best.keras").unlink(missing_ok=True)  # an earlier run's
    extra_callbacks = list(callbacks or [])
    callbacks = [
        AliasMergedMetrics(),
        *extra_callbacks,
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "logs")),
        progress,  # last: an epoch counts as done only once everything above has run
    ]
    fit_stage = fit_stage_distributed if custom_loop else _fit_stage
    for index, phase in enumerate(phases):
        first_epoch = phase_ends[index] - phase.stage.epochs
        if progress.epochs_done >= phase_ends[index]:
            continue
        if phase.part != built.part:
            fit_model, to_labels = trainer_for(phase, previous=fit_model)
            built = phase
        # best.keras keeps the best classifier, so only phases that fit the whole model's
        # output count (a stage-wise branch's accuracy is not the model's).
        progress.watch(
            model if phase.part in (JOINT, JOINT_HEAD, HEAD) else None,
            whole_classifier=None if phase.part in (JOINT, JOINT_HEAD) else model,
        )
        strength = _stage_strength(stages, phase.stage_index)
        record = {
            "size": list(phase.stage.size),
            "epochs": phase.stage.epochs,
            "trains": phase.part,
            "augment_strength": strength,
        }
        progress.begin_stage(index, phase_ends[index], record)  # it records the stage's end
        fit_stage(
            fit_model,
            to_labels(dataset(train_set, phase.stage.size, True, strength)),
            to_labels(dataset(val_set, phase.stage.size, False)),
            initial_epoch=max(progress.epochs_done, first_epoch),
            epochs=phase_ends[index],
            callbacks=callbacks,
            verbose=verbose,
        )
        kind = "stage" if phase.part == JOINT else "phase"
        if len(progress.stages) <= index:
            raise RuntimeError(
                f"{kind} {phase} ended after epoch {progress.epochs_done} of "
                f"{phase_ends[index]} (a callback stopped training?)"
            )
        done = progress.stages[index]
        print(
            f"{kind} {index + 1}/{len(phases)} {phase}: {done['seconds']:.1f} s · "
            f"val_accuracy {done['val_accuracy']:.4f}"
        )
    if any(phase.part != JOINT for phase in phases):
        # Saved and exported whole, with a fresh optimizer built for all the weights: one
        # built for a subset makes loading the saved model warn and drop it.
        with dtype_policy(policy), strategy.scope():
            set_trainable(model, branches=True, head=True)
            if model.compiled:
                compile_classifier(model, keras.optimizers.Adam(train_cfg.learning_rate))
                model.optimizer.build(model.trainable_variables)
    stage_metrics = progress.stages

    final_size = stages[-1].size
    train_images, val_images, combine = len(train_set), len(val_set), None
    if sharding.policy == "file":
        # Each worker holds its own part of the data: count, and score, all of them.
        from trainer.distributed import gather_predictions_across_workers, total_across_workers

        train_images = total_across_workers(strategy, train_images)
        if not data_cfg.eval_tfrecords:  # else every worker evaluates every eval image
            val_images = total_across_workers(strategy, val_images)
            combine = functools.partial(gather_predictions_across_workers, strategy)
    analysis = evaluate_branches(
        model,
        dataset(val_set, final_size, False),
        images.classes,
        out,
        title=f"validation at {format_schedule(stages[-1:]).split(':')[0]} px",
        combine=combine,
    )
    accuracy = analysis["per_branch_accuracy"]
    metrics = {
        "classes": images.classes,
        "val_accuracy": analysis["models"]["merged"]["accuracy"],
        "per_branch_val_accuracy": accuracy,
        "stages": stage_metrics,
        "total_seconds": round(sum(s["seconds"] for s in stage_metrics), 2),
        "train_images": train_images,
        "val_images": val_images,
        "model": train_cfg.model,
        "parameters": int(model.count_params()),
        "dtype_policy": policy,
        # What Keras compiled the last trained step with (`--jit_compile` resolved).
        "jit_compile": bool(fit_model.jit_compile),
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": role.num_workers,
        "training_loop": "custom" if custom_loop else "fit",
        "training_mode": train_cfg.training_mode,
        "input_sharding": sharding.to_dict(),
        "final_size": list(final_size),
    }
    model.save(out / "model.keras")
    if config.export_dir:
        from cellkeras.export import export_model

        version_dir = export_model(
            model,
            config.export_dir if role.is_chief else out / "export",
            classes=images.classes,
            image_size=final_size,
            channels=channels,
            normalization=data_cfg.normalization,
            metadata={"metrics": metrics, "schedule": format_schedule(stages)},
        )
        metrics["export"] = str(version_dir)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plot_curves(out, phases)
    write_report(out, config, metrics, analysis, skipped)
    progress.write_best(model, out / "best.keras")
    progress.finish()
    where = f"run folder {out}"
    if not role.is_chief and not config.worker_dir:
        shutil.rmtree(out, ignore_errors=True)
        with contextlib.suppress(OSError):  # the last worker out removes the parent
            out.parent.rmdir()
        where = f"the chief writes {config.output_dir}; this worker's copy is removed"
    print(
        f"done: val_accuracy {metrics['val_accuracy']:.4f} "
        f"(branches: {', '.join(f'{k} {v:.3f}' for k, v in accuracy.items())}) "
        f"in {metrics['total_seconds']:.0f} s · {where}"
    )
    return metrics


def _fit_stage(
    fit_model: keras.Model,
    train_data,
    validation_data,
    initial_epoch: int,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
    verbose: int | str,
) -> keras.callbacks.History:
    """One stage through Keras' `fit` (the single-machine path); `fit_stage_distributed`
    takes the same arguments."""
    return fit_model.fit(
        train_data,
        validation_data=validation_data,
        initial_epoch=initial_epoch,
        epochs=epochs,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # make_dataset already reshuffles every epoch
    )


def write_report(
    out: Path,
    config: RunConfig,
    metrics: dict[str, Any],
    analysis: dict[str, Any],
    skipped: list[dict[str, str]],
) -> Path:
    """`report.html`: the whole run on one page (figures, stages, branches, export)."""
    import html

    def table(header: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    stages = table(
        ["stage", "trains", "size", "epochs", "seconds", "val accuracy", "augment strength"],
        [
            [i + 1, s.get("trains", JOINT), "x".join(map(str, s["size"])), s["epochs"],
             s["seconds"], f"{s['val_accuracy']:.4f}", f"{s['augment_strength']:.2f}"]
            for i, s in enumerate(metrics["stages"])
        ],
    )  # fmt: skip
    models = table(
        ["model", "accuracy", "ECE", "Brier"],
        [
            [name, f"{m['accuracy']:.4f}", f"{m['ece']:.4f}", f"{m['brier']:.4f}"]
            for name, m in analysis["models"].items()
        ],
    )  # fmt: skip
    pairs = table(
        ["pair", "disagreement", "double fault", "oracle accuracy"],
        [
            [" + ".join(p["models"]), f"{p['disagreement']:.4f}", f"{p['double_fault']:.4f}",
             f"{p['oracle_accuracy']:.4f}"]
            for p in analysis["pairs"]
        ],
    )  # fmt: skip
    figures = "".join(
        f'<figure><img src="{name}" alt="{name}"><figcaption>{name}</figcaption></figure>'
        for name in ("training_curves.png", "confusion_matrices.png", "reliability.png")
        if (out / name).is_file()
    )
    skipped_html = (
        table(["input", "reason"], [[s["input"], s["reason"]] for s in skipped])
        if skipped
        else "<p>none</p>"
    )
    export = (
        f"<p>SavedModel: <code>{html.escape(metrics['export'])}</code> — check it with "
        f"<code>cellkeras serve-check {html.escape(str(config.export_dir))}</code></p>"
        if "export" in metrics
        else "<p>not exported (pass <code>--export_dir</code>)</p>"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>cellkeras run {html.escape(out.name)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f0f0f0; }} img {{ max-width: 100%; }} figure {{ margin: 1em 0; }}
code, pre {{ background: #f6f6f6; }}
</style></head><body>
<h1>cellkeras run <code>{html.escape(out.name)}</code></h1>
<p><b>validation accuracy {metrics["val_accuracy"]:.4f}</b> ·
model {html.escape(metrics["model"])} ({metrics["parameters"]:,} parameters) ·
{metrics["train_images"]} training / {metrics["val_images"]} validation images ·
classes {html.escape(", ".join(metrics["classes"]))} · {metrics["total_seconds"]:.0f} s ·
policy {html.escape(metrics["dtype_policy"])} · {metrics["replicas"]} replica(s)</p>
<h2>Stages</h2>{stages}
<h2>Branches and merge (validation, final size)</h2>{models}{pairs}
{figures}
<h2>Export</h2>{export}
<h2>Skipped inputs</h2>{skipped_html}
<h2>Configuration</h2><pre>{html.escape(json.dumps(config.to_dict(), indent=2))}</pre>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _plot_curves(out: Path, phases: list[Phase]) -> None:
    import csv

    from cellkeras.evaluate.plots import plot_training_curves, save_figure

    with (out / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    boundaries = list(itertools.accumulate(phase.stage.epochs for phase in phases))[:-1]
    labels = [str(phase).rsplit(":", 1)[0] for phase in phases]
    figure = plot_training_curves(rows, boundaries, labels, title=f"{out.name}: training curves")
    save_figure(figure, out / "training_curves.png")


def config_from_flags() -> RunConfig:
    """Reads the absl flags (only here) into a `RunConfig`."""
    from absl import flags

    f = flags.FLAGS
    overrides: dict[str, Any] = {}
    for flag_name, key in _FLAG_FIELDS.items():
        if f[flag_name].present:
            overrides[key] = f[flag_name].value
    if f.skip_bad_images:
        overrides["data.skip_bad_images"] = True
    config = build_config(f.preset, overrides)
    if f.output_dir:
        config.output_dir = f.output_dir
    if f.export_dir:
        config.export_dir = f.export_dir
    if f.worker_dir:
        config.worker_dir = f.worker_dir
    return config


_FLAG_FIELDS = {
    "data_dir": "data.data_dir",
    "labels_csv": "data.labels_csv",
    "image_root": "data.image_root",
    "tfrecords": "data.tfrecords",
    "source": "data.source",
    "channels": "data.channels",
    "balance": "data.balance",
    "synthetic_images": "data.synthetic_images",
    "val_fraction": "data.val_fraction",
    "model": "train.model",
    "augment": "train.augment",
    "schedule": "train.schedule",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "mixed_precision": "train.mixed_precision",
    "jit_compile": "train.jit_compile",
    "distribution": "train.distribution",
    "training_loop": "train.training_loop",
    "seed": "train.seed",
    "later_stages": "train.later_stages",
    "training_mode": "train.training_mode",
    "head_epochs": "train.head_epochs",
    "branch_loss_weight": "train.branch_loss_weight",
}


def define_flags() -> None:
    from absl import flags

    from trainer.config import PRESETS
    from trainer.xla import JIT_COMPILE_MODES

    flags.DEFINE_string("preset", "default", f"Named configuration: {', '.join(PRESETS)}.")
    flags.DEFINE_string(
        "data_dir", None, "Class-folder tree root/<class>/<image> (or root/<split>/<class>/...)."
    )
    flags.DEFINE_string("labels_csv", None, "CSV of filename,label rows.")
    flags.DEFINE_string("image_root", None, "Folder the CSV's filenames are relative to.")
    flags.DEFINE_string("tfrecords", None, "TFRecord files (glob, folder or comma-separated).")
    flags.DEFINE_string("source", None, "Data source; default: chosen from the flags given.")
    flags.DEFINE_integer("channels", None, "Image channels (1 grey, 3 RGB); default: as stored.")
    flags.DEFINE_enum("balance", None, ["oversample"], "Class balancing in tf.data.")
    flags.DEFINE_integer("synthetic_images", None, "Number of synthetic images.")
    flags.DEFINE_float("val_fraction", None, "Validation share when the source has no split.")
    flags.DEFINE_string("model", None, "Registered model name (cellkeras.models.list_models()).")
    flags.DEFINE_string("augment", None, "Augmentation preset.")
    flags.DEFINE_string("schedule", None, "Progressive schedule SIZE:EPOCHS[,SIZE:EPOCHS...].")
    flags.DEFINE_integer("batch_size", None, "Per-replica batch size.")
    flags.DEFINE_float("learning_rate", None, "Peak learning rate (cosine decay over the run).")
    flags.DEFINE_enum("mixed_precision", None, list(MIXED_PRECISION_MODES), "Dtype policy.")
    flags.DEFINE_enum(
        "jit_compile",
        None,
        list(JIT_COMPILE_MODES),
        "XLA for the training step; auto: Keras' choice, off on CPU and under tf.distribute.",
    )
    flags.DEFINE_enum(
        "distribution",
        None,
        list(DISTRIBUTIONS),
        "tf.distribute strategy; multi_worker reads the cluster from TF_CONFIG.",
    )
    flags.DEFINE_enum(
        "training_loop",
        None,
        list(TRAINING_LOOPS),
        "auto: Keras fit, the custom loop under multi_worker; custom: that loop everywhere.",
    )
    flags.DEFINE_integer("seed", None, "Random seed (data, split, weights).")
    flags.DEFINE_enum(
        "later_stages",
        None,
        list(LATER_STAGE_MODES),
        "After the first stage train everything, or only the merge head (the seed's variant).",
    )
    flags.DEFINE_enum(
        "training_mode",
        None,
        list(TRAINING_MODES),
        "joint: branches and merge head together; stagewise: each branch alone through the "
        "schedule, then the merge head on the frozen branches (the seed's recipe).",
    )
    flags.DEFINE_integer(
        "head_epochs", None, "Stage-wise: epochs of the merge head at the final size."
    )
    flags.DEFINE_float("branch_loss_weight", None, "Weight of each branch's auxiliary loss.")
    flags.DEFINE_string("output_dir", None, "Run folder (default runs/<preset>).")
    flags.DEFINE_string("export_dir", None, "Versioned SavedModel export folder.")
    flags.DEFINE_string(
        "worker_dir",
        None,
        "multi_worker: a non-chief worker's folder for its copy of the run, kept at the end "
        "(default <output_dir>/.workers/<task>-<index>, removed).",
    )
    flags.DEFINE_boolean(
        "skip_bad_images", False, "Skip unreadable images (listed in skipped.json)."
    )


def main(argv: list[str]) -> None:
    del argv
    run(config_from_flags())


@dataclasses.dataclass
class FnArgs:
    """The fields of TFX Trainer's `fn_args` that `run_fn` reads (TFX does not install here)."""

    train_files: list[str]
    eval_files: list[str]
    serving_model_dir: str
    model_run_dir: str
    train_steps: int | None = None
    eval_steps: int | None = None
    schema_path: str | None = None
    hyperparameters: dict[str, Any] | None = None
    custom_config: dict[str, Any] | None = None
    data_accessor: Any = None


def run_fn(fn_args: Any) -> dict[str, Any]:
    """TFX Trainer's module-file entry point: TFRecords in, a model in `serving_model_dir` out.

    Options come from `custom_config` (any `section.field` of `RunConfig`, plus `preset`) and
    `hyperparameters` (same keys; they win).
    """
    options = {**(fn_args.custom_config or {}), **(fn_args.hyperparameters or {})}
    preset = options.pop("preset", "default")
    options.setdefault("data.source", "tfrecords")
    options["data.tfrecords"] = ",".join(fn_args.train_files)
    options["data.eval_tfrecords"] = ",".join(fn_args.eval_files)
    config = build_config(preset, options)
    config.output_dir = fn_args.model_run_dir
    config.export_dir = fn_args.serving_model_dir
    return run(config, verbose=2)


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
