"""Classification and detection of many image files as an Apache Beam pipeline.

```
from cellkeras.batch import BatchConfig, read_results, run_batch
from cellkeras.detect import DetectConfig

config = BatchConfig(inputs=["/data/plates/**.png"], model="exports/cells", out="/data/out",
                     detect=DetectConfig.for_workflow("nuclei"))
summary = run_batch(config, ["--direct_running_mode=multi_processing", "--direct_num_workers=0"])
results = read_results("/data/out")      # shards merged: rows, COCO document, errors
```

The graph (one read and decode per file, then one branch per task):

```
MatchAll(patterns) → Reshuffle → ReadMatches → decode ─┬─► to model input → RunInference → predictions-SSSSS-of-NNNNN.csv
                                                       ├─► RunInference (detect) → detections-SSSSS-of-NNNNN.json, heatmaps/
                                                       └─► errors.csv  (path, stage, reason; from every step)
```

* Inputs are Beam file patterns (`/local/**.png`, `gs://bucket/x/*.tif`, ...), so any file system
  Beam has a plugin for works; the Reshuffle after matching lets the runner spread the files over
  its workers (without it every file would stay in the one bundle that matched them).
* A file that cannot be read or decoded, or that the model cannot take, becomes a row of
  `errors.csv` and the run goes on.
* Classification gives the same rows as `cellkeras classify` (the same decode, channel conversion,
  normalization and resize through `cellkeras.explain.loading.prepare_image_for_model`, and the
  same columns); the CSV is sharded and each shard has the header.
* Detection runs `cellkeras.detect.detect` on each image as stored, as `cellkeras detect` does.
  Each shard is a complete COCO document (ids start at 1 in each); `cellkeras.detect.merge_coco`
  (and `read_results`) joins them.

Why our own `ModelHandler` rather than Beam's `TFModelHandlerTensor`/`TFModelHandlerNumpy`:
in apache-beam 2.77 `apache_beam.ml.inference.tensorflow_inference` imports `tensorflow_hub`,
which apache-beam does not install, and its loader calls `tf.keras.models.load_model` on the
given path, which Keras 3 refuses for a SavedModel folder (our export's version folder: "File
format not supported ... the legacy SavedModel format is not supported by load_model() in
Keras 3"). Pointed at the version's `model.keras` it would load, but it would not know the
model card (input size, normalization, channels, classes), and detection needs the Keras model
itself, not the serving signature. `KerasModelHandler` loads the `.keras` file that
`load_model_for_inference` resolved in the launcher, so every worker runs the same version even
if a newer one is exported during the run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)

from cellkeras.data.images import ImageError, decode_raw
from cellkeras.explain.loading import ModelInfo, prepare_image_for_model

PREDICTIONS = "predictions"
DETECTIONS = "detections"
ERRORS = "errors"
HEATMAPS = "heatmaps"
ERROR_COLUMNS = ("path", "stage", "reason")
METRICS_NAMESPACE = "cellkeras.batch"

_ERRORS_TAG = "errors"


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
        batch_size: the most images per model call.
        num_shards: files per output (predictions and detections).
        detection_info: extra keys for each COCO document's `info`.
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

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("inputs: give at least one file pattern")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards}")
        if not self.classify and self.detect is None:
            raise ValueError("nothing to do: classify is off and no detect config was given")


# --- model handlers -------------------------------------------------------------------------


class KerasModelHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """Loads a cellkeras `.keras` model (custom layers registered, safe mode) once per worker."""

    def __init__(self, model_file: str, *, max_batch_size: int = 32, **kwargs: Any):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size, **kwargs)
        self._model_file = model_file

    def load_model(self) -> Any:
        import keras

        # Registers ParallelCNN and the custom layers, so the trainer's `.keras` files load.
        import cellkeras.models  # noqa: F401

        return keras.saving.load_model(self._model_file)

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        # The default pickles the whole batch just to measure it.
        return int(sum(np.asarray(x).nbytes for x in batch))


class ClassifyModelHandler(KerasModelHandler):
    """Class probabilities (K,) float32 per image, through `cellkeras.explain.cam.predict`."""

    def run_inference(
        self, batch: Sequence[np.ndarray], model: Any, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        from cellkeras.explain.cam import predict

        # A model without a training size takes each image at its own size: stack equal shapes.
        probabilities: list[Any] = [None] * len(batch)
        by_shape: dict[tuple, list[int]] = {}
        for k, image in enumerate(batch):
            by_shape.setdefault(image.shape, []).append(k)
        for indices in by_shape.values():
            stacked = np.stack([batch[k] for k in indices])
            for k, probs in zip(indices, predict(model, stacked, len(indices)), strict=True):
                probabilities[k] = probs
        return [
            PredictionResult(image, probs, self._model_file)
            for image, probs in zip(batch, probabilities, strict=True)
        ]

    def get_metrics_namespace(self) -> str:
        return "cellkeras_classify"


class DetectModelHandler(KerasModelHandler):
    """`cellkeras.detect.detect` per image; its `DetectError` is returned, not raised.

    One image the detector refuses (too small for the window, wrong channels) must not fail
    the other images of its batch, so the error travels as the inference and is routed to the
    errors output downstream.
    """

    def __init__(
        self,
        model_file: str,
        config: Any,
        channels: int | None,
        class_names: Sequence[str] | None,
        **kwargs: Any,
    ):
        super().__init__(model_file, **kwargs)
        self._config = config
        self._channels = channels
        self._class_names = list(class_names) if class_names is not None else None

    def load_model(self) -> Any:
        from cellkeras.detect.pipeline import check_model

        model = super().load_model()
        check_model(model)
        return model

    def run_inference(
        self, batch: Sequence[np.ndarray], model: Any, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        from cellkeras.detect.pipeline import DetectError, detect

        results = []
        for image in batch:
            try:
                found: Any = detect(model, image, self._config, self._channels, self._class_names)
            except DetectError as err:
                found = err
            results.append(PredictionResult(image, found, self._model_file))
        return results

    def get_metrics_namespace(self) -> str:
        return "cellkeras_detect"


# --- DoFns ----------------------------------------------------------------------------------


def _error(path: str, stage: str, reason: str) -> beam.pvalue.TaggedOutput:
    Metrics.counter(METRICS_NAMESPACE, "errors").inc()
    return beam.pvalue.TaggedOutput(_ERRORS_TAG, (path, stage, reason))


class DecodeImageFn(beam.DoFn):
    """ReadableFile → (path, pixels as stored (H, W, C)); unreadable or non-image files → errors."""

    def process(self, readable: fileio.ReadableFile) -> Iterator[Any]:
        path = readable.metadata.path
        try:
            data = readable.read()
        except Exception as err:  # every file system raises its own kinds
            yield _error(path, "read", f"cannot be read ({err})")
            return
        try:
            pixels = decode_raw(data, source=path)
        except ImageError as err:
            yield _error(path, "decode", err.reason)
            return
        Metrics.counter(METRICS_NAMESPACE, "images_decoded").inc()
        yield path, pixels


class ModelInputFn(beam.DoFn):
    """(path, raw pixels) → (path, model input) as `cellkeras classify` prepares it."""

    def __init__(self, info: ModelInfo):
        self._info = info

    def process(self, element: tuple[str, np.ndarray]) -> Iterator[Any]:
        path, pixels = element
        try:
            yield path, prepare_image_for_model(pixels, self._info, path)
        except ImageError as err:
            yield _error(path, "classify", err.reason)


class PredictionCsvFn(beam.DoFn):
    """(path, PredictionResult) → one line of the `classify` CSV."""

    def __init__(self, info: ModelInfo):
        self._info = info

    def process(self, element: tuple[str, PredictionResult]) -> Iterator[str]:
        from cellkeras.explain.commands import csv_columns, csv_values, prediction_row

        path, result = element
        row = prediction_row(path, np.asarray(result.inference), self._info.class_names())
        Metrics.counter(METRICS_NAMESPACE, "images_classified").inc()
        yield _csv_line([csv_values(row)[c] for c in csv_columns(self._info)])


class DetectionRecordFn(beam.DoFn):
    """(path, PredictionResult of `Detections`) → (shard, record); optionally writes the heatmap."""

    def __init__(self, out: str, num_shards: int, save_heatmaps: bool):
        self._out = out
        self._num_shards = num_shards
        self._save_heatmaps = save_heatmaps

    def process(self, element: tuple[str, PredictionResult]) -> Iterator[Any]:
        from cellkeras.detect.pipeline import DetectError

        path, result = element
        found = result.inference
        if isinstance(found, DetectError):
            yield _error(path, "detect", str(found))
            return
        image = result.example
        record = {
            "file_name": path,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "probability": round(float(found.probability), 4),
        }
        if self._save_heatmaps:
            record["heatmap"] = _write_heatmap(self._out, path, found.heatmap)
        record["boxes"] = np.asarray(found.boxes, np.float32)
        record["scores"] = np.asarray(found.scores, np.float32)
        Metrics.counter(METRICS_NAMESPACE, "images_detected").inc()
        yield shard_of(path, self._num_shards), record


class WriteCocoShardFn(beam.DoFn):
    """(shard, records) → `detections-SSSSS-of-NNNNN.json`, one COCO document per shard.

    The shard's content is fixed by the file names in it, and records are sorted by file name,
    so a retried bundle rewrites the same bytes to the same file.
    """

    def __init__(self, out: str, num_shards: int, category: str, info: dict[str, Any]):
        self._out = out
        self._num_shards = num_shards
        self._category = category
        self._info = info

    def process(self, element: tuple[int, Iterable[Any]]) -> Iterator[str]:
        from cellkeras.detect.coco import to_coco

        shard, records = element
        records = sorted((r for r in records if r is not None), key=lambda r: r["file_name"])
        metas = [{k: v for k, v in r.items() if k not in ("boxes", "scores")} for r in records]
        document = to_coco(
            metas,
            [r["boxes"] for r in records],
            [r["scores"] for r in records],
            category=self._category,
        )
        document["info"] = dict(self._info)
        name = shard_name(self._out, DETECTIONS, shard, self._num_shards, ".json")
        with FileSystems.create(name) as f:
            f.write((json.dumps(document, indent=1) + "\n").encode("utf-8"))
        yield name


# --- helpers --------------------------------------------------------------------------------


def _csv_line(values: Sequence[Any]) -> str:
    # The csv module quotes paths holding commas or quotes, as `cellkeras classify` does.
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def shard_of(path: str, num_shards: int) -> int:
    """A shard index that is the same in every worker process (unlike the salted `hash`)."""
    return zlib.crc32(path.encode("utf-8")) % num_shards


def shard_name(out: str, prefix: str, shard: int, num_shards: int, suffix: str) -> str:
    """`OUT/PREFIX-SSSSS-of-NNNNN.SUFFIX`, Beam's default shard naming."""
    return FileSystems.join(out, f"{prefix}-{shard:05d}-of-{num_shards:05d}{suffix}")


