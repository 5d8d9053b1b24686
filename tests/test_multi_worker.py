"""Multi-worker training: TF_CONFIG checks, the custom loop against `fit`, and two real worker
processes on localhost (MultiWorkerMirroredStrategy over gRPC), including a kill and resume.

The multi-process tests start `python -m trainer.task` workers on free localhost ports; each
worker is killed if the test fails or runs out of time. They are marked slow (CI still runs
them) and kept tiny: 16 px synthetic images, a one-branch model, two or three epochs.
"""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest

from tests.conftest import checkpointed_epochs
from trainer.cluster import WorkerRole, parse_tf_config, role_from_tf_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240


def _config(index, ports, task_type="worker"):
    return json.dumps(
        {
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": task_type, "index": index},
        }
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("  ", "needs the TF_CONFIG environment variable"),
        ("{cluster:", "TF_CONFIG is not valid JSON"),
        ('["a"]', "TF_CONFIG must be a JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG has no "cluster"'),
        ('{"cluster": {"worker": ["localhost:1"]}}', 'TF_CONFIG has no "task"'),
        (
            '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}',
            "task type 'chief' is not in the cluster",
        ),
        (_config(2, [1, 2]), "task index 2 is out of range"),
        ('{"cluster": {"worker": ["nohost"]}, "task": {}}', "not host:port"),
        (
            '{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
            "supports only",
        ),
    ],
)
def test_bad_tf_config_is_named_and_explained(text, message):
    with pytest.raises(ValueError, match=message):
        parse_tf_config(text)


def test_multi_worker_strategy_checks_tf_config_first():
    from trainer.runtime import make_strategy

    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        make_strategy("multi_worker", tf_config="")


