"""The trainer's command-line flags, read once into a `RunConfig`."""

from __future__ import annotations

from typing import Any

from trainer.config import (
    LATER_STAGE_MODES,
    PRESETS,
    TRAINING_MODES,
    RunConfig,
    build_config,
)
from trainer.runtime import DISTRIBUTIONS, MIXED_PRECISION_MODES, TRAINING_LOOPS


def config_from_flags() -> RunConfig:
    """Reads the absl flags (only here) into a `RunConfig`."""
    from absl import flags

    f = flags.FLAGS
    overrides: dict[str, Any] = {}
    for flag_name, key in _FLAG_FIELDS.items():
        if f[flag_name].present:
            overrides[key] = f[flag_name].value
    if f.skip_bad_images:
        overrides["data.skip_bad_images"] = True
    config = build_config(f.preset, overrides)
    if f.output_dir:
        config.output_dir = f.output_dir
    if f.export_dir:
        config.export_dir = f.export_dir
    if f.worker_dir:
        config.worker_dir = f.worker_dir
    return config


_FLAG_FIELDS = {
    "data_dir": "data.data_dir",
    "labels_csv": "data.labels_csv",
    "image_root": "data.image_root",
    "tfrecords": "data.tfrecords",
    "source": "data.source",
    "channels": "data.channels",
    "balance": "data.balance",
    "synthetic_images": "data.synthetic_images",
    "val_fraction": "data.val_fraction",
    "model": "train.model",
    "augment": "train.augment",
    "schedule": "train.schedule",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "mixed_precision": "train.mixed_precision",
    "distribution": "train.distribution",
    "training_loop": "train.training_loop",
    "seed": "train.seed",
    "deterministic": "train.deterministic",
    "later_stages": "train.later_stages",
    "training_mode": "train.training_mode",
    "head_epochs": "train.head_epochs",
    "branch_loss_weight": "train.branch_loss_weight",
}


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("preset", "default", f"Named configuration: {', '.join(PRESETS)}.")
    flags.DEFINE_string(
        "data_dir", None, "Class-folder tree root/<class>/<image> (or root/<split>/<class>/...)."
    )
    flags.DEFINE_string("labels_csv", None, "CSV of filename,label rows.")
    flags.DEFINE_string("image_root", None, "Folder the CSV's filenames are relative to.")
    flags.DEFINE_string("tfrecords", None, "TFRecord files (glob, folder or comma-separated).")
    flags.DEFINE_string("source", None, "Data source; default: chosen from the flags given.")
    flags.DEFINE_integer("channels", None, "Image channels (1 grey, 3 RGB); default: as stored.")
    flags.DEFINE_enum("balance", None, ["oversample"], "Class balancing in tf.data.")
    flags.DEFINE_integer("synthetic_images", None, "Number of synthetic images.")
    flags.DEFINE_float("val_fraction", None, "Validation share when the source has no split.")
    flags.DEFINE_string("model", None, "Registered model name (cellkeras.models.list_models()).")
    flags.DEFINE_string("augment", None, "Augmentation preset.")
    flags.DEFINE_string("schedule", None, "Progressive schedule SIZE:EPOCHS[,SIZE:EPOCHS...].")
    flags.DEFINE_integer("batch_size", None, "Per-replica batch size.")
    flags.DEFINE_float("learning_rate", None, "Peak learning rate (cosine decay over the run).")
    flags.DEFINE_enum("mixed_precision", None, list(MIXED_PRECISION_MODES), "Dtype policy.")
    flags.DEFINE_enum(
        "distribution",
        None,
        list(DISTRIBUTIONS),
        "tf.distribute strategy; multi_worker reads the cluster from TF_CONFIG.",
    )
    flags.DEFINE_enum(
        "training_loop",
        None,
        list(TRAINING_LOOPS),
        "auto: Keras fit, the custom loop under multi_worker; custom: that loop everywhere.",
    )
    flags.DEFINE_integer("seed", None, "Random seed (data, split, weights).")
    flags.DEFINE_boolean(
        "deterministic", None, "TensorFlow op determinism: same seed, same result (slower)."
    )
    flags.DEFINE_enum(
        "later_stages",
        None,
        list(LATER_STAGE_MODES),
        "After the first stage train everything, or only the merge head (the seed's variant).",
    )
    flags.DEFINE_enum(
        "training_mode",
        None,
        list(TRAINING_MODES),
        "joint: branches and merge head together; stagewise: each branch alone through the "
        "schedule, then the merge head on the frozen branches (the seed's recipe).",
    )
    flags.DEFINE_integer(
        "head_epochs", None, "Stage-wise: epochs of the merge head at the final size."
    )
    flags.DEFINE_float("branch_loss_weight", None, "Weight of each branch's auxiliary loss.")
    flags.DEFINE_string("output_dir", None, "Run folder (default runs/<preset>).")
    flags.DEFINE_string("export_dir", None, "Versioned SavedModel export folder.")
    flags.DEFINE_string(
        "worker_dir",
        None,
        "multi_worker: a non-chief worker's folder for its copy of the run, kept at the end "
        "(default <output_dir>/.workers/<task>-<index>, removed).",
    )
    flags.DEFINE_boolean(
        "skip_bad_images", False, "Skip unreadable images (listed in skipped.json)."
    )
