"""TFX Trainer's module-file contract: what `trainer.task.run_fn(fn_args)` reads from `fn_args`."""

from __future__ import annotations

from typing import Any

from trainer.config import RunConfig, build_config


def config_from_fn_args(fn_args: Any) -> RunConfig:
    """The `RunConfig` for TFX Trainer's `fn_args`: TFRecords in, a model in
    `serving_model_dir` out.

    Options come from `custom_config` (any `section.field` of `RunConfig`, plus `preset`) and
    `hyperparameters` (same keys; they win).
    """
    options = {**(fn_args.custom_config or {}), **(fn_args.hyperparameters or {})}
    preset = options.pop("preset", "default")
    options.setdefault("data.source", "tfrecords")
    options["data.tfrecords"] = ",".join(fn_args.train_files)
    options["data.eval_tfrecords"] = ",".join(fn_args.eval_files)
    config = build_config(preset, options)
    config.output_dir = fn_args.model_run_dir
    config.export_dir = fn_args.serving_model_dir
    return config
