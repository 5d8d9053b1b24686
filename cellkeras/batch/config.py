"""What a batch run is (`BatchConfig`) and the names of what it writes to its output folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from cellkeras.inference.loading import ModelInfo
from cellkeras.io.formats import MODEL_FILE

PREDICTIONS = "predictions"
DETECTIONS = "detections"
ERRORS = "errors"
HEATMAPS = "heatmaps"
CHECKPOINT = "_checkpoint"
MANIFEST = "batch.json"
# The model the workers load: OUT is the one place they all reach.
MODEL_COPY = MODEL_FILE
ERROR_COLUMNS = ("path", "stage", "reason")
METRICS_NAMESPACE = "cellkeras.batch"
COUNTERS = ("images_decoded", "images_classified", "images_detected", "images_resumed", "errors")
RUN_FILE = "run.json"  # inside the checkpoint: what produced it, checked before resuming
SUMMARY = "summary.json"  # inside the checkpoint: what the pipeline's last step counted


@dataclasses.dataclass
class BatchConfig:
    """What `build_pipeline` needs; everything the workers use must pickle.

    Attributes:
        inputs: Beam file patterns of the images (local paths or any Beam file system).
        model: the `.keras` file to run (the launcher resolves export folders, see `run_batch`).
        info: the model's `ModelInfo` (classes, size, channels, normalization).
        out: the output folder (any Beam file system).
        detect: a `DetectConfig` to also run detection, or None.
        classify: whether to write the predictions CSV.
        save_heatmaps: with `detect`, also write each image's heatmap as a PNG.
        batch_size: the most images per model call (and per batch read and decoded at once,
            which bounds the images a worker holds for detection).
        num_shards: files per output (predictions and detections).
        detection_info: extra keys for each COCO document's `info`.
        checkpoint_every: each worker saves its finished results to `OUT/_checkpoint/` after
            this many images per task (and at the end of each bundle; on the Dask runner a
            step sees a whole partition at once, so it saves per partition).
        resume: continue a run that crashed: skip the files `OUT/_checkpoint/` holds.
        overwrite: delete a previous run's outputs in `out` first (without it, and without
            `resume`, a folder holding outputs is refused).
    """

    inputs: Sequence[str]
    model: str
    info: ModelInfo
    out: str
    detect: Any = None
    classify: bool = True
    save_heatmaps: bool = False
    batch_size: int = 32
    num_shards: int = 4
    detection_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint_every: int = 256
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: give at least one file pattern")
        for name in ("batch_size", "num_shards", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.classify and self.detect is None:
            raise ValueError("nothing to do: classify is off and no detect config was given")
        if self.save_heatmaps and self.detect is None:
            raise ValueError("save_heatmaps needs a detect config (heatmaps come from detection)")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")

    def tasks(self) -> list[str]:
        """The outputs this run writes, by name: `predictions` and/or `detections`."""
        return [t for t, on in ((PREDICTIONS, self.classify), (DETECTIONS, self.detect)) if on]

    def identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (same model, tasks and settings)."""
        return {
            "model": self.model,
            "tasks": self.tasks(),
            "columns": columns(self.info) if self.classify else None,
            "image_size": list(self.info.image_size) if self.info.image_size else None,
            "normalization": self.info.normalization,
            "detect": repr(self.detect) if self.detect is not None else None,
        }


def columns(info: ModelInfo) -> list[str]:
    """The prediction CSV's columns, those of `cellkeras classify`."""
    from cellkeras.inference.classify import csv_columns

    return csv_columns(info)
