"""Training modes the trainer calls: joint training and the seed's stage-wise training.

Datasets yield `(images, one_hot_labels)` batches (float32 (B, H, W, C) in [0, 1] and float32
(B, K)); the loss is categorical cross-entropy. Keras 3 reads `trainable` when a model is
compiled, so every change of the trainable set here is followed by a fresh `compile`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras

from cellkeras.models.parallel import analysis_model, branch_models, branch_names
from cellkeras.training.schedule import HEAD, PHASE_MARKERS
from cellkeras.training.stacking import stacked_merge


def classification_loss(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Categorical cross-entropy on one-hot labels, each softened by `label_smoothing` towards
    the uniform distribution (0: the plain loss)."""
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def compile_classifier(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer | str = "adam",
    label_smoothing: float = 0.0,
    **compile_kwargs: Any,
) -> keras.Model:
    """Compile `model` for one-hot labels: categorical cross-entropy and accuracy.
    `compile_kwargs` go to `compile` (e.g. `jit_compile`)."""
    model.compile(
        optimizer=optimizer,
        loss=classification_loss(label_smoothing),
        metrics=["accuracy"],
        **compile_kwargs,
    )
    return model


def _layer_groups(model: keras.Model) -> tuple[dict[str, list[str]], list[str]]:
    if hasattr(model, "branch_layer_names"):
        return dict(model.branch_layer_names), list(model.head_layer_names)
    raise TypeError(f"{type(model).__name__} has no branch bookkeeping; use a ParallelCNN.")


def set_trainable(
    model: keras.Model, branches: bool | Iterable[str] = True, head: bool = True
) -> list[str]:
    """Freeze or unfreeze branches and the merge head of a `ParallelCNN`.

    Compile the model (again) afterwards: Keras 3 fixes the trainable set at compile time.
    Frozen batch-norm layers also switch to inference mode, as Keras 3 does for any frozen
    BatchNormalization.

    Args:
        model: a `ParallelCNN`.
        branches: True (all trainable), False (all frozen) or the names of the branches to
            train, the others frozen.
        head: whether the merge head is trainable.

    Returns:
        The names of the layers that are now trainable.

    Raises:
        ValueError: for a branch name the model does not have.
    """
    groups, head_layers = _layer_groups(model)
    if isinstance(branches, bool):
        train_branches = set(groups) if branches else set()
    else:
        train_branches = set(branches)
        unknown = train_branches - set(groups)
        if unknown:
            raise ValueError(f"Unknown branches {sorted(unknown)}; model has {list(groups)}.")
    model.trainable = True
    wanted = {name for b in train_branches for name in groups[b]}
    if head:
        wanted.update(head_layers)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            layer.trainable = layer.name in wanted
    return [layer.name for layer in model.layers if layer.name in wanted]


class AliasMergedMetrics(keras.callbacks.Callback):
    """Renames `[val_]merged_<metric>` to `[val_]<metric>` in the logs, so callbacks and the
    history see the merged output under the same names as a plain single-output fit.

    `loss` so becomes the merged output's loss, the one a user compares across runs and
    restore-best reads: the optimised total adds the auxiliary branch losses (and for a
    "stacked" merge leaves the merged one out), so it is not the served model's loss. The total
    stays in the logs as `[val_]total_loss`."""

    def _alias(self, logs: dict | None) -> None:
        if not logs:
            return
        for prefix in ("", "val_"):
            # Once only: a logs dict aliased already (evaluate's, then fit's) holds the merged
            # loss under `loss`.
            total = f"{prefix}total_loss"
            if f"{prefix}merged_loss" in logs and f"{prefix}loss" in logs and total not in logs:
                logs[total] = logs[f"{prefix}loss"]
        for key in list(logs):
            for prefix in ("", "val_"):
                if key.startswith(f"{prefix}merged_"):
                    logs[prefix + key[len(prefix) + len("merged_") :]] = logs[key]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._alias(logs)

    def on_test_end(self, logs: dict | None = None) -> None:
        self._alias(logs)


