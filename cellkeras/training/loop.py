"""The phase loop: the one way cellkeras trains a model, for the trainer and for scripts alike.

A run is a list of `Phase`s (`plan_phases`): joint training fits the whole model (or its head)
stage after stage; stage-wise training fits each branch alone through the schedule, then the
merge head. `PhaseRunner` compiles the right model for each phase, carries one optimizer across
the phases of joint training (a fresh one for each stage-wise part) and calls a `fit` function
per phase: Keras' own by default, the trainer's custom multi-worker loop where `fit` cannot run.

```
runner = PhaseRunner(model, plan_phases(stages), adam_with_cosine_decay(3e-3, steps))
runner.run(lambda phase, training: dataset_at(phase.stage.size, training))
runner.finish()          # every layer trainable again, compiled for the whole model
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import keras

from cellkeras.training.schedule import JOINT, JOINT_HEAD, Phase, Stage, plan_phases
from cellkeras.training.trainers import (
    HEAD,
    AliasMergedMetrics,
    compile_classifier,
    joint_trainer,
    set_trainable,
    stagewise_parts,
    stagewise_trainer,
)

# Returns a new optimizer whose schedule spans `epochs` epochs.
OptimizerFactory = Callable[[int], keras.optimizers.Optimizer]
# (phase, training, the run's epochs the phase fits now) -> its training or validation data.
DataFor = Callable[[Phase, bool, range], Any]


def adam_with_cosine_decay(
    learning_rate: float,
    steps_per_epoch: int,
    warmup_fraction: float = 0.0,
    weight_decay: float = 0.0,
) -> OptimizerFactory:
    """Adam whose learning rate decays by a cosine to 5 % over the epochs it is made for,
    after rising linearly from 0 over their first `warmup_fraction` of steps (Adam's early
    moment estimates are noisy, and batch-norm statistics are still settling: a full step
    size there can throw a small model trained from scratch off for many epochs).

    `weight_decay` > 0 makes it AdamW: each step shrinks every weight by
    `learning_rate * weight_decay` of itself, decoupled from the gradient's moments."""

    def make(epochs: int) -> keras.optimizers.Optimizer:
        steps = max(1, steps_per_epoch * epochs)
        warmup = int(steps * warmup_fraction)
        if not warmup:
            decay = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)
        else:
            decay = keras.optimizers.schedules.CosineDecay(
                0.0,
                steps - warmup,
                alpha=0.05,
                warmup_target=learning_rate,
                warmup_steps=warmup,
            )
        if weight_decay > 0:
            optimizer = keras.optimizers.AdamW(decay, weight_decay=weight_decay)
            # An ordinal head's position and spread are offsets and scales, not weights that
            # over-fit by growing: decay would pull every image towards the first stage.
            optimizer.exclude_from_weight_decay(var_names=["position_bias", "log_spread"])
            return optimizer
        return keras.optimizers.Adam(decay)

    return make


def keras_fit(
    fit_model: keras.Model,
    train_data: Any,
    validation_data: Any,
    initial_epoch: int,
    epochs: int,
    callbacks: Sequence[keras.callbacks.Callback],
    verbose: int | str,
    steps_per_epoch: int | None = None,
) -> keras.callbacks.History:
    """One phase through Keras' `fit`; the trainer's `fit_stage_distributed` takes the same.

    `steps_per_epoch`: `train_data` holds every epoch back to back, and `fit` reads this many
    batches of one iterator per epoch (None: it holds one epoch, iterated afresh each time)."""
    images, labels = train_data if isinstance(train_data, tuple) else (train_data, None)
    return fit_model.fit(
        x=images,
        y=labels,
        validation_data=validation_data,
        initial_epoch=initial_epoch,
        epochs=epochs,
        callbacks=list(callbacks),
        verbose=verbose,
        steps_per_epoch=steps_per_epoch,
        shuffle=False,  # make_dataset already reshuffles every epoch
    )