def heatmap_name(path: str) -> str:
    """`<stem>-<crc32 of the full path>.png`: unique when two folders hold the same file name."""
    stem = PurePosixPath(path.replace("\\", "/")).stem
    return f"{stem}-{zlib.crc32(path.encode('utf-8')):08x}.png"


def _write_heatmap(out: str, path: str, heatmap: np.ndarray) -> str:
    import cv2

    from cellkeras.detect.draw import colour_heatmap

    name = heatmap_name(path)
    ok, png = cv2.imencode(".png", cv2.cvtColor(colour_heatmap(heatmap), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"{path}: OpenCV could not encode the heatmap as PNG")
    with FileSystems.create(FileSystems.join(out, HEATMAPS, name)) as f:
        f.write(png.tobytes())
    return f"{HEATMAPS}/{name}"


# --- the pipeline ---------------------------------------------------------------------------


def build_pipeline(p: beam.Pipeline, config: BatchConfig) -> dict[str, Any]:
    """Adds the batch graph to `p`; returns its output PCollections by name."""
    from cellkeras.detect.commands import category_name

    info = config.info
    decoded = (
        p
        | "Patterns" >> beam.Create(list(config.inputs))
        | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW_IF_WILDCARD)
        | "Spread" >> beam.Reshuffle()
        | "Read" >> fileio.ReadMatches()
        | "Decode" >> beam.ParDo(DecodeImageFn()).with_outputs(_ERRORS_TAG, main="images")
    )
    errors = [decoded[_ERRORS_TAG]]
    outputs: dict[str, Any] = {}

    if config.classify:
        header = _csv_line(_columns(info))
        prepared = decoded.images | "ModelInput" >> beam.ParDo(ModelInputFn(info)).with_outputs(
            _ERRORS_TAG, main="inputs"
        )
        errors.append(prepared[_ERRORS_TAG])
        handler = ClassifyModelHandler(config.model, max_batch_size=config.batch_size)
        outputs[PREDICTIONS] = (
            prepared.inputs
            | "Classify" >> RunInference(KeyedModelHandler(handler))
            | "CsvRows" >> beam.ParDo(PredictionCsvFn(info))
            | "WritePredictions"
            >> beam.io.WriteToText(
                FileSystems.join(config.out, PREDICTIONS),
                file_name_suffix=".csv",
                num_shards=config.num_shards,
                header=header,
            )
        )

    if config.detect is not None:
        handler = DetectModelHandler(
            config.model,
            config.detect,
            info.channels,
            info.classes,
            # Detection batches its windows itself; a few images per call keep memory flat.
            max_batch_size=min(config.batch_size, 4),
        )
        detected = (
            decoded.images
            | "Detect" >> RunInference(KeyedModelHandler(handler))
            | "Records"
            >> beam.ParDo(
                DetectionRecordFn(config.out, config.num_shards, config.save_heatmaps)
            ).with_outputs(_ERRORS_TAG, main="records")
        )
        errors.append(detected[_ERRORS_TAG])
        # One empty entry per shard, so every shard file is written even when it gets no image.
        every_shard = p | "Shards" >> beam.Create([(k, None) for k in range(config.num_shards)])
        outputs[DETECTIONS] = (
            (detected.records, every_shard)
            | "AllShards" >> beam.Flatten()
            | "GroupShards" >> beam.GroupByKey()
            | "WriteDetections"
            >> beam.ParDo(
                WriteCocoShardFn(
                    config.out,
                    config.num_shards,
                    category_name(info.classes),
                    {"model": info.source, **config.detection_info},
                )
            )
        )

    outputs[ERRORS] = (
        errors
        | "AllErrors" >> beam.Flatten()
        | "ErrorRows" >> beam.Map(_csv_line)
        | "WriteErrors"
        >> beam.io.WriteToText(
            FileSystems.join(config.out, ERRORS),
            file_name_suffix=".csv",
            num_shards=1,
            shard_name_template="",
            header=_csv_line(ERROR_COLUMNS),
        )
    )
    return outputs


