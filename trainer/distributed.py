"""Multi-worker training: the cluster from `TF_CONFIG`, each worker's role, and the custom loop
that fits one stage under `tf.distribute.MultiWorkerMirroredStrategy`.

Keras 3's `Model.fit` fails under MultiWorkerMirroredStrategy ("Attempt to convert a value
(PerReplica...)", keras-team/keras#20585), so `fit_stage_distributed` drives the same compiled
model itself: `strategy.run(fit_model.train_step)` over `strategy.experimental_distribute_dataset`,
with the callbacks called through a `keras.callbacks.CallbackList` as `fit` calls them. The
loss, metrics, loss scaling (mixed_float16 wraps the optimizer in a `LossScaleOptimizer` at
compile time) and gradient all-reduce are the compiled model's own, so both paths compute the
same numbers.

`trainer.task` reads `TF_CONFIG` from the environment and passes its text here; nothing in this
module reads flags or the environment.
"""

from __future__ import annotations

import dataclasses
import io
import json
import socket
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

TASK_TYPES = ("chief", "worker")


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in the cluster.

    Attributes:
        task_type: "chief" or "worker" (a one-process run is the chief).
        task_index: index within its task type.
        num_workers: processes that train (chief included).
        has_chief: whether the cluster names a "chief" task.
    """

    task_type: str = "chief"
    task_index: int = 0
    num_workers: int = 1
    has_chief: bool = True

    @property
    def is_chief(self) -> bool:
        """The chief writes the run folder: task type "chief", or worker 0 when the cluster
        has no chief (TensorFlow's convention)."""
        if self.task_type == "chief":
            return True
        return self.task_type == "worker" and self.task_index == 0 and not self.has_chief

    @property
    def name(self) -> str:
        return f"{self.task_type}-{self.task_index}"

    @property
    def worker_index(self) -> int:
        """This process's place among all `num_workers` (0 to num_workers - 1): the chief
        first, then the workers in task order."""
        if self.task_type == "chief":
            return 0
        return self.task_index + (1 if self.has_chief else 0)


def parse_tf_config(text: str | None) -> dict[str, Any]:
    """Checks the `TF_CONFIG` JSON that configures a multi-worker run and returns it parsed.

    Expected: `{"cluster": {"chief": ["host:port"], "worker": ["host:port", ...]},
    "task": {"type": "worker", "index": 0}}` (the "chief" list is optional).

    Raises:
        ValueError: the variable is missing or empty, is not JSON, or does not describe a
            cluster this task belongs to; the message names TF_CONFIG and what is wrong.
    """
    hint = "see docs/DISTRIBUTED.md for examples"
    if not text or not text.strip():
        raise ValueError(
            "--distribution=multi_worker needs the TF_CONFIG environment variable: JSON with "
            f'"cluster" (task type -> ["host:port", ...]) and "task" ({{"type", "index"}}); {hint}'
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}): {text[:200]!r}; {hint}") from err
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {text[:200]!r}; {hint}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f'TF_CONFIG has no "cluster" object: {text[:200]!r}; {hint}')
    unsupported = sorted(set(cluster) - set(TASK_TYPES))
    if unsupported:
        raise ValueError(
            f"TF_CONFIG cluster has task types {unsupported}; multi_worker training supports "
            f"only {list(TASK_TYPES)} (every task trains; no parameter servers or evaluator)"
        )
    for task_type, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(f"TF_CONFIG cluster[{task_type!r}] must be a non-empty list")
        bad = [a for a in addresses if not isinstance(a, str) or ":" not in a]
        if bad:
            raise ValueError(f"TF_CONFIG cluster[{task_type!r}] has addresses {bad} not host:port")
    if len(cluster.get("chief", [])) > 1:
        raise ValueError("TF_CONFIG cluster may hold at most one chief")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(
            f'TF_CONFIG has no "task" with "type" and "index" (this process\'s place in the '
            f"cluster): {text[:200]!r}; {hint}"
        )
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise ValueError(
            f"TF_CONFIG task type {task_type!r} is not in the cluster (it has {sorted(cluster)})"
        )
    if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ValueError(
            f"TF_CONFIG task index {index!r} is out of range: the cluster has "
            f"{len(cluster[task_type])} {task_type!r} task(s)"
        )
    return config


