"""The custom training loop that fits one stage under `tf.distribute.MultiWorkerMirroredStrategy`.


Keras 3's `Model.fit` fails under MultiWorkerMirroredStrategy ("Attempt to convert a value
(PerReplica...)", keras-team/keras#20585), so `fit_stage_distributed` drives the same compiled
model itself: `strategy.run(fit_model.train_step)` over `strategy.experimental_distribute_dataset`,
with the callbacks called through a `keras.callbacks.CallbackList` as `fit` calls them. The
loss, metrics, loss scaling (mixed_float16 wraps the optimizer in a `LossScaleOptimizer` at
compile time) and gradient all-reduce are the compiled model's own, so both paths compute the
same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from trainer.cluster import is_multi_worker, local_replicas
from trainer.sharding import is_per_worker_input


def fit_stage_distributed(
    fit_model: keras.Model,
    train_data: tf.data.Dataset,
    validation_data: tf.data.Dataset | None = None,
    initial_epoch: int = 0,
    epochs: int = 1,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
    steps_per_epoch: int | None = None,
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
        steps_per_epoch: `train_data` holds every epoch back to back and each epoch takes
            this many steps from one iterator, as in `keras_fit`; None: it holds one epoch.

    Returns:
        The `History` (also `fit_model.history`).
    """
    strategy = fit_model.distribute_strategy
    per_worker = is_multi_worker(strategy) and is_per_worker_input(train_data)
    steps = steps_per_epoch or int(train_data.cardinality())
    if per_worker and not steps_per_epoch:
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

    train_step, test_step, average_non_trainable = _compiled_steps(fit_model)

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
    epoch_logs = _run_epochs(
        fit_model, train_dist, val_dist, (initial_epoch, epochs), steps, steps_per_epoch,
        (train_step, test_step, average_non_trainable), callback_list,
    )  # fmt: skip
    callback_list.on_train_end(logs=epoch_logs)
    return fit_model.history


def _compiled_steps(fit_model: keras.Model):
    """The compiled train and test steps under the model's strategy, and the batch-norm
    statistics average run after every epoch's training steps."""
    strategy = fit_model.distribute_strategy
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

    return train_step, test_step, (average_non_trainable if averaged else None)


def _run_epochs(fit_model, train_dist, val_dist, span, steps, steps_per_epoch, compiled,
                callback_list) -> dict[str, float]:  # fmt: skip
    """The epochs `span` = (first, stop) of `fit_stage_distributed`; the last epoch's logs."""
    initial_epoch, epochs = span
    train_step, test_step, average_non_trainable = compiled
    strategy = fit_model.distribute_strategy
    averaged = average_non_trainable is not None
    epoch_logs: dict[str, float] = {}
    iterator = iter(train_dist) if steps_per_epoch else None
    for epoch in range(initial_epoch, epochs):
        fit_model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        # One iterator over all epochs, `steps` batches per epoch: zip asks `range` first and,
        # not strict, stops there without taking a batch of the next epoch.
        batches = (
            enumerate(train_dist) if iterator is None else zip(range(steps), iterator, strict=False)
        )
        for step, batch in batches:
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
    return epoch_logs


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