def _per_output_labels(data: Any, keys: Sequence[str]) -> Any:
    if data is None:
        return None
    if isinstance(data, tuple):
        images, labels = data
        return images, {k: labels for k in keys}
    return data.map(lambda images, labels: (images, {k: labels for k in keys}))


def joint_trainer(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer | str = "adam",
    branch_loss_weight: float = 0.3,
    label_smoothing: float = 0.0,
    **compile_kwargs: Any,
) -> tuple[keras.Model, Callable[[Any], Any]]:
    """The compiled model to `fit` for joint training, and the function that turns
    `(images, one_hot)` data into the labels it expects.

    With two or more branches and `branch_loss_weight > 0` the trainer is `analysis_model(model)`
    (sharing `model`'s weights) with an auxiliary cross-entropy on every branch's softmax; fit it
    with `AliasMergedMetrics()` among the callbacks so the merged output's metrics keep their
    plain names (a "stacked" merge gets no loss weight and every branch weight 1: each branch
    trains by its own loss alone). Otherwise it is `model` itself, compiled, and the labels
    pass unchanged.
    `compile_kwargs` go to `compile` (e.g. `jit_compile`).
    """
    names = branch_names(model)
    if branch_loss_weight <= 0 or len(names) < 2:
        compiled = compile_classifier(model, optimizer, label_smoothing, **compile_kwargs)
        return compiled, lambda data: data
    trainer = analysis_model(model)
    keys = ["merged", *names]
    merged_weight = 1.0
    if stacked_merge(model) is not None:
        # Each branch by its own loss alone: the stacked merge is fitted afterwards, on
        # held-out images (`fit_stacking`), and must not pull the branches towards each other.
        merged_weight, branch_loss_weight = 0.0, 1.0
    trainer.compile(
        optimizer=optimizer,
        loss={k: classification_loss(label_smoothing) for k in keys},
        loss_weights={"merged": merged_weight, **{n: branch_loss_weight for n in names}},
        metrics={k: ["accuracy"] for k in keys},
        **compile_kwargs,
    )
    return trainer, lambda data: _per_output_labels(data, keys)


def stagewise_parts(model: keras.Model, head_epochs: int = 1) -> list[str]:
    """The parts stage-wise training fits in turn: every branch name, then `HEAD` (left out
    when there is no head to train: one branch, a merge without trained weights such as
    "average" or "stacked", or `head_epochs` 0)."""
    names = branch_names(model)
    clashes = sorted(set(names) & set(PHASE_MARKERS))
    if clashes:
        raise ValueError(
            f"Stage-wise training cannot fit branches named {clashes}: the names "
            f"{list(PHASE_MARKERS)} mark its head and joint phases. Rename the branch "
            "(a branch spec's `name`)."
        )
    _, head_layers = _layer_groups(model)
    head_weights = any(model.get_layer(name).trainable_weights for name in head_layers)
    return names + ([HEAD] if len(names) > 1 and head_weights and head_epochs > 0 else [])


def stagewise_trainer(
    model: keras.Model,
    part: str,
    optimizer: keras.optimizers.Optimizer | str = "adam",
    label_smoothing: float = 0.0,
    **compile_kwargs: Any,
) -> keras.Model:
    """The compiled model to fit for one part of stage-wise training (see `stagewise_parts`):
    a branch alone, through a model sharing `model`'s weights, with the other branches and
    the head frozen; or `HEAD`, the merge head of `model` on frozen branches. Labels are the
    plain `(images, one_hot)` data. `compile_kwargs` go to `compile`."""
    if part == HEAD:
        set_trainable(model, branches=False, head=True)
        return compile_classifier(model, optimizer, label_smoothing, **compile_kwargs)
    set_trainable(model, branches=[part], head=False)
    branch = branch_models(model)[part]
    return compile_classifier(branch, optimizer, label_smoothing, **compile_kwargs)
