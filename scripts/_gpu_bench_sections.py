"""The TensorFlow sections of scripts/gpu_bench.py: training, input pipeline, FluidDistortion,
Grad-CAM and serving. Each takes the plan and a `Budget` and returns a JSON-ready dict.

TensorFlow is imported inside the functions: scripts/gpu_bench.py decides first whether it can
be imported at all, and configures the GPU (memory growth) before anything here runs.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _gpu_bench_host import Budget, error_result, log, measure, not_run

CLASSES = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def device_name() -> str:
    import tensorflow as tf

    return "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"


def _sync(tensor: Any) -> None:
    """Waits for `tensor` (and so for everything queued before it on the device's stream)."""
    np.asarray(tensor[(slice(0, 1),) * len(tensor.shape)])


def dtype_policy(name: str):
    """The trainer's own policy switch (imported late: the host sections run without Keras)."""
    from trainer.runtime import dtype_policy as trainer_dtype_policy

    return trainer_dtype_policy(name)


def _fresh_session() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


def _shown(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('reason', '')}"
    return f"{row['images_per_s']:,.0f} img/s (compile {row['compile_s']:.1f} s)"


def _rows_status(rows: list[dict]) -> str:
    if rows and all(r["status"] == "ok" for r in rows):
        return "ok"
    return "partial" if any(r["status"] == "ok" for r in rows) else "error"


# -- training ---------------------------------------------------------------------------------


def _measure_fit(trainer, data, batch: int, seconds: float, budget: Budget, repeats: int = 3):
    """`measure` for `fit`, timed between epoch ends (where Keras fetches the epoch's metrics,
    so the device has finished): one fit of 3 one-step epochs (the first is tracing and
    compilation), then one of `repeats + 1` epochs of as many steps as fill `seconds`, whose
    first epoch (fit's start-up) is dropped. Inside an epoch the steps run as in the trainer.
    """
    import keras

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times = [time.perf_counter()]

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter())

    clock = Clock()

    def fit(steps: int, epochs: int) -> list[float]:
        trainer.fit(data, steps_per_epoch=steps, epochs=epochs, verbose=0, shuffle=False,
                    callbacks=[clock])  # fmt: skip
        trainer.optimizer.iterations.numpy()
        return list(np.diff(clock.times))

    warm = fit(1, 3)
    step_s = max(min(warm[1:]), 1e-6)
    seconds = max(min(seconds, 0.6 * budget.left()), 3 * step_s)
    steps = int(max(2, min(100_000, round(seconds / repeats / step_s))))
    rates = [steps * batch / t for t in fit(steps, repeats + 1)[1:]]
    return {
        "images_per_s": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "compile_s": warm[0],
        "unit_ms": 1000.0 * batch / statistics.median(rates),
        "units_per_repeat": steps,
        "repeats": repeats,
    }


def _train_row(name: str, size: int, precision: str, xla: bool, plan, budget: Budget) -> dict:
    """Images/s of the trainer's step: `joint_trainer` (Adam, auxiliary branch losses; the
    plain classifier where that cannot be built) fitted on one cached random batch that
    tf.data hands over from host memory every step."""
    import keras
    import tensorflow as tf

    from cellkeras.models import create_model
    from cellkeras.training import compile_classifier, joint_trainer

    batch = plan.batch_size
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 3), dtype=np.float32)
    y = np.eye(len(CLASSES), dtype=np.float32)[rng.integers(0, len(CLASSES), batch)]
    with dtype_policy(precision):
        keras.utils.set_random_seed(0)
        model = create_model(name, len(CLASSES), channels=3)
        step = "joint_trainer"
        try:
            trainer, to_labels = joint_trainer(
                model, keras.optimizers.Adam(1e-3), 0.3, jit_compile=xla
            )
        except ValueError as err:  # e.g. analysis_model cannot reach a branch's logits
            why = str(err).split(". ")[0][:100]
            step = f"classifier only, no branch losses (joint_trainer cannot be built: {why})"
            trainer = compile_classifier(model, keras.optimizers.Adam(1e-3), jit_compile=xla)
            to_labels = lambda data: data  # noqa: E731
        data = to_labels(tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2))

        result = _measure_fit(trainer, data, batch, plan.seconds, budget)
    return {"status": "ok", "step": step, "parameters": int(model.count_params()), **result}


