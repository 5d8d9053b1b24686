"""The run's held-out images: the test set, how every image was assigned, and the test score.

Three splits, each with one job. Training images fit the weights. Validation images (the
source's VAL split, `--eval_tfrecords`, or `val_fraction` carved from the training images)
choose `best.keras` and are reported per stage. Test images (the source's TEST split, the
`--test_*` inputs, or `test_fraction` carved off) are scored once, by the final model, after
training: nothing during the run sees them, so their accuracy is the one estimate of how the
model does on images it was not tuned on. `split.csv` in the run folder lists every image
with its split.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

import numpy as np

from cellkeras.data import load_tfrecords
from cellkeras.data.imageset import ImageSet
from cellkeras.data.sources import check_images, load_class_folders, load_labels_csv
from cellkeras.data.splits import GAP, three_way_split
from cellkeras.evaluate import bootstrap_accuracy_interval, evaluate_branches, to_labels
from cellkeras.training.schedule import format_size
from trainer.config import RunConfig
from trainer.sharding import gather_predictions_across_workers

BOOTSTRAP_RESAMPLES = 1000


def load_test_set(config: RunConfig, classes: list[str]) -> tuple[ImageSet | None, str | None]:
    """The images of the `--test_*` input, checked and labelled with the training `classes`,
    and a description of where they came from; `(None, None)` without one.

    Raises:
        ValueError: more than one test input, or a test tree split into TRAIN/TEST itself.
        BadInputError: bad test images, or test classes that are not the training classes.
    """
    data = config.data
    given = {
        "test_dir": data.test_dir,
        "test_labels_csv": data.test_labels_csv,
        "test_tfrecords": data.test_tfrecords,
    }
    given = {name: value for name, value in given.items() if value}
    if len(given) > 1:
        raise ValueError(f"give one test input, not {sorted(given)}")
    if not given:
        return None, None
    [(name, where)] = given.items()
    skip = data.skip_bad_images
    if name == "test_dir":
        test = load_class_folders(where, classes=classes, skip_bad_images=skip)
        if test.split is not None:
            raise ValueError(
                f"--test_dir {where} is split into {sorted(set(test.split))} folders itself; "
                "pass its test folder, or pass the whole tree as --data_dir"
            )
    elif name == "test_labels_csv":
        test = load_labels_csv(where, data.image_root, classes=classes, skip_bad_images=skip)
    else:
        test = load_tfrecords(where, classes=classes)
    test, _ = check_images(test, data.channels, skip_bad_images=skip)
    if test.classes != list(classes):
        # A class dropped under skip_bad_images would renumber the labels: refuse instead.
        raise ValueError(
            f"--{name} {where} has classes {test.classes}, the training images {list(classes)}"
        )
    return test, f"--{name} {where}"


def assign_splits(
    config: RunConfig, images: ImageSet, has_val: bool, has_test: bool
) -> tuple[np.ndarray, str | None]:
    """Every source image's split ("train", "val", "test" or "gap", see `three_way_split`),
    given whether validation and test images come from elsewhere, and where the test images
    come from when they are the source's.

    Raises:
        ValueError: two test sets or two validation sets asked for at once, or no validation.
    """
    data = config.data
    source = set(images.split) if images.split is not None else set()
    if has_test and ("test" in source or data.test_fraction > 0):
        what = "a TEST folder" if "test" in source else f"test_fraction {data.test_fraction}"
        raise ValueError(f"{images.name} gives {what} and a --test_* input is given: choose one")
    if has_val and "val" in source:
        raise ValueError(
            f"{images.name} has a VAL folder and --eval_tfrecords is given: choose one"
        )
    assigned = three_way_split(
        images,
        0.0 if has_val else data.val_fraction,
        0.0 if has_test else data.test_fraction,
        seed=config.train.seed,
        val_placement=data.val_blocks,
    )
    if not has_val and not np.any(assigned == "val"):
        raise ValueError(
            f"no validation images: val_fraction is {data.val_fraction}; it must be above 0 "
            "unless the source has a VAL folder or --eval_tfrecords is given"
        )
    test_source = None
    if np.any(assigned == "test"):
        test_source = (
            f"the TEST split of {images.name}"
            if "test" in source
            else f"test_fraction {data.test_fraction} of {images.name}"
        )
    return assigned, test_source


def _identifiers(images: ImageSet, prefix: str) -> list[str]:
    """Each image's file, or `<prefix>:<index>` for images held in memory or in records."""
    if images.paths is not None:
        return list(images.paths)
    return [f"{prefix}:{i}" for i in range(len(images))]


def split_rows(
    config: RunConfig,
    images: ImageSet,
    assigned: np.ndarray,
    val_given: ImageSet | None = None,
    test_given: ImageSet | None = None,
) -> list[tuple[str, str, str]]:
    """`(path, label, split)` for every image: the source's (guard-gap frames, in no split,
    as "gap"), then those of separate validation and test inputs."""
    source = config.data.source
    if source == "auto":
        source = "tfrecords" if images.encoded is not None else "synthetic"
    parts = [(images, _identifiers(images, source), list(assigned))]
    for subset, prefix, split in (
        (val_given, "eval_tfrecords", "val"),
        (test_given, "test_tfrecords", "test"),
    ):
        if subset is not None:
            parts.append((subset, _identifiers(subset, prefix), [split] * len(subset)))
    return [
        (name, subset.classes[label], split)
        for subset, names, splits in parts
        for name, label, split in zip(names, subset.labels, splits, strict=True)
    ]


def write_split_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)


def count_splits(rows: list[tuple[str, str, str]]) -> dict[str, int]:
    names = [split for _, _, split in rows]
    return {split: names.count(split) for split in ("train", "val", "test", GAP)}


def evaluate_test(
    model: Any, inputs: Any, out: Path, final_size: tuple[int, int]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Scores the final model and every branch on the test images, once, at the final size;
    `(metrics, analysis)`, or None without test images. Writes `test/branches.json` and its
    figures; the accuracies come with percentile-bootstrap 95 % intervals (the same
    `BOOTSTRAP_RESAMPLES` resamples for every branch)."""
    if inputs.test_set is None:
        return None
    scored: dict[str, Any] = {}

    def keep(labels: np.ndarray, probs: dict[str, np.ndarray]):
        if inputs.test_is_per_worker:  # each worker holds its own part of the test images
            labels, probs = gather_predictions_across_workers(
                inputs.runtime.strategy, labels, probs
            )
        scored.update(labels=labels, probs=probs)
        return labels, probs

    analysis = evaluate_branches(
        model,
        inputs.dataset(inputs.test_set, final_size, training=False),
        inputs.images.classes,
        out / "test",
        title=f"test at {format_size(final_size)} px",
        combine=keep,
    )
    interval = functools.partial(
        bootstrap_accuracy_interval,
        scored["labels"],
        resamples=BOOTSTRAP_RESAMPLES,
        seed=inputs.config.train.seed,
    )

    def ci(name: str) -> list[float]:
        return [round(v, 4) for v in interval(to_labels(scored["probs"][name]))]

    branches = analysis["per_branch_accuracy"]
    metrics = {
        "test_source": inputs.test_source,
        "test_images": len(scored["labels"]),
        "test_accuracy": analysis["models"]["merged"]["accuracy"],
        "test_accuracy_ci": ci("merged"),
        "per_branch_test_accuracy": branches,
        "per_branch_test_accuracy_ci": {name: ci(name) for name in branches},
        "test_ci_method": f"percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples, 95 %",
    }
    return metrics, analysis