def role_from_tf_config(config: dict[str, Any]) -> WorkerRole:
    """The `WorkerRole` of a `parse_tf_config` result."""
    return _role(config["cluster"], config["task"]["type"], config["task"]["index"])


def _role(cluster: dict[str, list[str]], task_type: str, task_index: int) -> WorkerRole:
    return WorkerRole(
        task_type=task_type,
        task_index=int(task_index),
        num_workers=sum(len(cluster.get(t, [])) for t in TASK_TYPES),
        has_chief=bool(cluster.get("chief")),
    )


def make_multi_worker_strategy(config: dict[str, Any]) -> tf.distribute.Strategy:
    """`MultiWorkerMirroredStrategy` for a `parse_tf_config` result.

    Create it before TensorFlow runs anything else in the process: it sets up the collective
    ops, which TensorFlow allows only at program start.
    """
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(config["cluster"]),
        task_type=config["task"]["type"],
        task_id=int(config["task"]["index"]),
        rpc_layer="grpc",
    )
    # AUTO: NCCL between GPUs, ring all-reduce over gRPC on CPUs.
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    return tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver, communication_options=options
    )


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def role_of(strategy: tf.distribute.Strategy) -> WorkerRole:
    """This process's role under `strategy` (every non-multi-worker strategy is the chief)."""
    if not is_multi_worker(strategy):
        return WorkerRole()
    resolver = strategy.cluster_resolver
    return _role(resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id)


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Auto-shards `dataset` across workers by element (AutoShardPolicy.DATA).

    Not TensorFlow's FILE policy: `cellkeras.data.make_dataset` slices an in-memory `ImageSet`
    (folders and CSVs are lists of paths, TFRecords are parsed into one up front by
    `load_tfrecords`), so the graph has no file-reading source for FILE sharding to split, and
    TensorFlow raises an error under FILE when it finds none. TFRecords are sharded by file at
    the source instead (`trainer.task.load_data` reads each worker's share of the files; see
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


def local_replicas(strategy: tf.distribute.Strategy) -> int:
    """Replicas on this worker (every worker has the same number)."""
    return strategy.num_replicas_in_sync // role_of(strategy).num_workers


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


def fit_stage_distributed(
    fit_model: keras.Model,
    train_data: tf.data.Dataset,
    validation_data: tf.data.Dataset | None = None,
    initial_epoch: int = 0,
    epochs: int = 1,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> keras.callbacks.History:
    """Fits `fit_model` from `initial_epoch` to `epochs` the way `fit` does, under its strategy.

    Takes what `fit_model.fit(train_data, validation_data=..., initial_epoch=..., epochs=...,
    callbacks=...)` takes and returns its `History`. Each step is `fit_model.train_step` (the
    compiled loss, metrics and optimizer, with loss scaling under mixed_float16) inside
    `strategy.run`; validation runs `fit_model.test_step` the same way. The epoch logs are
    `fit_model.get_metrics_result()` read outside the replicas, where Keras' metric variables
    (sum-aggregated on read) add up over every replica of every worker: the same keys and values
    `fit` reports (`loss`, the compiled metrics, each output's loss, and `val_` versions).
    Per-batch logs are left empty, since reading the metrics at every step would cost one
    cross-worker all-reduce per metric per step; the progress bar shows steps only. With
    several replicas the batch-norm moving statistics (which Keras keeps per replica) are
    averaged across replicas after every epoch's training steps, where `fit` leaves each
    replica its own.

    Args:
        fit_model: a compiled model, created in the scope of the strategy to train under.
        train_data: batches of the *global* batch size; make them with `drop_remainder=True`
            under several replicas, so every step gives every replica a full share. Under
            multi_worker, a dataset marked by `per_worker_input` is this worker's own input
            instead, in *per-replica* batches (each local replica takes one per step); every
            worker's must then give the same number of steps.
        validation_data: batches for validation at every epoch's end, or None (per-worker
            input too, if marked; the shares may differ in size).
        initial_epoch: epoch to start from (a resumed run's epochs done).
        epochs: epoch to stop before, as in `fit`.
        callbacks: Keras callbacks, called as `fit` calls them.
        verbose: 0 silent, 1 or "auto" a progress bar, 2 one line per epoch.

    Returns:
        The `History` (also `fit_model.history`).
    """
    strategy = fit_model.distribute_strategy
    per_worker = is_multi_worker(strategy) and is_per_worker_input(train_data)
    steps = int(train_data.cardinality())
    if per_worker:
        steps //= local_replicas(strategy)  # each local replica takes one batch per step
    if steps < 1:
        raise ValueError(
            "the training data holds no full global batch: lower the batch size or add images"
        )
    train_dist = _distribute(strategy, train_data)
    val_dist = None if validation_data is None else _distribute(strategy, validation_data)
    with strategy.scope():
        # Metrics, loss trackers and optimizer slots must exist before the first traced step:
        # variables cannot be created inside `strategy.run` in a tf.function (`fit` does this
        # same symbolic build before its first step).
        fit_model._symbolic_build(data_batch=train_data.element_spec)

    jit = bool(fit_model.jit_compile) and strategy.num_replicas_in_sync == 1

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def train_step(batch):
        strategy.run(fit_model.train_step, args=(batch,))

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def test_step(batch):
        strategy.run(fit_model.test_step, args=(batch,))

    # Keras 3 updates batch-norm moving statistics from each replica's own batch and never
    # synchronizes them (aggregation "none"), so replicas, and workers, drift apart; averaged
    # at every epoch's end, every worker validates and saves the same model. Only those: the
    # other non-trainable variables (frozen layers' weights) are identical everywhere.
    averaged = [
        v
        for v in fit_model.non_trainable_variables
        if v.path.endswith(("/moving_mean", "/moving_variance"))
    ]

    @tf.function
    def average_non_trainable():
        def average():
            context = tf.distribute.get_replica_context()
            for variable in averaged:
                variable.assign(context.all_reduce("MEAN", tf.identity(variable.value)))

        strategy.run(average)

    verbose = 1 if verbose == "auto" else verbose
    callback_list = keras.callbacks.CallbackList(
        list(callbacks),
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps,
        model=fit_model,
    )
    fit_model.stop_training = False
    callback_list.on_train_begin()
    epoch_logs: dict[str, float] = {}
    for epoch in range(initial_epoch, epochs):
        fit_model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step, batch in enumerate(train_dist):
            callback_list.on_train_batch_begin(step)
            train_step(batch)
            callback_list.on_train_batch_end(step, {})
            if fit_model.stop_training:
                break
        if averaged and strategy.num_replicas_in_sync > 1:
            average_non_trainable()
        epoch_logs = _metric_logs(fit_model)
        if val_dist is not None:
            val_logs = _evaluate(fit_model, val_dist, test_step, callback_list)
            epoch_logs.update({f"val_{name}": value for name, value in val_logs.items()})
        callback_list.on_epoch_end(epoch, epoch_logs)
        if fit_model.stop_training:
            break
    if epochs > initial_epoch:
        fit_model.optimizer.finalize_variable_values(fit_model.trainable_weights)
    callback_list.on_train_end(logs=epoch_logs)
    return fit_model.history


def _distribute(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """A dataset of global batches is split among all replicas; under multi_worker, one marked
    by `per_worker_input` is this worker's own, in per-replica batches, passed through as is."""
    if is_multi_worker(strategy) and is_per_worker_input(dataset):
        return strategy.distribute_datasets_from_function(lambda _: dataset)
    return strategy.experimental_distribute_dataset(dataset)


def _metric_logs(fit_model: keras.Model) -> dict[str, float]:
    # In cross-replica context each metric variable reads as its sum over all replicas.
    return {name: float(value) for name, value in fit_model.get_metrics_result().items()}


def _evaluate(fit_model, val_dist, test_step, callback_list) -> dict[str, float]:
    fit_model.reset_metrics()
    callback_list.on_test_begin()
    for step, batch in enumerate(val_dist):
        callback_list.on_test_batch_begin(step)
        test_step(batch)
        callback_list.on_test_batch_end(step, {})
    logs = _metric_logs(fit_model)
    callback_list.on_test_end(logs)
    return logs


def free_localhost_ports(count: int) -> list[int]:
    """`count` TCP ports free on localhost now, for a cluster of local worker processes
    (tests, benchmarks): bound all at once so they differ, then released for the workers."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
