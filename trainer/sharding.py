"""Input sharding across the workers of a multi-worker run, and the small collectives the workers
use to agree on classes, step counts and validation batches before they train.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.cluster import local_replicas


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Auto-shards `dataset` across workers by element (AutoShardPolicy.DATA).

    Not TensorFlow's FILE policy: `cellkeras.data.make_dataset` slices an in-memory `ImageSet`
    (folders and CSVs are lists of paths, TFRecords are parsed into one up front by
    `load_tfrecords`), so the graph has no file-reading source for FILE sharding to split, and
    TensorFlow raises an error under FILE when it finds none. TFRecords are sharded by file at
    the source instead (`trainer.inputs.load_data` reads each worker's share of the files; see
    `per_worker_input`); this is for every other source. DATA needs every worker to produce
    the same elements in the same order: `make_dataset` shuffles with the run's seed and keeps
    the order deterministic. Each worker then runs the input pipeline over every batch and
    keeps its replicas' share.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def per_worker_input(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Marks `dataset` as this worker's own input (AutoShardPolicy.OFF): under FILE sharding
    each worker reads only its share of the files, so sharding it again would drop data.

    `fit_stage_distributed` hands such a dataset to `distribute_datasets_from_function`, which
    neither shards nor rebatches: each local replica takes one batch of the dataset per step,
    so batch it with the *per-replica* batch size. (`experimental_distribute_dataset` would
    still split every batch into `num_replicas_in_sync` pieces, of which a worker whose input
    is not sharded would consume all, over several steps: right with global batches, but a
    worker's last global batch would go unfilled far more often.)
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def is_per_worker_input(dataset: tf.data.Dataset) -> bool:
    policy = dataset.options().experimental_distribute.auto_shard_policy
    return policy == tf.data.experimental.AutoShardPolicy.OFF


@dataclasses.dataclass(frozen=True)
class InputSharding:
    """How this worker's training input was split from the others'.

    Attributes:
        policy: "file" (this worker read only `files`), "data" (every worker reads everything
            and keeps its share of each global batch) or "none" (one worker).
        files: the TFRecord files this worker read, under "file".
        total_files: the TFRecord files of all workers together, under "file".
        images: the images this worker loaded.
    """

    policy: str = "none"
    files: tuple[str, ...] = ()
    total_files: int = 0
    images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "files": list(self.files)}


def even_batches_across_workers(
    strategy: tf.distribute.Strategy, count: int, batch_size: int
) -> list[int]:
    """Batch sizes that cut this worker's `count` validation images into as many non-empty
    batches as every other worker's (per-worker input, see `per_worker_input`).

    Workers' validation parts differ in size, and a worker whose batches run out gets empty
    ones while the others go on; TensorFlow's CPU convolution returns a wrongly shaped result
    for an empty batch, and the step fails. So every worker runs the same number of steps, the
    largest part's at `batch_size` per replica (fewer, with larger batches, where a small part
    could not fill that many), splitting its own images evenly over them. Pass the result to
    `Dataset.rebatch`.

    Raises:
        ValueError: some worker has fewer validation images than local replicas.
    """
    replicas = local_replicas(strategy)
    counts = agree_across_workers(strategy, count)
    if min(counts) < replicas:
        raise ValueError(
            f"a worker's validation part holds {min(counts)} image(s) for {replicas} replicas: "
            "raise --val_fraction, or give the workers TFRecord files of more equal size"
        )
    steps = max(-(-n // (batch_size * replicas)) for n in counts)
    parts = min(steps, min(counts) // replicas) * replicas
    return [count // parts + (1 if j < count % parts else 0) for j in range(parts)]


def gather_bytes_across_workers(strategy: tf.distribute.Strategy, payload: bytes) -> list[bytes]:
    """Every replica's copy of `payload` (all-gathered across workers, in replica order; a
    worker with several replicas appears once per replica). Collectives carry numbers only,
    so the bytes travel as a padded int64 row."""
    lengths = agree_across_workers(strategy, len(payload))
    row = np.zeros((1, max(lengths)), np.int64)
    row[0, : len(payload)] = np.frombuffer(payload, np.uint8)

    @tf.function
    def gather():
        per_replica = strategy.run(lambda: tf.constant(row))
        return strategy.gather(per_replica, axis=0)

    rows = gather().numpy()
    return [bytes(r[:n].astype(np.uint8)) for r, n in zip(rows, lengths, strict=True)]


def total_across_workers(strategy: tf.distribute.Strategy, count: int) -> int:
    """The sum of every worker's `count` (each worker counted once, whatever its replicas)."""
    return sum(agree_across_workers(strategy, count)[:: local_replicas(strategy)])


def gather_predictions_across_workers(
    strategy: tf.distribute.Strategy, labels: np.ndarray, probs: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every worker's validation `(labels, probs)` rows, worker by worker, on every worker:
    under file sharding each worker validates its own part, and the final evaluation scores
    them all (an `evaluate_branches` `combine`)."""
    buffer = io.BytesIO()
    np.savez(buffer, labels=labels, **{f"probs.{name}": p for name, p in probs.items()})
    payloads = gather_bytes_across_workers(strategy, buffer.getvalue())
    parts = [np.load(io.BytesIO(p)) for p in payloads[:: local_replicas(strategy)]]
    return (
        np.concatenate([part["labels"] for part in parts]),
        {name: np.concatenate([part[f"probs.{name}"] for part in parts]) for name in probs},
    )


def agree_on_classes(
    strategy: tf.distribute.Strategy, named: dict[int, str] | None, num_labels: int
) -> list[str]:
    """The class names of the whole dataset, from every worker's share of it.

    Each worker passes what its share holds (as `load_tfrecords` hands `resolve_classes`):
    `named` maps each label it read to its `image/class/text` (None when some example has no
    text), `num_labels` is its largest label plus one. Every worker gets the same list: as
    many classes as the largest label of any share, named by the texts when every share had
    them (a class one share lacks takes its name from another), else the label numbers, as
    `load_tfrecords` names the classes of all the files read at once.

    Raises:
        ValueError: two shares give one label different names.
    """
    from cellkeras.data.tfrecord import class_names

    mine = {"named": None if named is None else {str(k): v for k, v in named.items()}}
    mine["num_labels"] = num_labels
    shares = [
        json.loads(b) for b in gather_bytes_across_workers(strategy, json.dumps(mine).encode())
    ]
    total = max(share["num_labels"] for share in shares)
    if any(share["named"] is None for share in shares):
        return class_names(None, total)
    merged: dict[int, str] = {}
    for share in shares:
        for label, text in share["named"].items():
            if merged.setdefault(int(label), text) != text:
                raise ValueError(
                    f"workers' TFRecord shares name label {label} both {merged[int(label)]!r} "
                    f"and {text!r}"
                )
    return class_names(merged, total)


def agree_across_workers(strategy: tf.distribute.Strategy, value: int) -> list[int]:
    """Every replica's copy of `value` (all-gathered across workers), e.g. to check that all
    workers resume from the same epoch before any of them trains."""

    @tf.function
    def gather():
        per_replica = strategy.run(lambda: tf.constant([value], tf.int64))
        return strategy.gather(per_replica, axis=0)

    return [int(v) for v in gather().numpy()]
