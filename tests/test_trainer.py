"""The trainer: schedules, configs, and a whole run on tiny data."""

import json

import pytest

from cellkeras.training.schedule import Stage, format_schedule, parse_schedule, total_epochs
from tests.conftest import checkpointed_epochs
from trainer.config import PRESETS, build_config


def test_schedule_parses_sizes_and_epochs():
    stages = parse_schedule("32:2, 64x96:3")
    assert stages == [Stage((32, 32), 2), Stage((64, 96), 3)]
    assert format_schedule(stages) == "32:2,64x96:3" and total_epochs(stages) == 5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no stages"),
        ("64", "not SIZE:EPOCHS"),
        ("64:x", "not SIZE:EPOCHS"),
        ("64:0", "epochs must be at least 1"),
        ("4:2", "under the minimum"),
        ("32:2,abc:1", "stage 2"),
    ],
)
def test_schedule_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(spec)


def test_presets_and_overrides():
    config = build_config("smoke", {"train.seed": 7, "data.balance": "oversample"})
    assert config.train.seed == 7 and config.data.balance == "oversample"
    assert config.train.schedule == PRESETS["smoke"]["train.schedule"]
    assert config.output_dir == "runs/smoke"
    with pytest.raises(ValueError, match="known presets: default"):
        build_config("nope")
    with pytest.raises(ValueError, match="unknown config field 'train.epochs'"):
        build_config(overrides={"train.epochs": 3})


