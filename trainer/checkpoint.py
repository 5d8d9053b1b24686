"""Resumable runs: one checkpoint folder per finished epoch, put in place by one rename.

    checkpoint/
      epoch-7/              the newest finished epoch; the older ones go once it is in place
        state.weights.h5    the fitted model's weights and optimizer state (its iteration
                            count included, so the learning-rate schedule goes on from there)
        classifier.npz      the whole classifier, while a stage-wise part fits only some of it
        best.npz            the best weights so far (a hard link to the last epoch's when they
                            did not improve)
        rng.npz             the models' Keras seed-generator states (dropout masks)
        progress.json       epochs done, the stages ended, the best accuracy, the fingerprint
      .epoch-8.tmp/         being written: a kill leaves it behind, and it is never read

Everything of epoch N is written into `.epoch-N.tmp/`, which is then renamed to `epoch-N`:
a kill at any moment leaves epoch N whole or not at all, never the weights of epoch N beside
the progress of epoch N-1 (which would train epoch N twice). The data order and augmentation
draws need no saved state: the trainer's batches of epoch N are drawn from (seed, N) alone
(`cellkeras.data.make_dataset(epochs=...)`), so a resumed run draws what it would have.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cellkeras.io.files import replace_folder, write_atomically
from trainer.config import RunConfig

WEIGHTS = "state.weights.h5"
CLASSIFIER = "classifier.npz"
BEST = "best.npz"
RNG = "rng.npz"
PROGRESS = "progress.json"
EPOCH_PREFIX = "epoch-"


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest finished epoch's folder in `folder` (None when there is none)."""
    found = []
    for path in folder.glob(f"{EPOCH_PREFIX}*"):
        number = path.name[len(EPOCH_PREFIX) :]
        if number.isdigit() and (path / PROGRESS).is_file():
            found.append((int(number), path))
    return max(found)[1] if found else None


class RunProgress(keras.callbacks.Callback):
    """Makes a run resumable and keeps its best model.

    After every epoch it saves the weights and optimizer state of the model being fitted, and
    the progress through the schedule, as one checkpoint folder (see the module docstring);
    rerunning the same command after a crash or `kill -9` continues after the last finished
    epoch, mid-stage included (at most the epoch in flight is lost). Keras' BackupAndRestore
    does not fit a schedule of several `fit` calls: it restores the epoch counter into
    whichever call comes first and deletes its backup when that call ends. It also keeps the
    watched model's weights whenever validation accuracy improves (written out as
    `best.keras` at the end, `write_best`), and records each stage when its last epoch ends,
    in the same checkpoint as the epoch, so a crash between the two cannot lose the record.
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
        self._source: Path | None = None  # the epoch folder restored from
        self._best: Path | None = None  # the newest checkpoint's best.npz

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
        source = latest_checkpoint(read_from or folder)
        if source is None:
            return progress
        state = json.loads((source / PROGRESS).read_text())
        # A setting added since the run was saved did not exist for it: its default is what
        # that run used.
        defaults = {
            "data": dataclasses.asdict(type(config.data)()),
            "train": dataclasses.asdict(type(config.train)()),
        }
        saved_fingerprint = {
            part: {**defaults[part], **state["fingerprint"].get(part, {})} for part in fingerprint
        }
        if saved_fingerprint != fingerprint:
            changed = [
                f"{part}.{name}: {saved.get(name)!r} -> {value!r}"
                for part, fields in fingerprint.items()
                for saved in [saved_fingerprint[part]]
                for name, value in fields.items()
                if saved.get(name) != value
            ]
            raise ValueError(
                f"{source.parent.parent} holds an unfinished run with a different "
                f"configuration ({'; '.join(changed) or 'fields differ'}); pass the saved "
                "values to continue it, another --output_dir, or delete the folder to start over"
            )
        progress.epochs_done = state["epochs_done"]
        progress.best_val_accuracy = state["best_val_accuracy"]
        progress.best = state.get("best", {})
        progress.stages = state["stages"]
        progress.partial_seconds = state["partial_seconds"]
        progress._source = source
        progress._best = source / BEST if (source / BEST).is_file() else None
        return progress

    @property
    def resumed_from(self) -> Path | None:
        """The run folder whose checkpoint this progress was read from."""
        return None if self._source is None else self._source.parent.parent

    def restore(self, fit_model: keras.Model, classifier: keras.Model | None = None) -> None:
        """Loads the saved state into the (compiled) model to fit: first the whole
        classifier's weights, when saved (a stage-wise part fits only some of them), then the
        fitted model's weights and optimizer state, then the seed generators' states."""
        source = self._source
        if classifier is not None and (source / CLASSIFIER).is_file():
            _load_weights_npz(classifier, source / CLASSIFIER)
        fit_model.optimizer.build(fit_model.trainable_variables)
        fit_model.load_weights(source / WEIGHTS)
        if (source / RNG).is_file():
            _load_seed_states([fit_model, classifier], source / RNG)
        if self._best is not None and self._best.parent.parent != self.folder:
            # A worker's own copy: the chief removes its folder once the next one is in place.
            self.folder.mkdir(parents=True, exist_ok=True)
            self._best = Path(shutil.copyfile(self._best, self.folder / f".resumed-{BEST}"))

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
        val_accuracy = (logs or {}).get("val_accuracy")
        improved = (
            self._watched is not None
            and val_accuracy is not None
            and val_accuracy > self.best_val_accuracy
        )
        if improved:
            self.best_val_accuracy = float(val_accuracy)
            size, accuracy = self._stage_record.get("size"), float(val_accuracy)
            self.best = {"epoch": self.epochs_done, "size": size, "val_accuracy": accuracy}
        if self.epochs_done == self._stage_end and len(self.stages) == self._stage:
            self.stages.append(
                {
                    **self._stage_record,
                    "seconds": round(elapsed, 2),
                    "val_accuracy": None if val_accuracy is None else float(val_accuracy),
                }
            )
        self._checkpoint(improved)

    def _checkpoint(self, improved: bool) -> None:
        """Writes this epoch's folder beside the last one, renames it into place, then removes
        everything else (the last epoch, a kill's leftovers)."""
        staging = self.folder / f".{EPOCH_PREFIX}{self.epochs_done}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _write(staging / WEIGHTS, self.model.save_weights)
        if self._whole_classifier is not None:
            _write(staging / CLASSIFIER, _npz_writer(self._whole_classifier.get_weights()))
        if improved:
            _write(staging / BEST, _npz_writer(self._watched.get_weights()))
        elif self._best is not None:
            _write(staging / BEST, lambda path: _link_or_copy(self._best, Path(path)))
        _write(staging / RNG, _seed_state_writer([self.model, self._whole_classifier]))
        state = json.dumps(self._state(), indent=2) + "\n"
        _write(staging / PROGRESS, lambda path: Path(path).write_text(state))
        final = self.folder / f"{EPOCH_PREFIX}{self.epochs_done}"
        replace_folder(staging, final)  # the commit: one rename
        self._best = final / BEST if (final / BEST).is_file() else None
        for other in self.folder.iterdir():
            if other != final:
                _remove(other)

    def _state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "epochs_done": self.epochs_done,
            "best_val_accuracy": self.best_val_accuracy,
            "best": self.best,
            "stages": self.stages,
            "partial_seconds": self.partial_seconds,
        }

    def write_best(self, model: keras.Model, path: Path) -> None:
        """Saves `model` with the best weights seen as `path` (a `.keras` file), then puts its
        own weights back. Weights only, then a whole save of the final model: a best kept
        mid-run as a `.keras` file would carry an optimizer built for the part of the model
        being trained then, and loading it would warn and drop it."""
        if self._best is None or not self._best.is_file():
            return
        final = model.get_weights()
        _load_weights_npz(model, self._best)
        write_atomically(path, model.save)
        model.set_weights(final)

    def finish(self) -> None:
        """The run is complete: a rerun of the same command starts a new one."""
        shutil.rmtree(self.folder, ignore_errors=True)