def training(plan, budget: Budget, on_row: Callable[[dict], None]) -> dict:
    """Every (model, size, precision, XLA) of `plan.training_configs`, most important first;
    configurations the budget leaves no time for are listed as not run."""
    from cellkeras.models import list_models

    rows: list[dict] = []
    for name, size, precision, xla in plan.training_configs:
        key = {"model": name, "size": size, "precision": precision, "xla": xla}
        if name not in list_models():
            row = not_run(f"unknown model; registered: {', '.join(list_models())}")
        elif budget.left() < plan.min_config_s:
            row = not_run("section time budget spent")
        else:
            try:
                row = _train_row(name, size, precision, xla, plan, budget)
            except Exception as err:  # one configuration failing must not end the section
                row = error_result(err)
            finally:
                _fresh_session()
        rows.append({**key, **row})
        log(f"  train {name} {size}px {precision} XLA {'on' if xla else 'off'}: {_shown(row)}")
        on_row({"status": "partial", "batch_size": plan.batch_size, "rows": rows})
    return {"status": _rows_status(rows), "batch_size": plan.batch_size, "rows": rows}


# -- FluidDistortion on the device ------------------------------------------------------------


def _fluid_layers() -> dict[str, Callable[[], Any]]:
    from cellkeras.augment import FluidDistortion, build_augmenter

    return {
        "mesh 4x4 + flips + rotate 15": lambda: FluidDistortion(
            mode="mesh", flip_horizontal=True, flip_vertical=True, rotation=15.0, seed=1
        ),
        "`fluid` preset (mesh + flips + crop 0.9)": lambda: build_augmenter("fluid", seed=1),
    }


def _compiled_augment(layer: Any) -> Callable:
    """The layer inside a tf.function, as inside a compiled step (no per-call Python)."""
    import tensorflow as tf

    return tf.function(lambda images: layer(images, training=True), reduce_retracing=True)


def fluid(plan, budget: Budget) -> dict:
    """FluidDistortion images/s on the device: float32 [0, 1] batches already there, three
    input sets in turn (so repeated calls do not just read the cache)."""
    import tensorflow as tf

    rows = []
    for label, make in _fluid_layers().items():
        for size in plan.fluid_sizes:
            key = {"layer": label, "size": size, "batch": plan.fluid_batch}
            if budget.left() < 5:
                rows.append({**key, **not_run("section time budget spent")})
                continue
            try:
                with tf.device(device_name()):
                    augment = _compiled_augment(make())
                    inputs = [
                        tf.random.uniform((plan.fluid_batch, size, size, 3), seed=i)
                        for i in range(3)
                    ]

                    def run(n: int, augment=augment, inputs=inputs) -> None:
                        for i in range(n):
                            out = augment(inputs[i % 3])
                        _sync(out)

                    rows.append(
                        {
                            **key,
                            "status": "ok",
                            **measure(run, plan.fluid_batch, plan.seconds, budget),
                        }
                    )
            except Exception as err:
                rows.append({**key, **error_result(err)})
            log(f"  fluid {label} {size}px: {_shown(rows[-1])}")
    return {"status": _rows_status(rows), "device": device_name(), "rows": rows}


# -- input pipeline against the step ----------------------------------------------------------


def _cell_pngs(n: int, size: int):
    """An encoded-PNG `ImageSet` of n synthetic blood-smear cells (at most 128 distinct ones,
    repeated: generating costs ~8 ms an image), decoded again every epoch."""
    import cv2

    from cellkeras.data.imageset import ImageSet
    from cellkeras.data.synthetic import generate_cells

    cells = generate_cells(min(n, 128), size, seed=0)
    encoded = [
        cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
        for image in cells.images
    ]
    order = np.arange(n) % len(encoded)
    return ImageSet(
        classes=cells.classes,
        labels=cells.labels[order],
        encoded=[encoded[i] for i in order],
        name="cells",
    )


def _pipeline_variants(plan) -> dict[str, tuple[Any, Any]]:
    """name: (dataset, augmentation run on the device per batch or None)."""
    from cellkeras.augment import build_augmenter
    from cellkeras.data import make_dataset

    images = _cell_pngs(plan.pipeline_images, plan.pipeline_size)

    def dataset(augment=None):
        return make_dataset(
            images, plan.pipeline_size, training=True, batch_size=plan.batch_size, channels=3,
            augment=augment, cache_bytes=0,
        ).repeat()  # fmt: skip

    return {
        "decode + resize (tf.data, host)": (dataset(), None),
        "decode + `fluid` augment in tf.data (host cores, where the trainer runs it)": (
            dataset(build_augmenter("fluid", seed=0)),
            None,
        ),
        "decode in tf.data + `fluid` augment on the device": (
            dataset(),
            _compiled_augment(build_augmenter("fluid", seed=0)),
        ),
    }


