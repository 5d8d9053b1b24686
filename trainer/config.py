"""Run configuration: dataclasses built once in `trainer.task` and passed down, plus presets.

A preset is a plain dict of overrides, applied before the flags the user gave:

    python -m trainer.task                    # "default": synthetic cells, a few minutes on CPU
    python -m trainer.task --preset=smoke     # seconds: the whole path on tiny data
    python -m trainer.task --preset=embryo    # the real C. elegans stage data (devolearn video)
    python -m trainer.task --preset=nuclei    # ndev nuclei patches: the `cellkeras detect` model
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

LATER_STAGE_MODES = ("all", "head")
TRAINING_MODES = ("joint", "stagewise")


@dataclasses.dataclass
class DataConfig:
    """Where the images come from and how they are split and normalized.

    `source` is one of `cellkeras.data.sources.SOURCE_KINDS`, or "auto": chosen from the fields
    given (`data_dir` a class-folder tree, `labels_csv` a CSV, `tfrecords` TFRecord files, none
    of them the synthetic cells).
    """

    source: str = "auto"
    data_dir: str | None = None
    labels_csv: str | None = None
    image_root: str | None = None
    tfrecords: str | None = None
    eval_tfrecords: str | None = None
    synthetic_images: int = 3000
    synthetic_size: int = 96
    synthetic_difficulty: float = 1.0
    channels: int | None = None
    normalization: str = "range"
    val_fraction: float = 0.2
    balance: str | None = None
    skip_bad_images: bool = False


@dataclasses.dataclass
class TrainConfig:
    """The model and how it is trained."""

    model: str = "parallel_small"
    augment: str = "basic"
    schedule: str = "48:3,64:3,96:2"
    batch_size: int = 32
    learning_rate: float = 3e-3
    # Weight of each branch's auxiliary loss: it gives every branch a trained head of its own,
    # so per-branch accuracy means something (0 trains the merged output alone).
    branch_loss_weight: float = 0.3
    # "joint": all branches and the merge head together, every stage. "stagewise": the seed's
    # recipe, which did better in scripts/experiment_parallel.py: each branch alone through the
    # whole schedule, then the merge head on the frozen branches for `head_epochs` at the final
    # size.
    training_mode: str = "joint"
    head_epochs: int = 3
    # Joint mode, after the first stage: "all" trains the whole model on; "head" freezes the
    # branches and retrains the merge head at the larger sizes (the seed's variant).
    later_stages: str = "all"
    mixed_precision: str = "auto"
    distribution: str = "auto"
    # "auto": Keras' fit, except under multi_worker (where Keras 3's fit fails,
    # keras-team/keras#20585) the custom loop in trainer.distributed; "custom" forces that loop
    # on one machine too (to check it against fit); "fit" refuses multi_worker.
    training_loop: str = "auto"
    seed: int = 0
    # TensorFlow's op determinism for the run (trainer.runtime.op_determinism): two runs with
    # the same seed give the same weights and metrics on one machine, at some cost in time
    # (docs/BENCHMARKS.md); use it whenever two settings are compared on one run each.
    # Data order and augmentation are seeded per epoch either way.
    deterministic: bool = False


@dataclasses.dataclass
class RunConfig:
    """Everything one run needs; saved as `config.json` in the run folder."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    preset: str = "default"
    output_dir: str = ""
    export_dir: str | None = None
    # Where a non-chief worker of a multi-worker run writes its copy of the run (checkpoints,
    # model): default `<output_dir>/.workers/<task>-<index>`, removed when the run ends; a
    # folder given here is kept (to inspect or compare a worker's weights).
    worker_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


# Overrides as "section.field": value. Docstring-level cost notes are for a 2-core CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "smoke": {
        "data.synthetic_images": 96,
        "data.synthetic_size": 32,
        "train.schedule": "16:1,24:1",
        "train.batch_size": 16,
    },
    # At the video's 2:3 aspect and one size: on this small set, smaller first stages cost
    # accuracy (scripts/bench_progressive.py: 0.81 at 64x96:8 against 0.70 progressive).
    "embryo": {
        "data.source": "embryo",
        "data.channels": 1,
        "train.schedule": "64x96:8",
        "train.batch_size": 16,
    },
    # Nucleus-vs-background 32 px patches of the ndev scratch-assay sample (all 10 frames; the
    # validation split holds out whole frames). Patch labels only: the classifier that
    # `cellkeras detect` turns into nucleus boxes by sliding it over whole images. Percentile
    # normalization per patch, as the export's serving signature repeats in-graph, so any
    # fluorescence image's intensity scale works. About 2 minutes on a 2-core CPU.
    "nuclei": {
        "data.source": "nuclei",
        "data.channels": 1,
        "data.normalization": "percentile",
        "train.schedule": "32:10",
        "train.batch_size": 32,
    },
}


def build_config(preset: str = "default", overrides: dict[str, Any] | None = None) -> RunConfig:
    """A `RunConfig` from a preset, then `overrides` ("section.field" or top-level keys).

    Raises:
        ValueError: for an unknown preset or field; the message lists the known ones.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    config = RunConfig(preset=preset)
    for key, value in {**PRESETS[preset], **(overrides or {})}.items():
        section, _, field = key.rpartition(".")
        target = getattr(config, section) if section else config
        if section not in ("", "data", "train") or not hasattr(target, field):
            known = [f"data.{f.name}" for f in dataclasses.fields(DataConfig)]
            known += [f"train.{f.name}" for f in dataclasses.fields(TrainConfig)]
            raise ValueError(f"unknown config field {key!r}; known: {', '.join(known)}")
        setattr(target, field, value)
    if not config.output_dir:
        config.output_dir = str(Path("runs") / preset)
    return config