def _columns(info: ModelInfo) -> list[str]:
    from cellkeras.explain.commands import csv_columns

    return csv_columns(info)


def check_inputs(patterns: Sequence[str]) -> int:
    """The number of files the patterns match, in the launcher, before any worker starts.

    Raises:
        FileNotFoundError: naming the first pattern that matches nothing (a typo would otherwise
            give an empty, successful run).
    """
    from apache_beam.io.filesystem import BeamIOError

    total = 0
    for pattern in patterns:
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except BeamIOError as err:
            raise FileNotFoundError(f"input pattern {pattern!r} cannot be matched: {err}") from None
        files = [m for m in found if not m.path.endswith("/")]
        if not files:
            raise FileNotFoundError(f"input pattern {pattern!r} matches no files")
        total += len(files)
    return total


def run_batch(config: BatchConfig, pipeline_args: Sequence[str] = ()) -> dict[str, int]:
    """Runs the pipeline to the end and returns its counters.

    Args:
        config: the `BatchConfig`.
        pipeline_args: Beam pipeline options (`--runner=...`, `--direct_num_workers=...`, ...);
            the DirectRunner when no runner is named.

    Returns:
        `images_decoded`, `images_classified`, `images_detected` and `errors` (error rows; a
        file the model cannot take fails once per task), as the runner reports them.
    """
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(list(pipeline_args))
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, config)
    # Leaving the `with` block ran the pipeline and waited for it.
    result = p.result
    counters = {"images_decoded": 0, "images_classified": 0, "images_detected": 0, "errors": 0}
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    for counter in query["counters"]:
        # Committed values where the runner has them; the DirectRunner reports attempted only.
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] += int(value or 0)
    return counters