def pipeline(plan, budget: Budget) -> dict:
    """Batches per second out of `make_dataset` (PNG decode every epoch, no cache), with and
    without the `fluid` augmentation, against which the summary sets the training step."""
    import tensorflow as tf

    rows = []
    for label, (data, on_device) in _pipeline_variants(plan).items():
        if budget.left() < 5:
            rows.append({"pipeline": label, **not_run("section time budget spent")})
            continue
        iterator, run = iter(data), None
        try:

            def run(n: int, iterator=iterator, on_device=on_device) -> None:
                for _ in range(n):
                    images, _labels = next(iterator)
                    if on_device is not None:
                        with tf.device(device_name()):
                            images = on_device(images)
                _sync(images)

            rows.append(
                {
                    "pipeline": label,
                    "status": "ok",
                    **measure(run, plan.batch_size, plan.seconds, budget),
                }
            )
        except Exception as err:
            rows.append({"pipeline": label, **error_result(err)})
        finally:
            # A live iterator keeps prefetching and would steal the next one's cores; `run`
            # holds it too.
            iterator = run = None
            gc.collect()
        log(f"  pipeline {label}: {_shown(rows[-1])}")
    return {
        "status": _rows_status(rows),
        "size": plan.pipeline_size,
        "batch": plan.batch_size,
        "images": plan.pipeline_images,
        "rows": rows,
    }


# -- Grad-CAM and serving ---------------------------------------------------------------------


def gradcam_section(plan, budget: Budget) -> dict:
    """`cellkeras.explain.gradcam` over the same images in batches of each `plan.gradcam_batches`
    (a batch of 1 is one call per image): parallel_small, float32, untrained weights."""
    import tensorflow as tf

    from cellkeras.explain import gradcam
    from cellkeras.models import create_model

    size, n = plan.small_size, plan.gradcam_images
    images = np.random.default_rng(0).random((n, size, size, 3), dtype=np.float32)
    rows = []
    with tf.device(device_name()):
        model = create_model("parallel_small", len(CLASSES), channels=3)
        for batch in plan.gradcam_batches:
            if budget.left() < 3:
                rows.append({"batch": batch, **not_run("section time budget spent")})
                continue

            def run(k: int, batch=batch) -> None:
                for _ in range(k):
                    gradcam(model, images, batch_size=batch)  # returns numpy: synced

            rows.append(
                {"batch": batch, "status": "ok", **measure(run, n, plan.seconds, budget, warmup=1)}
            )
            log(f"  gradcam batch {batch}: {_shown(rows[-1])}")
    _fresh_session()
    return {
        "status": _rows_status(rows),
        "model": "parallel_small",
        "size": size,
        "images": n,
        "rows": rows,
    }


def serving(plan, budget: Budget) -> dict:
    """`export_model` of parallel_small, loaded with `tf.saved_model.load` as TF Serving would:
    `serving_default` on one batch of `plan.serving_batch` PNGs against that many single-image
    calls (each fetched, as a client waits for its answer), and `serving_images` on floats."""
    import tensorflow as tf

    from cellkeras.models import create_model
    from cellkeras.serving.export import export_model

    size, batch = plan.small_size, plan.serving_batch
    png = _cell_pngs(1, size).encoded[0]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        model = create_model("parallel_small", len(CLASSES), channels=3)
        path = export_model(model, root, classes=CLASSES, image_size=size, channels=3)
        loaded = tf.saved_model.load(str(path))
        serve, serve_images = (loaded.signatures[k] for k in ("serving_default", "serving_images"))
        many, one = tf.constant([png] * batch), tf.constant([png])
        floats = tf.constant(np.random.default_rng(0).random((batch, size, size, 3), np.float32))
        calls = {
            f"serving_default, 1 call x batch {batch}": lambda: [serve(image_bytes=many)],
            f"serving_default, {batch} calls x batch 1": lambda: [
                serve(image_bytes=one)["probabilities"].numpy() for _ in range(batch)
            ],
            f"serving_images (decoded floats), batch {batch}": lambda: [
                serve_images(images=floats)
            ],
        }
        for label, call in calls.items():
            if budget.left() < 3:
                rows.append({"call": label, **not_run("section time budget spent")})
                continue

            def run(k: int, call=call) -> None:
                for _ in range(k):
                    out = call()[-1]
                np.asarray(out["probabilities"] if isinstance(out, dict) else out)

            rows.append(
                {"call": label, "status": "ok", **measure(run, batch, plan.seconds, budget)}
            )
            log(f"  serving {label}: {_shown(rows[-1])}")
    _fresh_session()
    return {"status": _rows_status(rows), "model": "parallel_small", "size": size, "rows": rows}