def trim_history(path: Path, epochs_done: int) -> None:
    """Keeps the header of `history.csv` and one row (the last) for each of the first
    `epochs_done` epochs. CSVLogger writes an epoch's row before that epoch's checkpoint, so
    a kill between the two leaves a row for an epoch the resumed run trains and logs again."""
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    if not lines:
        return
    header, *rows = lines
    kept: dict[int, str] = {}
    for row in rows:
        epoch = row.split(",", 1)[0].strip()
        if epoch.isdigit() and int(epoch) < epochs_done:
            kept[int(epoch)] = row
    text = header + "".join(kept[epoch] for epoch in sorted(kept))
    write_atomically(path, lambda temporary: Path(temporary).write_text(text))


def _write(path: Path, save: Callable[[str], object]) -> None:
    """One file of a checkpoint in the making (a fault-injection test replaces this)."""
    save(str(path))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, target)


def _npz_writer(weights: list[np.ndarray]) -> Callable[[str], None]:
    return lambda path: np.savez(path, **{f"w{i}": w for i, w in enumerate(weights)})


def _load_weights_npz(model: keras.Model, path: Path) -> None:
    with np.load(path) as arrays:
        model.set_weights([arrays[f"w{i}"] for i in range(len(arrays.files))])


def _seed_states(models: Iterable[keras.Model | None]) -> list[Any]:
    """The models' variables that are not weights, in the models' order: the states of their
    layers' seed generators (Dropout's), which `save_weights` leaves out; without them a
    resumed run would draw the dropout masks of the run's first epochs again. By position, not
    path: a seed generator's path is numbered by how many were made before it in the process."""
    states, seen = [], set()
    for model in models:
        if model is None:
            continue
        weights = {id(v) for v in model.weights}
        for variable in model.variables:
            if id(variable) not in weights and id(variable) not in seen:
                seen.add(id(variable))
                states.append(variable)
    return states


def _seed_state_writer(models: list[keras.Model | None]) -> Callable[[str], None]:
    values = {f"s{i}": np.asarray(v.numpy()) for i, v in enumerate(_seed_states(models))}
    return lambda path: np.savez(path, **values)


def _load_seed_states(models: list[keras.Model | None], path: Path) -> None:
    states = _seed_states(models)
    with np.load(path) as saved:
        if len(saved.files) != len(states):
            raise ValueError(
                f"{path} holds {len(saved.files)} seed-generator states, the model has "
                f"{len(states)}"
            )
        for index, variable in enumerate(states):
            variable.assign(saved[f"s{index}"])
