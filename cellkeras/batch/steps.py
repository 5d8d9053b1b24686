"""The per-file steps of the batch pipeline: plan batches, read and decode, prepare, format.

Every step with more than one output yields `(tag, value)` pairs into its one output, and the
pipeline picks each tag with its own `FlatMap(pick, tag)`, instead of Beam's tagged outputs
(`TaggedOutput` / `with_outputs`). apache-beam 2.77's Dask runner keeps a multi-output ParDo as
one Dask bag and hands all of it to the consumer of every tag: with tagged outputs, every
prediction row went to `errors.csv`. The pairs mean the same on every runner.

The steps also form the model's batches themselves: Beam's `BatchElements` emits each bundle's
last, partial batch from `finish_bundle`, and the Dask runner drops whatever `finish_bundle`
emits, which would lose up to `batch_size - 1` images per partition. `PlanBatchesFn` yields
whole batches from `process`, and the batch an image lands in depends only on its path, so the
model sees the same batches on every runner.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult

from cellkeras.batch.config import ERRORS, METRICS_NAMESPACE
from cellkeras.batch.handlers import Failure, describe
from cellkeras.batch.outputs import csv_line, write_heatmap
from cellkeras.inference.loading import ModelInfo, prepare_image_for_model
from cellkeras.io.images import ImageError, decode_raw

RUN = "run"  # PlanBatchesFn: a batch of files to read
IMAGES = "images"  # ReadDecodeFn: a batch of (path, pixels as stored)
INPUTS = "inputs"  # ModelInputFn: a batch of (path, model input)
ROWS = "rows"  # PredictionCsvFn: (path, CSV line)
RECORDS = "records"  # DetectionRecordFn: (path, COCO image record with boxes and scores)


def pick(element: tuple[str, Any], tag: str) -> Iterator[Any]:
    """The value of a `(tag, value)` pair if its tag is `tag` (for `beam.FlatMap`)."""
    if element[0] == tag:
        yield element[1]


def error(path: str, stage: str, reason: str) -> tuple[str, tuple[str, str, str]]:
    """An `errors.csv` row, tagged."""
    # Beam metrics show progress in runner UIs that have them; batch.json counts the rows.
    Metrics.counter(METRICS_NAMESPACE, "errors").inc()
    return ERRORS, (path, stage, reason)


def batches(items: Sequence[Any], batch_size: int) -> list[list[Any]]:
    """`items` in order, cut into the fewest batches of at most `batch_size`, of equal sizes
    (33 items, batch 32: 17 + 16, not 32 + 1)."""
    if not items:
        return []
    count = math.ceil(len(items) / batch_size)
    size = math.ceil(len(items) / count)
    return [list(items[k : k + size]) for k in range(0, len(items), size)]


class PlanBatchesFn(beam.DoFn):
    """(batch key, {"file": metadata, "seed": ..., task: checkpointed (path, result)}) → batches
    of files to run, and the checkpointed results of the files that need not run again.

    A file is done when the checkpoint holds it for every task; its results go on to the
    outputs (tagged by task) and it is not read again. Otherwise it runs (again) for every task
    and its partial checkpointed results are dropped, so nothing is written twice. Checkpointed
    results of a file the patterns no longer match are dropped too. The files to run go out in
    batches of at most `batch_size`, sorted by path.
    """

    def __init__(self, tasks: Sequence[str], batch_size: int):
        self._tasks = list(tasks)
        self._batch_size = batch_size

    def process(self, element: tuple[int, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        _, grouped = element
        files: dict[str, Any] = {}
        for metadata in grouped["file"]:
            files.setdefault(metadata.path, metadata)  # two patterns matching one file: one run
        saved: dict[str, dict[str, Any]] = {task: {} for task in self._tasks}
        for task in self._tasks:
            for path, result in grouped[task]:
                saved[task].setdefault(path, result)  # a retried bundle may have saved it twice
        to_run = []
        for path in sorted(files):
            if all(path in saved[task] for task in self._tasks):
                Metrics.counter(METRICS_NAMESPACE, "images_resumed").inc()
                for task in self._tasks:
                    yield task, (path, saved[task][path])
            else:
                to_run.append(files[path])
        for batch in batches(to_run, self._batch_size):
            yield RUN, batch


class ReadDecodeFn(beam.DoFn):
    """A batch of file metadata → a batch of (path, pixels as stored (H, W, C)); a file that
    cannot be read or is not an image → an error row."""

    def process(self, batch: Sequence[Any]) -> Iterator[Any]:
        images = []
        for metadata in batch:
            path = metadata.path
            try:
                data = fileio.ReadableFile(metadata).read()
            except Exception as err:  # every file system raises its own kinds
                yield error(path, "read", f"cannot be read ({describe(err)})")
                continue
            try:
                images.append((path, decode_raw(data, source=path)))
            except ImageError as err:
                yield error(path, "decode", err.reason)
            except Exception as err:  # a decoder bug must not end the run
                yield error(path, "decode", describe(err))
        if images:
            Metrics.counter(METRICS_NAMESPACE, "images_decoded").inc(len(images))
            yield IMAGES, images


class ModelInputFn(beam.DoFn):
    """A batch of (path, raw pixels) → a batch of (path, model input) as `cellkeras classify`
    prepares it; an image the model cannot take → an error row."""

    def __init__(self, info: ModelInfo):
        self._info = info

    def process(self, batch: Sequence[tuple[str, np.ndarray]]) -> Iterator[Any]:
        inputs = []
        for path, pixels in batch:
            try:
                inputs.append((path, prepare_image_for_model(pixels, self._info, path)))
            except ImageError as err:
                yield error(path, "classify", err.reason)
            except Exception as err:  # reported in errors.csv
                yield error(path, "classify", describe(err))
        if inputs:
            yield INPUTS, inputs


class PredictionCsvFn(beam.DoFn):
    """(path, PredictionResult) → (path, one line of the `classify` CSV)."""

    def __init__(self, info: ModelInfo):
        self._info = info

    def process(self, element: tuple[str, PredictionResult]) -> Iterator[Any]:
        from cellkeras.inference.classify import csv_columns, csv_values, prediction_row

        path, result = element
        if isinstance(result.inference, Failure):
            yield error(path, "classify", result.inference.reason)
            return
        row = prediction_row(path, np.asarray(result.inference), self._info.class_names())
        Metrics.counter(METRICS_NAMESPACE, "images_classified").inc()
        yield ROWS, (path, csv_line([csv_values(row)[c] for c in csv_columns(self._info)]))


class DetectionRecordFn(beam.DoFn):
    """(path, PredictionResult of `Detections`) → (path, record); optionally writes the heatmap.

    A record is plain JSON (boxes and scores as lists), so the checkpoint can hold it.
    """

    def __init__(self, out: str, save_heatmaps: bool):
        self._out = out
        self._save_heatmaps = save_heatmaps

    def process(self, element: tuple[str, PredictionResult]) -> Iterator[Any]:
        path, result = element
        found = result.inference
        if isinstance(found, Failure):
            yield error(path, "detect", found.reason)
            return
        image = result.example
        record = {
            "file_name": path,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "probability": round(float(found.probability), 4),
        }
        if self._save_heatmaps:
            try:
                record["heatmap"] = write_heatmap(self._out, path, found.heatmap)
            except Exception as err:  # the boxes are still good
                yield error(path, "heatmap", describe(err))
        record["boxes"] = np.asarray(found.boxes, np.float32).tolist()
        record["scores"] = np.asarray(found.scores, np.float32).tolist()
        Metrics.counter(METRICS_NAMESPACE, "images_detected").inc()
        yield RECORDS, (path, record)
