"""Resumable runs: the per-epoch checkpoint of the model being fitted and the run's progress."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cellkeras.io.files import write_atomically
from trainer.config import RunConfig


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
        self.best: dict[str, Any] = {}  # where the best weights came from: epoch, size, accuracy
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
        progress.best = state.get("best", {})
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
            size, accuracy = self._stage_record.get("size"), float(val_accuracy)
            self.best = {"epoch": self.epochs_done, "size": size, "val_accuracy": accuracy}
        if self._whole_classifier is not None:
            _save_weights_npz(self._whole_classifier, self.classifier_path)
        write_atomically(self.weights_path, self.model.save_weights)
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
        write_atomically(path, model.save)
        model.set_weights(final)

    def save(self) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "epochs_done": self.epochs_done,
            "best_val_accuracy": self.best_val_accuracy,
            "best": self.best,
            "stages": self.stages,
            "partial_seconds": self.partial_seconds,
        }
        write_atomically(
            self.folder / "progress.json",
            lambda path: Path(path).write_text(json.dumps(state, indent=2) + "\n"),
        )

    def finish(self) -> None:
        """The run is complete: a rerun of the same command starts a new one."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _save_weights_npz(model: keras.Model, path: Path) -> None:
    weights = model.get_weights()
    write_atomically(
        path, lambda temporary: np.savez(temporary, **{f"w{i}": w for i, w in enumerate(weights)})
    )


def _load_weights_npz(model: keras.Model, path: Path) -> None:
    with np.load(path) as arrays:
        model.set_weights([arrays[f"w{i}"] for i in range(len(arrays.files))])