@dataclasses.dataclass
class PhaseRunner:
    """Trains `model` through `phases`.

    Attributes:
        model: the classifier (a `ParallelCNN` for stage-wise phases).
        phases: from `plan_phases`.
        optimizer_factory: a new optimizer for `epochs` epochs (see `adam_with_cosine_decay`);
            joint training makes one for all its epochs, each stage-wise part one of its own
            (an optimizer's state belongs to the variables it was built for).
        branch_loss_weight: each branch's auxiliary loss in joint training.
        label_smoothing: every cross-entropy's label smoothing (`classification_loss`).
        jit_compile: passed to `compile`.
        scope: where optimizers and compiled models are built (a strategy's scope).
        steps_per_epoch: set when `data_for`'s training data holds all the epochs it is asked
            for back to back (`make_dataset(epochs=...)`, whose epochs are drawn from the run's
            seed and the epoch, so a resumed run draws what it would have), this many batches
            each; None when it holds one epoch, iterated once per epoch.
    """

    model: keras.Model
    phases: list[Phase]
    optimizer_factory: OptimizerFactory
    branch_loss_weight: float = 0.3
    label_smoothing: float = 0.0
    jit_compile: bool | str = "auto"
    scope: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    steps_per_epoch: int | None = None
    # The compiled model the last phase fitted (None until a phase has run).
    fitted: keras.Model | None = dataclasses.field(default=None, init=False)

    @property
    def ends(self) -> list[int]:
        """The epoch (counted over the run) after which each phase ends."""
        return list(itertools.accumulate(phase.stage.epochs for phase in self.phases))

    def compiled_for(self, phase: Phase, previous: keras.Model | None = None):
        """The compiled model to fit in `phase` and its label function (`previous`: the
        model the phase before fitted, whose optimizer joint training carries on)."""
        joint = phase.is_joint
        with self.scope():
            if previous is not None and joint:
                optimizer = previous.optimizer
            else:
                optimizer = self.optimizer_factory(self.optimizer_epochs(phase))
            if not joint:
                fitted = stagewise_trainer(
                    self.model,
                    phase.part,
                    optimizer,
                    self.label_smoothing,
                    jit_compile=self.jit_compile,
                )
                return fitted, lambda data: data
            if phase.part == JOINT_HEAD:
                # The seed's variant: features learned on small images stay, the head
                # relearns at the larger size. Keras 3 fixes the trainable set at compile time.
                set_trainable(self.model, branches=False, head=True)
            return joint_trainer(
                self.model,
                optimizer,
                self.branch_loss_weight,
                self.label_smoothing,
                jit_compile=self.jit_compile,
            )

    def optimizer_epochs(self, phase: Phase) -> int:
        """The epochs one optimizer (and its learning-rate decay) spans: every joint phase
        together, or every phase of one stage-wise part."""
        if phase.is_joint:
            return sum(p.stage.epochs for p in self.phases if p.is_joint)
        return sum(p.stage.epochs for p in self.phases if p.part == phase.part)

    def phase_that_saved(self, epochs_done: int) -> Phase:
        """The phase whose compiled model holds the state after `epochs_done` epochs: a joint
        run's optimizer was built over the whole model in its first phase; a stage-wise
        part's in that part."""
        index = next((i for i, end in enumerate(self.ends) if epochs_done <= end), -1)
        return self.phases[0] if self.phases[index].is_joint else self.phases[index]

    def run(
        self,
        data_for: DataFor,
        fit: Callable[..., keras.callbacks.History] = keras_fit,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        verbose: int | str = "auto",
        epochs_done: int = 0,
        start: tuple[Phase, keras.Model, Callable] | None = None,
        before_phase: Callable[[int, Phase], None] | None = None,
        after_phase: Callable[[int, Phase], None] | None = None,
    ) -> list[tuple[Phase, keras.callbacks.History]]:
        """Fits every phase not finished after `epochs_done` epochs, in order.

        `data_for(phase, training, epochs)` gives the phase's training or validation data,
        for the run's `epochs` (a range) that the phase fits now. `start` is
        `(phase, fit_model, to_labels)` when the caller already built (and restored) the first
        compiled model; `before_phase` and `after_phase` are called with each phase's index.
        Callbacks see the merged output's metrics under their plain names.
        """
        built, fit_model, to_labels = start or (None, None, None)
        self.fitted = fit_model
        callbacks = [AliasMergedMetrics(), *callbacks]
        histories = []
        for index, phase in enumerate(self.phases):
            end = self.ends[index]
            if epochs_done >= end:
                continue
            if built is None or phase.part != built.part:
                fit_model, to_labels = self.compiled_for(phase, previous=fit_model)
                built = phase
            if before_phase:
                before_phase(index, phase)
            epochs = range(max(epochs_done, end - phase.stage.epochs), end)
            history = fit(
                fit_model,
                to_labels(data_for(phase, True, epochs)),
                to_labels(data_for(phase, False, epochs)),
                initial_epoch=epochs.start,
                epochs=end,
                callbacks=callbacks,
                verbose=verbose,
                steps_per_epoch=self.steps_per_epoch,
            )
            histories.append((phase, history))
            self.fitted = fit_model
            if after_phase:
                after_phase(index, phase)
        return histories

    def finish(self) -> None:
        """After phases that trained part of the model: every layer trainable again and a fresh
        optimizer built for all the weights (one built for a subset makes loading the saved
        model warn and drop it)."""
        if all(phase.part == JOINT for phase in self.phases):
            return
        with self.scope():
            set_trainable(self.model, branches=True, head=True)
            compile_classifier(self.model, self.optimizer_factory(1))
            self.model.optimizer.build(self.model.trainable_variables)