@pytest.mark.slow
def test_smoke_run_writes_the_run_folder(tmp_path):
    from trainer.task import run

    config = build_config("smoke", {"train.augment": "none"})
    config.output_dir = str(tmp_path / "run")
    metrics = run(config, verbose=0)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved == metrics
    assert saved["classes"] == ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert [s["size"] for s in saved["stages"]] == [[16, 16], [24, 24]]
    assert all(s["seconds"] > 0 and 0 <= s["val_accuracy"] <= 1 for s in saved["stages"])
    assert set(saved["per_branch_val_accuracy"]) == {"edge", "deep_narrow"}
    for name in (
        "config.json",
        "history.csv",
        "training_curves.png",
        "model.keras",
        "best.keras",
        "branches.json",
        "confusion_matrices.png",
        "report.html",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    history = (tmp_path / "run" / "history.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 2  # header + one row per epoch over both stages
    # Only epochs at the final size compete for best.keras: here the second epoch.
    assert saved["best"]["epoch"] == 2 and saved["best"]["size"] == [24, 24]
    assert saved["best"]["val_accuracy"] == saved["stages"][1]["val_accuracy"]
    assert "final size" in saved["best"]["rule"]
    rows = (tmp_path / "run" / "split.csv").read_text().splitlines()
    assert rows[0] == "path,label,split" and len(rows) == 1 + 96
    assert rows[1].startswith("synthetic:0,") and "test_accuracy" not in saved
    page = (tmp_path / "run" / "report.html").read_text()
    assert "epoch 2 of 2" in page and "not comparable" in page and "no test split" in page


def _run_task(args, tmp_path, timeout=300, **popen):
    """Runs `python -m trainer.task` in a fresh process (TF device setup happens once per
    process, and a kill must not take the test runner with it)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "trainer.task", *args]
    if popen:
        return subprocess.Popen(command, env=env, cwd=tmp_path, **popen)
    return subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_kill_and_resume_continues_mid_schedule(tmp_path):
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    args = ["--preset=smoke", "--augment=none", "--schedule=16:2,24:3", f"--output_dir={out}"]
    process = _run_task(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if checkpointed_epochs(out / "checkpoint") >= 1:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = checkpointed_epochs(out / "checkpoint")
    assert 1 <= done_before < 5

    resumed = _run_task(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {out} after epoch {done_before} of 5" in resumed.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["epochs"] for s in metrics["stages"]] == [2, 3]
    epochs = [line.split(",")[0] for line in (out / "history.csv").read_text().splitlines()[1:]]
    assert epochs == ["0", "1", "2", "3", "4"]  # the epoch the kill cut short, once
    assert not (out / "checkpoint").exists()


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_and_mixed_precision(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(\n"
        "    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "import keras\n"
        "from trainer.config import build_config\n"
        "from trainer.task import run\n"
        "config = build_config('smoke', {'train.distribution': 'mirrored',\n"
        "    'train.mixed_precision': 'bfloat16', 'train.augment': 'none'})\n"
        f"config.output_dir = {str(tmp_path / 'run')!r}\n"
        "metrics = run(config, verbose=0)\n"
        "assert metrics['replicas'] == 2, metrics\n"
        "assert metrics['dtype_policy'] == 'mixed_bfloat16', metrics\n"
        "assert keras.config.dtype_policy().name == 'float32'\n"
        "print('OK', metrics['val_accuracy'])\n"
    )
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_precision_resolution_on_cpu():
    from trainer.runtime import resolve_precision

    assert resolve_precision("auto") == "float32"  # no GPU in tests
    assert resolve_precision("off") == "float32"
    assert resolve_precision("float16") == "mixed_float16"
    with pytest.raises(ValueError, match="known"):
        resolve_precision("fp8")


@pytest.mark.slow
def test_run_fn_reads_tfrecords_and_exports(tmp_path):
    import numpy as np
    import tensorflow as tf

    from cellkeras.data.synthetic import generate_cells
    from cellkeras.data.tfrecord import write_tfrecords
    from tests.fn_args import FnArgs
    from trainer.task import run_fn

    cells = generate_cells(48, 24, seed=1)
    train = write_tfrecords(cells.subset(np.arange(32)), tmp_path / "data" / "train")
    evaluation = write_tfrecords(cells.subset(np.arange(32, 48)), tmp_path / "data" / "eval")
    fn_args = FnArgs(
        train_files=train,
        eval_files=evaluation,
        serving_model_dir=str(tmp_path / "serving"),
        model_run_dir=str(tmp_path / "logs"),
        train_steps=3,
        custom_config={"preset": "smoke", "train.augment": "none"},
        hyperparameters={"train.schedule": "16:1"},
    )
    metrics = run_fn(fn_args)
    assert metrics["train_images"] == 32 and metrics["val_images"] == 16
    assert metrics["classes"] == list(cells.classes)
    assert metrics["steps_per_epoch"] == 3  # train_steps, not the 2 batches of 32 images
    # TFX's Evaluator and Pusher read the SavedModel at serving_model_dir itself.
    assert sorted(p.name for p in (tmp_path / "serving").iterdir()) == [
        "assets",
        "assets.extra",
        "fingerprint.pb",
        "model.keras",
        "model_card.json",
        "saved_model.pb",
        "variables",
    ]
    assert metrics["export"] == str(tmp_path / "serving")
    loaded = tf.saved_model.load(str(tmp_path / "serving"))
    png = tf.io.encode_png(tf.constant(cells.images[0]))
    outputs = loaded.signatures["serving_default"](image_bytes=tf.stack([png]))
    assert outputs["probabilities"].shape == (1, 4)
    assert (tmp_path / "logs" / "metrics.json").is_file()


@pytest.mark.slow
def test_later_stages_head_freezes_the_branches(tmp_path):
    import keras
    import numpy as np

    from trainer.task import run

    snapshots = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append({v.path: v.numpy().copy() for v in self.model.weights})

    config = build_config(
        "smoke",
        {
            "train.augment": "none",
            "train.later_stages": "head",
            "train.schedule": "16:1,24:1",
            "train.model": "parallel_small_concat",
        },
    )
    config.output_dir = str(tmp_path / "run")
    run(config, verbose=0, callbacks=[Snapshot()])
    after_first, after_second = snapshots
    branch = [p for p in after_first if p.startswith(("edge_", "deep_narrow_"))]
    head = [p for p in after_first if p.startswith("merge_")]
    assert branch and head
    for path in branch:  # stage two left every branch weight where stage one did
        np.testing.assert_array_equal(after_first[path], after_second[path], err_msg=path)
    assert any(not np.array_equal(after_first[p], after_second[p]) for p in head)
    with pytest.raises(ValueError, match="unknown later_stages"):
        run(build_config("smoke", {"train.later_stages": "some"}), verbose=0)


def test_phases_of_joint_and_stagewise_training():
    from cellkeras.training.schedule import JOINT, JOINT_HEAD, plan_phases

    stages = parse_schedule("16:2,24:1")
    joint = plan_phases(stages)
    assert [(p.part, p.stage_index, p.stage.epochs) for p in joint] == [
        (JOINT, 0, 2),
        (JOINT, 1, 1),
    ]
    head_only = plan_phases(stages, later_stages_head_only=True)
    assert [p.part for p in head_only] == [JOINT, JOINT_HEAD]
    stagewise = plan_phases(stages, ["edge", "deep_narrow", "head"], head_epochs=4)
    assert [(p.part, p.stage.size, p.stage.epochs) for p in stagewise] == [
        ("edge", (16, 16), 2),
        ("edge", (24, 24), 1),
        ("deep_narrow", (16, 16), 2),
        ("deep_narrow", (24, 24), 1),
        ("head", (24, 24), 4),
    ]
    assert [p.part for p in plan_phases(stages, ["a", "b"])] == ["a", "a", "b", "b"]


@pytest.mark.slow
def test_stagewise_trains_each_branch_then_the_head_and_resumes(tmp_path):
    import keras
    import numpy as np

    from trainer.task import run

    class Crash(RuntimeError):
        pass

    class Record(keras.callbacks.Callback):
        """Weights of the fitted model after every epoch; optionally dies after one."""

        def __init__(self, crash_after=None):
            super().__init__()
            self.snapshots, self.crash_after = [], crash_after

        def on_epoch_end(self, epoch, logs=None):
            self.snapshots.append((epoch, {v.path: v.numpy().copy() for v in self.model.weights}))
            if epoch == self.crash_after:
                raise Crash(f"killed after epoch {epoch}")

    overrides = {
        "train.augment": "none",
        "train.schedule": "16:1,24:1",
        "train.training_mode": "stagewise",
        "train.head_epochs": 1,
        "train.model": "parallel_small_concat",  # the seed's recipe: a head to train last
    }
    config = build_config("smoke", overrides)
    config.output_dir = str(tmp_path / "run")
    crashed = Record(crash_after=3)  # epochs: edge 0-1, deep_narrow 2-3, head 4
    with pytest.raises(Crash):
        run(config, verbose=0, callbacks=[crashed])
    assert checkpointed_epochs(tmp_path / "run" / "checkpoint") == 3  # epoch 3 died before its save

    resumed = Record()
    metrics = run(config, verbose=0, callbacks=[resumed])
    assert [(s["trains"], s["size"]) for s in metrics["stages"]] == [
        ("edge", [16, 16]),
        ("edge", [24, 24]),
        ("deep_narrow", [16, 16]),
        ("deep_narrow", [24, 24]),
        ("head", [24, 24]),
    ]
    assert metrics["training_mode"] == "stagewise"
    assert [epoch for epoch, _ in resumed.snapshots] == [3, 4]

    _, edge_done = crashed.snapshots[1]
    assert edge_done and all(p.startswith("edge_") for p in edge_done)  # the branch alone
    _, head_epoch = resumed.snapshots[-1]
    _, deep_done = resumed.snapshots[0]
    # Each branch kept, through the resume and the head's phase, what its own phase left.
    for path, value in {**edge_done, **deep_done}.items():
        np.testing.assert_array_equal(head_epoch[path], value, err_msg=path)
    assert any(p.startswith("merge_") for p in head_epoch)

    saved = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert all(layer.trainable for layer in saved.layers)
    history = (tmp_path / "run" / "history.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2", "3", "4"]
    assert (tmp_path / "run" / "best.keras").is_file()
    with pytest.raises(ValueError, match="parallel model"):
        run(build_config("smoke", {**overrides, "train.model": "edge"}), verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["joint", "stagewise"])
def test_a_crash_right_after_a_stage_ends_resumes_into_the_next(tmp_path, mode):
    """The crash lands after the stage's last epoch was checkpointed but before `fit`
    returned: the resumed run must start the next stage (for stage-wise, the next branch,
    with the saved state of the one that ended) and keep the ended stage's record."""
    import keras

    from trainer.task import run

    # Joint: after stage 1 of 2. Stage-wise: after the edge branch's part (phases edge 16,
    # edge 24, deep_narrow 16, deep_narrow 24, head), where the next part's trainer differs.
    crash_after = 1 if mode == "joint" else 2

    class CrashAtTrainEnd(keras.callbacks.Callback):
        fits = 0

        def on_train_end(self, logs=None):
            CrashAtTrainEnd.fits += 1
            if CrashAtTrainEnd.fits == crash_after:
                raise RuntimeError("killed as a stage's fit returned")

    overrides = {
        "train.augment": "none",
        "train.schedule": "16:1,24:1",
        "train.training_mode": mode,
        "train.head_epochs": 1,
        "train.model": "parallel_small_concat",  # stage-wise: the seed's head trains last
    }
    config = build_config("smoke", overrides)
    config.output_dir = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="killed"):
        run(config, verbose=0, callbacks=[CrashAtTrainEnd()])
    saved = tmp_path / "run" / "checkpoint" / f"epoch-{crash_after}" / "progress.json"
    progress = json.loads(saved.read_text())
    assert progress["epochs_done"] == crash_after and len(progress["stages"]) == crash_after

    metrics = run(config, verbose=0)
    expected = ["all", "all"] if mode == "joint" else ["edge"] * 2 + ["deep_narrow"] * 2 + ["head"]
    assert [s["trains"] for s in metrics["stages"]] == expected
    assert all(s["seconds"] > 0 for s in metrics["stages"])
    best = keras.saving.load_model(tmp_path / "run" / "best.keras")  # no optimizer warning
    assert best.count_params() == metrics["parameters"]


# --- three splits, split.csv, best.keras, the TFX contract -----------------------------------------


def _cell_tree(root, n_train=64, n_test=24, size=24):
    """The blood-cell layout root/{TRAIN,TEST}/<class>/<n>.png of synthetic cells."""
    from cellkeras.data.synthetic import generate_cells
    from tests.conftest import write_png

    cells = generate_cells(n_train + n_test, size, seed=2)
    for i, (pixels, label) in enumerate(zip(cells.images, cells.labels, strict=True)):
        split = "TRAIN" if i < n_train else "TEST"
        write_png(root / split / cells.classes[label] / f"{i}.png", pixels)
    return root


def _inputs(config, tmp_path):
    from trainer.inputs import Inputs
    from trainer.runtime import resolve_runtime

    runtime = resolve_runtime(config.train, str(tmp_path / "run"))
    return Inputs.load(config, runtime, (16, 16))


def test_a_test_folder_is_the_test_set_and_validation_comes_from_train(tmp_path):
    root = _cell_tree(tmp_path / "images")
    config = build_config("smoke", {"data.data_dir": str(root), "data.val_fraction": 0.25})
    inputs = _inputs(config, tmp_path)
    # Today the TEST folder silently became the validation set (and chose best.keras).
    assert all("/TRAIN/" in p for p in inputs.val_set.paths)
    assert len(inputs.val_set) == 16 and len(inputs.train_set) == 48
    assert sorted(inputs.test_set.paths) == sorted(str(p) for p in root.glob("TEST/*/*.png"))
    assert "the TEST split" in inputs.test_source
    rows = {path: (label, split) for path, label, split in inputs.split_rows}
    assert len(rows) == 88 and {split for _, split in rows.values()} == {"train", "val", "test"}
    assert all((split == "test") == ("/TEST/" in path) for path, (_, split) in rows.items())
    assert all(f"/{label}/" in path for path, (label, _) in rows.items())
    assert "48 train / 16 val / 24 test images" in inputs.describe()


def test_test_inputs_are_read_with_the_training_classes_and_conflicts_refused(tmp_path):
    from cellkeras.io.errors import BadInputError

    tree = _cell_tree(tmp_path / "images")
    config = build_config(
        "smoke",
        {"data.data_dir": str(tree / "TRAIN"), "data.test_dir": str(tree / "TEST")},
    )
    inputs = _inputs(config, tmp_path)
    assert len(inputs.test_set) == 24 and inputs.test_set.classes == inputs.images.classes
    assert inputs.test_source == f"--test_dir {tree / 'TEST'}"
    assert not set(inputs.test_set.paths) & set(inputs.train_set.paths + inputs.val_set.paths)

    both = build_config("smoke", {"data.data_dir": str(tree), "data.test_dir": str(tree / "TEST")})
    with pytest.raises(ValueError, match="TEST folder and a --test_\\* input"):
        _inputs(both, tmp_path)
    twice = build_config("smoke", {"data.data_dir": str(tree), "data.test_fraction": 0.2})
    with pytest.raises(ValueError, match="already has a test split"):
        _inputs(twice, tmp_path)
    other = tmp_path / "other"
    _cell_tree(other, n_train=4, n_test=4)
    (other / "TEST" / "lymphocyte").rename(other / "TEST" / "platelet")
    stranger = build_config(
        "smoke", {"data.data_dir": str(tree / "TRAIN"), "data.test_dir": str(other / "TEST")}
    )
    with pytest.raises(BadInputError, match="not among the given classes"):
        _inputs(stranger, tmp_path)


def test_split_csv_rows_name_in_memory_images_by_index(tmp_path):
    config = build_config("smoke", {"data.test_fraction": 0.25})
    inputs = _inputs(config, tmp_path)
    paths = [path for path, _, _ in inputs.split_rows]
    assert paths == [f"synthetic:{i}" for i in range(96)]
    splits = [split for _, _, split in inputs.split_rows]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (52, 20, 24)
    assert len(inputs.test_set) == 24 and inputs.test_source == "test_fraction 0.25 of synthetic"


def test_fixed_steps_per_epoch_and_validation_steps(tmp_path):
    config = build_config(
        "smoke", {"train.steps_per_epoch": 9, "train.validation_steps": 1, "data.val_fraction": 0.4}
    )
    inputs = _inputs(config, tmp_path)
    assert inputs.steps_per_epoch == 9  # 58 images make 4 batches of 16; they repeat
    fit_val = inputs.dataset(inputs.val_set, (16, 16), training=False, for_fit=True)
    assert len(fit_val) == 1
    assert len(inputs.dataset(inputs.val_set, (16, 16), training=False)) == 3  # all 38 images
    with pytest.raises(ValueError, match="steps_per_epoch must be at least 1"):
        _inputs(build_config("smoke", {"train.steps_per_epoch": 0}), tmp_path)


def test_config_from_fn_args_maps_steps_and_passes_custom_config(tmp_path):
    from tests.fn_args import FnArgs
    from trainer.tfx import config_from_fn_args

    fn_args = FnArgs(
        train_files=["a.gz", "b.gz"],
        eval_files=["c.gz"],
        serving_model_dir=str(tmp_path / "serving"),
        model_run_dir=str(tmp_path / "logs"),
        train_steps=25,
        eval_steps=3,
        custom_config={"preset": "smoke", "train.seed": 5, "data.test_tfrecords": "t.gz"},
        hyperparameters={"train.schedule": "16:2,24:2"},
    )
    config = config_from_fn_args(fn_args)
    assert config.train.seed == 5 and config.data.test_tfrecords == "t.gz"
    assert config.train.steps_per_epoch == 7  # 25 steps over 4 epochs, rounded up
    assert config.train.validation_steps == 3
    assert config.data.tfrecords == "a.gz,b.gz" and config.data.eval_tfrecords == "c.gz"
    assert config.export_dir == str(tmp_path / "serving") and not config.export_versioned
    with pytest.raises(ValueError, match="unknown config field 'train.epochs'"):
        config_from_fn_args(dataclasses_replace(fn_args, custom_config={"train.epochs": 2}))


def dataclasses_replace(value, **changes):
    import dataclasses

    return dataclasses.replace(value, **changes)


@pytest.mark.slow
def test_importing_the_trainer_changes_no_environment_variable():
    import subprocess
    import sys

    script = (
        "import os, json\n"
        "import keras, tensorflow\n"  # whatever they set is theirs, not the module file's
        "before = dict(os.environ)\n"
        "import trainer.task, trainer.tfx\n"
        "after = dict(os.environ)\n"
        "print(json.dumps(sorted(k for k in before.keys() | after.keys()\n"
        "                        if before.get(k) != after.get(k))))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


@pytest.mark.slow
def test_a_test_folder_is_scored_once_at_the_end(tmp_path):
    import csv

    from trainer.task import run

    root = _cell_tree(tmp_path / "images")
    config = build_config(
        "smoke",
        {"data.data_dir": str(root), "train.augment": "none", "train.schedule": "16:1,24:1"},
    )
    config.output_dir = str(tmp_path / "run")
    metrics = run(config, verbose=0)
    assert metrics["val_images"] == 13 and metrics["train_images"] == 51
    assert metrics["test_images"] == 24 and 0 <= metrics["test_accuracy"] <= 1
    low, high = metrics["test_accuracy_ci"]
    assert low <= metrics["test_accuracy"] <= high and high - low > 0.05  # 24 images: wide
    assert set(metrics["per_branch_test_accuracy"]) == {"edge", "deep_narrow"}
    assert set(metrics["per_branch_test_accuracy_ci"]) == {"edge", "deep_narrow"}
    out = tmp_path / "run"
    test_report = json.loads((out / "test" / "branches.json").read_text())
    assert test_report["num_samples"] == 24
    assert json.loads((out / "branches.json").read_text())["num_samples"] == 13  # validation
    with (out / "split.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"].split("/")[-3] for r in rows if r["split"] == "test"] == ["TEST"] * 24
    assert metrics["splits"] == {"train": 51, "val": 13, "test": 24, "gap": 0}
    page = (out / "report.html").read_text()
    assert "<h2>Test</h2><p>24 images from the TEST split" in page
    assert 'src="test/confusion_matrices.png"' in page
    assert "scored once, at the end" in page