# --- reading the outputs back ---------------------------------------------------------------


@dataclasses.dataclass
class BatchResults:
    """A finished run's outputs, shards merged.

    Attributes:
        rows: the prediction rows (dicts with the `classify` CSV's columns), sorted by path.
        detections: one COCO document of every detection shard (None when detection was off).
        errors: `{path, stage, reason}` rows.
    """

    rows: list[dict[str, str]]
    detections: dict[str, Any] | None
    errors: list[dict[str, str]]


def _matching(pattern: str) -> list[str]:
    found = FileSystems.match([pattern])[0].metadata_list
    return sorted(m.path for m in found)


def _read_text(path: str) -> str:
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def read_results(out: str) -> BatchResults:
    """Reads and merges the shards a run wrote to `out` (any Beam file system).

    Raises:
        FileNotFoundError: when `out` holds no `errors.csv` (no finished run).
    """
    from cellkeras.detect.coco import merge_coco

    error_file = FileSystems.join(out, f"{ERRORS}.csv")
    if not FileSystems.exists(error_file):
        raise FileNotFoundError(f"{error_file} does not exist: no finished batch run in {out}")
    rows: list[dict[str, str]] = []
    for shard in _matching(FileSystems.join(out, f"{PREDICTIONS}-*-of-*.csv")):
        rows.extend(csv.DictReader(io.StringIO(_read_text(shard))))
    rows.sort(key=lambda r: r["path"])
    shards = _matching(FileSystems.join(out, f"{DETECTIONS}-*-of-*.json"))
    detections = merge_coco([json.loads(_read_text(s)) for s in shards]) if shards else None
    errors = list(csv.DictReader(io.StringIO(_read_text(error_file))))
    return BatchResults(rows, detections, errors)
