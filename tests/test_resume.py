"""Exact resume and `--deterministic`: one atomic checkpoint per epoch, per-epoch data seeds,
and runs that repeat to the bit."""

import json

import numpy as np
import pytest

from trainer.config import build_config

WRITES = ["state.weights.h5", "classifier.npz", "best.npz", "rng.npz", "progress.json"]


class Killed(BaseException):
    """A kill: not an Exception, so no handler on the way swallows it."""


def _tiny_model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dropout(0.5), keras.layers.Dense(2)]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def _step(model, seed):
    rng = np.random.default_rng(seed)
    model.fit(rng.normal(size=(8, 4)), rng.normal(size=(8, 2)), batch_size=8, verbose=0)


def _seed_states(model):
    weights = {id(v) for v in model.weights}
    return [v.numpy().copy() for v in model.variables if id(v) not in weights]


@pytest.mark.parametrize("kill_before", [*WRITES, "removing the older epoch"])
def test_a_kill_between_any_two_checkpoint_writes_resumes_a_whole_epoch(
    tmp_path, monkeypatch, kill_before
):
    from trainer import checkpoint
    from trainer.checkpoint import RunProgress

    config = build_config("smoke")
    folder = tmp_path / "checkpoint"
    model = _tiny_model()
    progress = RunProgress.resume_or_start(folder, config)
    progress.set_model(model)
    progress.watch(model, whole_classifier=model)
    progress.begin_stage(0, 3, {"size": [8, 8]})
    _step(model, 1)
    progress.on_epoch_end(0, {"val_accuracy": 0.5})
    after = {1: (model.get_weights(), _seed_states(model), int(model.optimizer.iterations))}
    _step(model, 2)
    after[2] = (model.get_weights(), _seed_states(model), int(model.optimizer.iterations))

    written = []
    real_write, real_remove = checkpoint._write, checkpoint._remove

    def write(path, save):
        if path.name == kill_before:
            raise Killed(f"before {path.name}")
        written.append(path.name)
        real_write(path, save)

    def remove(path):
        if kill_before == "removing the older epoch":
            raise Killed("before removing the older epoch")
        real_remove(path)

    monkeypatch.setattr(checkpoint, "_write", write)
    monkeypatch.setattr(checkpoint, "_remove", remove)
    with pytest.raises(Killed):
        progress.on_epoch_end(1, {"val_accuracy": 0.9})
    monkeypatch.undo()
    assert written == WRITES[: len(written)]  # the epoch's writes, in order, up to the kill

    resumed = RunProgress.resume_or_start(folder, config)
    expected = 2 if kill_before == "removing the older epoch" else 1
    assert resumed.epochs_done == expected
    assert resumed.best_val_accuracy == (0.9 if expected == 2 else 0.5)
    fresh = _tiny_model(seed=7)  # other initial weights and seed-generator states
    resumed.restore(fresh, classifier=fresh)
    weights, seed_states, iterations = after[expected]
    for restored, saved in zip(fresh.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(restored, saved)
    assert seed_states and len(seed_states) == len(_seed_states(fresh))
    for restored, saved in zip(_seed_states(fresh), seed_states, strict=True):
        np.testing.assert_array_equal(restored, saved)  # the dropout masks go on, not over
    assert int(fresh.optimizer.iterations) == iterations

    # The next epoch's checkpoint is the only thing left in the folder.
    resumed.set_model(fresh)
    resumed.watch(fresh, whole_classifier=fresh)
    resumed.on_epoch_end(expected, {"val_accuracy": 0.1})
    assert [p.name for p in folder.iterdir()] == [f"epoch-{expected + 1}"]
    assert sorted(p.name for p in (folder / f"epoch-{expected + 1}").iterdir()) == sorted(WRITES)


def test_resume_trims_history_to_one_row_per_finished_epoch(tmp_path):
    from trainer.checkpoint import trim_history

    history = tmp_path / "history.csv"
    history.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n1,0.7\n")
    trim_history(history, 2)
    assert history.read_text() == "epoch,loss\n0,1.0\n1,0.7\n"


def test_each_epochs_batches_depend_only_on_the_seed_and_the_epoch():
    from cellkeras.augment import build_augmenter
    from cellkeras.data import make_dataset
    from cellkeras.data.synthetic import generate_cells

    cells = generate_cells(24, 16, seed=1)

    def images(epochs, seed=0):
        augment = build_augmenter("basic", seed=seed, num_classes=cells.num_classes)
        batches = make_dataset(
            cells, 16, True, batch_size=8, augment=augment, seed=seed, epochs=epochs
        )
        assert len(batches) == 3 * len(epochs)
        return [x.numpy() for x, _ in batches]

    whole = images(range(0, 3))
    resumed = images(range(2, 3))  # a run resumed after epoch 2 draws epoch 2, not epoch 0
    for one, other in zip(whole[6:], resumed, strict=True):
        np.testing.assert_array_equal(one, other)
    assert not np.array_equal(whole[0], resumed[0])
    for one, other in zip(whole, images(range(0, 3)), strict=True):  # parallel map, same draws
        np.testing.assert_array_equal(one, other)
    assert not np.array_equal(whole[0], images(range(0, 1), seed=1)[0])


def _weights(run_folder):
    import keras

    return keras.saving.load_model(run_folder / "model.keras").get_weights()


def _iterations_at_the_end():
    """A callback holding the fitted model's optimizer iterations when the last fit ends."""
    import keras

    class Iterations(keras.callbacks.Callback):
        value = None

        def on_train_end(self, logs=None):
            self.value = int(self.model.optimizer.iterations)

    return Iterations()


@pytest.mark.slow
def test_deterministic_runs_give_identical_weights_and_metrics(tmp_path):
    from trainer.task import run

    overrides = {"train.augment": "fluid", "train.deterministic": True}
    results = []
    for name in ("one", "two"):
        config = build_config("smoke", overrides)
        config.output_dir = str(tmp_path / name)
        results.append(run(config, verbose=0))
    one, two = results
    assert one["val_accuracy"] == two["val_accuracy"]
    assert [s["val_accuracy"] for s in one["stages"]] == [s["val_accuracy"] for s in two["stages"]]
    assert (tmp_path / "one" / "history.csv").read_text() == (
        tmp_path / "two" / "history.csv"
    ).read_text()
    for a, b in zip(_weights(tmp_path / "one"), _weights(tmp_path / "two"), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_killed_and_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, monkeypatch):
    """Killed after epoch 1's history row is written but before its checkpoint is whole (the
    weights are written, the progress not): the resumed run trains epoch 1 again, from the same
    state, data order and augmentation draws, and ends with the same weights, optimizer step
    and history as a run never killed."""
    from trainer import checkpoint
    from trainer.task import run

    overrides = {
        "train.augment": "basic",
        "train.deterministic": True,
        "train.schedule": "16:2,24:1",
    }

    def config(name):
        made = build_config("smoke", overrides)
        made.output_dir = str(tmp_path / name)
        return made

    whole = _iterations_at_the_end()
    expected = run(config("whole"), verbose=0, callbacks=[whole])

    real_write = checkpoint._write

    def write(path, save):
        if path.parent.name == ".epoch-2.tmp" and path.name == "progress.json":
            raise Killed("between the weights and the progress of epoch 1")
        real_write(path, save)

    monkeypatch.setattr(checkpoint, "_write", write)
    with pytest.raises(Killed):
        run(config("killed"), verbose=0)
    monkeypatch.undo()
    history = tmp_path / "killed" / "history.csv"
    assert [line.split(",")[0] for line in history.read_text().splitlines()[1:]] == ["0", "1"]
    saved = json.loads(
        (tmp_path / "killed" / "checkpoint" / "epoch-1" / "progress.json").read_text()
    )
    assert saved["epochs_done"] == 1

    resumed = _iterations_at_the_end()
    metrics = run(config("killed"), verbose=0, callbacks=[resumed])
    assert resumed.value == whole.value == 3 * 5  # 3 epochs of 76 images in batches of 16
    assert metrics["val_accuracy"] == expected["val_accuracy"]
    assert history.read_text() == (tmp_path / "whole" / "history.csv").read_text()
    for a, b in zip(_weights(tmp_path / "whole"), _weights(tmp_path / "killed"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_different_configuration_is_refused_naming_what_changed(tmp_path):
    import dataclasses

    from trainer.checkpoint import EPOCH_PREFIX, PROGRESS, RunProgress

    saved = build_config("smoke")
    saved.data.normalization = "range"
    fingerprint = {
        "data": dataclasses.asdict(saved.data),
        "train": dataclasses.asdict(saved.train),
    }
    epoch = tmp_path / "checkpoint" / f"{EPOCH_PREFIX}1"
    epoch.mkdir(parents=True)
    (epoch / PROGRESS).write_text(json.dumps({"fingerprint": fingerprint}))
    now = build_config("smoke")
    now.data.normalization = "percentile"
    with pytest.raises(ValueError, match=r"data\.normalization: 'range' -> 'percentile'"):
        RunProgress.resume_or_start(tmp_path / "checkpoint", now)


def test_a_run_saved_before_a_setting_existed_resumes_with_its_default(tmp_path):
    import dataclasses

    from trainer.checkpoint import EPOCH_PREFIX, PROGRESS, RunProgress

    config = build_config("smoke")
    train = dataclasses.asdict(config.train)
    del train["ordinal"]  # the field came later; the run trained with its default
    fingerprint = {"data": dataclasses.asdict(config.data), "train": train}
    epoch = tmp_path / "checkpoint" / f"{EPOCH_PREFIX}3"
    epoch.mkdir(parents=True)
    state = {"epochs_done": 3, "best_val_accuracy": 0.5, "stages": [], "partial_seconds": {}}
    (epoch / PROGRESS).write_text(json.dumps({"fingerprint": fingerprint, **state}))
    assert RunProgress.resume_or_start(tmp_path / "checkpoint", config).epochs_done == 3
    config.train.ordinal = "time"  # a value other than the default is still a change
    with pytest.raises(ValueError, match=r"train\.ordinal: 'off' -> 'time'"):
        RunProgress.resume_or_start(tmp_path / "checkpoint", config)