def _one_stage(epochs: int) -> Stage:
    # Data given as ready batches has no size to schedule; the phase only counts epochs.
    return Stage((0, 0), epochs)


def fit_joint(
    model: keras.Model,
    train_ds: Any,
    val_ds: Any = None,
    epochs: int = 1,
    optimizer: keras.optimizers.Optimizer | str = "adam",
    callbacks: Sequence[keras.callbacks.Callback] = (),
    branch_loss_weight: float = 0.3,
    verbose: int | str = "auto",
) -> dict[str, list[float]]:
    """Train the whole model at once, through the same `PhaseRunner` as the trainer.

    With `branch_loss_weight > 0` each branch's own softmax gets an auxiliary cross-entropy
    (weighted by it) next to the merged output's: without it a "concat" merge leaves the branch
    heads untrained, and per-branch accuracy would mean nothing.

    Args:
        model: a `ParallelCNN` or any classifier (uncompiled or compiled; it is compiled here).
        train_ds: a `tf.data.Dataset` of (images, one-hot) batches, or an `(images, one_hot)`
            tuple of arrays.
        val_ds: the same for validation, or None.
        epochs: epochs to train.
        optimizer: a Keras optimizer or its name (created in the caller's strategy scope).
        callbacks: Keras callbacks; they see the merged output's metrics as `accuracy`,
            `val_accuracy`, and each branch's as `<branch>_accuracy`.
        branch_loss_weight: weight of each branch's auxiliary loss; 0 trains the merged output
            alone.
        verbose: passed to `fit`.

    Returns:
        The history dict: `loss`, `accuracy`, `val_accuracy`, ... and per-branch entries.
    """
    runner = PhaseRunner(
        model,
        plan_phases([_one_stage(epochs)]),
        optimizer_factory=lambda _: optimizer,
        branch_loss_weight=branch_loss_weight,
    )
    [(_, history)] = runner.run(lambda _, training, __: train_ds if training else val_ds,
                                callbacks=callbacks, verbose=verbose)  # fmt: skip
    return {k: v for k, v in history.history.items() if "merged_" not in k}


def fit_stagewise(
    model: keras.Model,
    train_ds: Any,
    val_ds: Any = None,
    epochs_per_branch: int = 1,
    head_epochs: int = 1,
    optimizer_factory: Callable[[], keras.optimizers.Optimizer] = keras.optimizers.Adam,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> dict[str, dict[str, list[float]]]:
    """The seed's stage-wise training, through the same `PhaseRunner` as the trainer: each
    branch alone, then the merge head on frozen branches.

    Each branch is trained through `branch_models(model)[name]`, which shares the weights of
    `model`, with the other branches and the head frozen; then all branches are frozen and the
    head is trained (skipped when the merge has no weights, e.g. "average"). On return every
    layer is trainable again and `model` is compiled with a fresh optimizer, ready to evaluate
    or to fine-tune jointly.

    Args:
        model: a `ParallelCNN`.
        train_ds: a `tf.data.Dataset` of (images, one-hot) batches, or an `(images, one_hot)`
            tuple of arrays.
        val_ds: the same for validation, or None.
        epochs_per_branch: epochs for each branch.
        head_epochs: epochs for the merge head.
        optimizer_factory: returns a new optimizer for each part.
        callbacks: Keras callbacks, passed to every part's `fit`.
        verbose: passed to `fit`.

    Returns:
        History dicts keyed `branch/<name>` and `head`.
    """
    phases = plan_phases(
        [_one_stage(epochs_per_branch)], stagewise_parts(model, head_epochs), head_epochs
    )
    runner = PhaseRunner(model, phases, optimizer_factory=lambda _: optimizer_factory())
    histories = runner.run(
        lambda _, training, __: train_ds if training else val_ds,
        callbacks=callbacks,
        verbose=verbose,
    )
    runner.finish()
    return {
        "head" if phase.part == HEAD else f"branch/{phase.part}": history.history
        for phase, history in histories
    }