def test_chief_is_the_chief_task_or_else_worker_zero():
    def role(config):
        return role_from_tf_config(parse_tf_config(config))

    assert role(_config(0, [1, 2])) == WorkerRole("worker", 0, 2, has_chief=False)
    assert role(_config(0, [1, 2])).is_chief and not role(_config(1, [1, 2])).is_chief
    cluster = {"chief": ["a:1"], "worker": ["b:2", "c:3"]}
    worker_0 = role(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    chief = role(json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    assert worker_0.num_workers == 3 and worker_0.name == "worker-0"
    assert chief.is_chief and not worker_0.is_chief
    assert WorkerRole().is_chief  # one process without a cluster


def _history(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _assert_histories_close(left, right, rtol, atol=1e-6):
    assert [set(row) for row in left] == [set(row) for row in right]
    for a, b in zip(left, right, strict=True):
        for key in a:
            np.testing.assert_allclose(
                float(a[key]), float(b[key]), rtol=rtol, atol=atol, err_msg=key
            )


@pytest.mark.slow
def test_custom_loop_follows_fit_through_a_progressive_schedule(tmp_path):
    """`training_loop=custom` (the multi-worker loop, here under the default strategy) gives
    the history `fit` gives: the same log keys, per-branch ones included, and the same losses
    and accuracies over a two-stage schedule. 64 training images in batches of 16, so the
    custom loop's dropped remainder is empty and both see the same batches."""
    from trainer.config import build_config
    from trainer.task import run

    metrics = {}
    for loop in ("fit", "custom"):
        config = build_config(
            "smoke",
            {"train.augment": "none", "data.synthetic_images": 80, "train.training_loop": loop},
        )
        config.output_dir = str(tmp_path / loop)
        metrics[loop] = run(config, verbose=0)
    assert metrics["custom"]["training_loop"] == "custom"
    fit_rows = _history(tmp_path / "fit" / "history.csv")
    custom_rows = _history(tmp_path / "custom" / "history.csv")
    assert len(fit_rows) == 2 and {"val_accuracy", "val_edge_accuracy"} <= set(fit_rows[0])
    _assert_histories_close(fit_rows, custom_rows, rtol=1e-4)
    for key in ("val_accuracy", "per_branch_val_accuracy"):
        assert metrics["fit"][key] == pytest.approx(metrics["custom"][key], abs=1e-6)


def test_custom_loop_scales_the_loss_under_mixed_float16():
    """Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer at compile time;
    the custom loop uses the compiled model's own train step, so it scales and unscales the
    loss as `fit` does, and both reach the same weights."""
    import keras
    import tensorflow as tf

    from trainer.custom_loop import fit_stage_distributed
    from trainer.runtime import dtype_policy

    rng = np.random.default_rng(0)
    images = rng.random((32, 8, 8, 3), np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 32)]
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)

    def trained(loop):
        keras.utils.set_random_seed(1)
        with dtype_policy("mixed_float16"):
            model = keras.Sequential(
                [
                    keras.Input((8, 8, 3)),
                    keras.layers.Conv2D(4, 3),
                    keras.layers.GlobalAveragePooling2D(),
                    keras.layers.Dense(3, activation="softmax", dtype="float32"),
                ]
            )
            model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        if loop == "fit":
            history = model.fit(data, validation_data=data, epochs=2, verbose=0, shuffle=False)
        else:
            history = fit_stage_distributed(model, data, data, epochs=2, verbose=0)
        return history.history, model.get_weights()

    fit_history, fit_weights = trained("fit")
    loop_history, loop_weights = trained("custom")
    assert set(fit_history) == set(loop_history)
    for key, values in fit_history.items():
        np.testing.assert_allclose(values, loop_history[key], rtol=1e-3, err_msg=key)
    for a, b in zip(fit_weights, loop_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def _start(command, cwd, logs, env_extra=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.update(env_extra or {})
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=logs, stderr=subprocess.STDOUT, text=True
    )


def _start_workers(args, tmp_path, name, worker_dirs=None):
    """Two `python -m trainer.task` workers of one cluster; returns [(process, log path)]."""
    ports = [portpicker.pick_unused_port() for _ in range(2)]
    started = []
    for index in range(2):
        log = tmp_path / f"{name}-worker-{index}.log"
        extra = [f"--worker_dir={worker_dirs[index]}"] if worker_dirs and index else []
        command = [sys.executable, "-m", "trainer.task", *args, *extra]
        process = _start(command, tmp_path, log.open("w"), {"TF_CONFIG": _config(index, ports)})
        started.append((process, log))
    return started


def _wait(started, timeout=TIMEOUT):
    """Waits for every process; kills all of them if any fails or time runs out."""
    deadline = time.monotonic() + timeout
    try:
        for process, log in started:
            process.wait(timeout=max(1, deadline - time.monotonic()))
            assert process.returncode == 0, f"{log.name} failed:\n{log.read_text()[-4000:]}"
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [log.read_text() for _, log in started]


def _weights(path):
    import keras

    import cellkeras.models.registry  # noqa: F401  registers the model classes for loading

    return keras.saving.load_model(path).get_weights()


TINY = [
    "--preset=smoke",
    "--augment=none",
    "--model=wide_shallow",
    "--synthetic_images=56",
    "--batch_size=8",
]

REFERENCE = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer.config import build_config
from trainer.task import run
config = build_config("smoke", {
    "train.augment": "none", "train.model": "wide_shallow", "data.synthetic_images": 56,
    "train.batch_size": 8, "train.schedule": sys.argv[2], "train.distribution": "mirrored",
    "train.training_loop": "custom"})
config.output_dir = sys.argv[1]
run(config, verbose=0)
"""


@pytest.mark.slow
def test_two_workers_train_in_sync_like_two_replicas_in_one_process(tmp_path):
    """Two localhost workers (one replica each, per-replica batch 8, global batch 16) finish,
    end with the same weights, and follow the loss of one process running the same custom loop
    on two logical CPUs (MirroredStrategy, per-replica batch 8): the comparable run, since both
    split every global batch of 16 into the same two halves of 8, so the per-replica batch-norm
    statistics and the all-reduced gradients match (`fit` on one device with batch 16 would
    normalize over 16 images and differ). 44 training images: each epoch drops the last 12 as
    a partial global batch, in both runs."""
    out, kept = tmp_path / "run", tmp_path / "worker-1-kept"
    schedule = "16:2"
    args = [*TINY, f"--schedule={schedule}", "--distribution=multi_worker", f"--output_dir={out}"]
    workers = _start_workers(args, tmp_path, "sync", worker_dirs=[None, kept])
    reference_log = tmp_path / "reference.log"
    script = tmp_path / "reference.py"
    script.write_text(REFERENCE)
    reference = _start(
        [sys.executable, str(script), str(tmp_path / "reference"), schedule],
        tmp_path,
        reference_log.open("w"),
    )
    chief_log, worker_log = _wait([*workers, (reference, reference_log)])[:2]
    assert "2 replica(s)" in chief_log and "custom training loop" in worker_log

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["replicas"] == 2
    assert metrics["training_loop"] == "custom" and metrics["train_images"] == 44
    assert not (out / ".workers").exists()  # the worker's default folder, had it used one
    for name in ("config.json", "history.csv", "model.keras", "report.html"):
        assert (out / name).is_file(), name
    for chief, worker in zip(
        _weights(out / "model.keras"), _weights(kept / "model.keras"), strict=True
    ):
        np.testing.assert_allclose(chief, worker, rtol=0, atol=1e-6)
    rows = _history(out / "history.csv")
    assert len(rows) == 2
    _assert_histories_close(rows, _history(tmp_path / "reference" / "history.csv"), rtol=1e-4)


@pytest.mark.slow
def test_workers_resume_together_after_one_is_killed(tmp_path):
    """Kill worker 1 with SIGKILL once the chief has checkpointed an epoch; the chief loses its
    peer (it stops on its own or is killed here, as an orchestrator restarting the job would);
    rerunning both with the same command continues after the chief's last finished epoch on
    both, across a stage boundary, and the worker's scratch folder is gone at the end."""
    out = tmp_path / "run"
    args = [*TINY, "--schedule=16:1,16:2", "--distribution=multi_worker", f"--output_dir={out}"]
    first = _start_workers(args, tmp_path, "first")
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and all(p.poll() is None for p, _ in first):
            if checkpointed_epochs(out / "checkpoint") >= 1:
                break
            time.sleep(0.2)
        assert all(p.poll() is None for p, _ in first), "a worker ended before the kill"
        first[1][0].send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            first[0][0].wait(timeout=20)
    finally:
        for process, _ in first:
            if process.poll() is None:
                process.kill()
            process.wait()
    done = checkpointed_epochs(out / "checkpoint")
    assert 1 <= done < 3

    logs = _wait(_start_workers(args, tmp_path, "second"))
    for log in logs:
        assert f"after epoch {done} of 3" in log, log[-3000:]
    epochs = [row["epoch"] for row in _history(out / "history.csv")]
    assert epochs == ["0", "1", "2"]  # an epoch cut short by the kill is logged once
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["epochs"] for s in metrics["stages"]] == [1, 2]
    assert not (out / "checkpoint").exists() and not (out / ".workers").exists()


def test_training_batches_can_drop_the_partial_remainder():
    import tensorflow as tf

    from cellkeras.data import make_dataset
    from cellkeras.data.synthetic import generate_cells
    from trainer.sharding import shard_by_data

    cells = generate_cells(20, 16, seed=0)
    kept = make_dataset(cells, 16, training=True, batch_size=8, drop_remainder=True)
    assert len(kept) == 2 and [int(images.shape[0]) for images, _ in kept] == [8, 8]
    assert len(make_dataset(cells, 16, training=True, batch_size=8)) == 3
    sharded = shard_by_data(kept)
    policy = sharded.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA


def test_tfrecord_files_are_shared_by_sorted_name_and_too_few_are_named(tmp_path):
    from cellkeras.data.tfrecord import shard_tfrecord_files

    names = [tmp_path / f"part-{k}.tfrecord" for k in (3, 0, 2, 1)]
    for name in names:
        name.write_bytes(b"")
    files = sorted(str(n) for n in names)
    pattern = str(tmp_path / "part-*")
    assert shard_tfrecord_files(pattern, 0, 2) == files[0::2]
    assert shard_tfrecord_files(f"{pattern},{files[0]}", 1, 2) == files[1::2]  # no repeats
    with pytest.raises(ValueError, match=r"4 TFRecord file\(s\).*among 5 readers"):
        shard_tfrecord_files(pattern, 0, 5)


def test_workers_agree_on_classes_a_share_lacks():
    import tensorflow as tf

    from trainer.sharding import agree_on_classes

    strategy = tf.distribute.get_strategy()  # one worker: its share is everything
    assert agree_on_classes(strategy, {0: "a", 2: "c"}, 3) == ["a", "1", "c"]
    assert agree_on_classes(strategy, None, 2) == ["0", "1"]
    assert WorkerRole("worker", 1, 3, has_chief=True).worker_index == 2
    assert WorkerRole("worker", 1, 2, has_chief=False).worker_index == 1


def _sharding_lines(log):
    return [line for line in log.splitlines() if line.startswith("input sharding:")]


@pytest.mark.slow
def test_two_workers_read_only_their_own_tfrecord_files(tmp_path):
    """Four TFRecord files of unequal size (32, 6, 16, 10 images): worker 0 reads the first
    and third of the sorted names (48 images), worker 1 the others (16), and each splits and
    trains on its own share. Worker 1's files lack the last class, which it still knows (the
    model's outputs must match); its smaller share sets the steps both take per epoch. The
    validation metric is one sum over both workers' validation parts, though worker 0 runs two
    validation batches and worker 1 one, and the final evaluation gathers both parts."""
    from cellkeras.data.synthetic import generate_cells
    from cellkeras.data.tfrecord import write_tfrecords

    cells = generate_cells(64, 16, seed=0)
    last = len(cells.classes) - 1
    worker_1 = np.flatnonzero(cells.labels != last)[::3][:16]
    worker_0 = np.setdiff1d(np.arange(len(cells)), worker_1)
    parts = [worker_0[:32], worker_1[:6], worker_0[32:], worker_1[6:]]
    data = tmp_path / "records"
    files = []
    for k, part in enumerate(parts):
        files += write_tfrecords(cells.subset(part), data / f"part{k}", num_shards=1)

    out, kept = tmp_path / "run", tmp_path / "worker-1-kept"
    args = [
        *TINY[:-2],
        f"--tfrecords={data}/part*",
        "--schedule=16:1",
        "--batch_size=8",
        "--val_fraction=0.25",
        "--distribution=multi_worker",
        f"--output_dir={out}",
    ]
    logs = _wait(_start_workers(args, tmp_path, "files", worker_dirs=[None, kept]))
    shares = []
    for log in logs:
        line = next(x for x in _sharding_lines(log) if x.startswith("input sharding: file"))
        shares.append(json.loads(line.split(" · ", 2)[2]))
    assert [s["files"] for s in shares] == [files[0::2], files[1::2]]
    assert [s["images"] for s in shares] == [48, 16]
    assert all(s["policy"] == "file" and s["total_files"] == 4 for s in shares)

    metrics = [json.loads((d / "metrics.json").read_text()) for d in (out, kept)]
    assert metrics[0]["classes"] == metrics[1]["classes"] == cells.classes
    assert [m["train_images"] for m in metrics] == [48, 48]  # 36 + 12: each split its own
    for log in logs:
        assert "all workers [1, 4]: agreed 1 step(s) per epoch" in log, _sharding_lines(log)
    (row,) = _history(out / "history.csv")
    assert float(row["accuracy"]) * 16 == pytest.approx(round(float(row["accuracy"]) * 16))
    # The final evaluation (metrics.json) gathers both workers' parts (12 + 4 images): on the
    # final weights, the same set the last epoch's validation summed over.
    assert [m["val_images"] for m in metrics] == [16, 16]
    for m in metrics:
        assert m["val_accuracy"] == pytest.approx(float(row["val_accuracy"]), abs=1e-6)
    assert metrics[0]["per_branch_val_accuracy"] == metrics[1]["per_branch_val_accuracy"]
    for chief, worker in zip(
        _weights(out / "model.keras"), _weights(kept / "model.keras"), strict=True
    ):
        np.testing.assert_allclose(chief, worker, rtol=0, atol=1e-6)
