"""TFX Trainer's module-file contract: what `trainer.task.run_fn(fn_args)` reads from `fn_args`.

As TFX's own examples do (the penguin example's `model.save(fn_args.serving_model_dir)`), the
SavedModel goes at `serving_model_dir` itself, where the Evaluator and Pusher read it, not into
a version folder under it. Nothing here touches environment variables: a module file is
imported into TFX's own process.
"""

from __future__ import annotations

import math
from typing import Any

from cellkeras.training import DEFAULT_SCHEDULE, parse_schedule, total_epochs
from trainer.config import RunConfig, build_config


def config_from_fn_args(fn_args: Any) -> RunConfig:
    """The `RunConfig` for TFX Trainer's `fn_args`: TFRecords in, a model in
    `serving_model_dir` out.

    Options come from `custom_config` (any `section.field` of `RunConfig`, plus `preset`; an
    unknown key is an error naming the known ones) and `hyperparameters` (same keys; they
    win). `train_files` train and `eval_files` validate (choose `best.keras`); a test set for
    one final score is `data.test_tfrecords` in `custom_config`.

    `train_steps` is the run's total number of training steps, as in TFX (the penguin example
    fits one epoch of that many steps). A progressive schedule has several epochs, so the
    steps are spread over them: each epoch runs `ceil(train_steps / epochs)` steps, repeating
    the training images as needed (so a run takes up to epochs - 1 steps more than asked;
    under stage-wise training every branch and the head run the schedule's epochs each).
    `eval_steps` is the number of validation batches after each epoch; the final evaluation
    scores every eval image. Both unset (None or 0): one pass over the images per epoch.
    """
    options = {**(fn_args.custom_config or {}), **(fn_args.hyperparameters or {})}
    preset = options.pop("preset", "default")
    options.setdefault("data.source", "tfrecords")
    options["data.tfrecords"] = ",".join(fn_args.train_files)
    options["data.eval_tfrecords"] = ",".join(fn_args.eval_files)
    config = build_config(preset, options)
    train_steps = getattr(fn_args, "train_steps", None)
    if train_steps:
        epochs = total_epochs(parse_schedule(config.train.schedule or DEFAULT_SCHEDULE))
        config.train.steps_per_epoch = math.ceil(train_steps / epochs)
    eval_steps = getattr(fn_args, "eval_steps", None)
    if eval_steps:
        config.train.validation_steps = int(eval_steps)
    config.output_dir = fn_args.model_run_dir
    config.export_dir = fn_args.serving_model_dir
    config.export_versioned = False
    return config
