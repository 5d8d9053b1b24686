"""Classification and detection of many image files as an Apache Beam pipeline.

```
from cellkeras.batch import BatchConfig, read_results, run_batch
from cellkeras.detect import DetectConfig

config = BatchConfig(inputs=["/data/plates/**.png"], model="exports/cells/3/model.keras",
                     info=info, out="/data/out", detect=DetectConfig.for_workflow("nuclei"))
summary = run_batch(config, ["--direct_running_mode=multi_processing", "--direct_num_workers=0"])
results = read_results("/data/out")      # shards merged: rows, COCO document, errors
```

The graph (one read and decode per file, then one branch per task):

```
MatchAll(patterns) ─┐
_checkpoint/*.jsonl ┴► CoGroupByKey(path) ─► to run ─► ReadMatches → decode ─┬─► model input → RunInference → checkpoint ─► predictions-SSSSS-of-NNNNN.csv
                                         └─► already done (resume) ──────────┼──────────────────────────────────────────┘
                                                                             ├─► RunInference (detect) → checkpoint ─► detections-SSSSS-of-NNNNN.json, heatmaps/
                                                                             └─► errors.csv  (path, stage, reason; from every step)
```

* Inputs are Beam file patterns (`/local/**.png`, `gs://bucket/x/*.tif`, ...), so any file system
  Beam has a plugin for works. Grouping the matched files by path drops a file that two patterns
  match, and the shuffle spreads the files over the runner's workers (without it every file
  would stay in the one bundle that matched them).
* A file that cannot be read or decoded, that the model cannot take or that makes it fail, becomes
  a row of `errors.csv` and the run goes on.
* Classification gives the same rows as `cellkeras classify` (the same decode, channel conversion,
  normalization and resize through `cellkeras.inference.loading.prepare_image_for_model`, and the
  same columns); the CSV is sharded and each shard has the header.
* Detection runs `cellkeras.detect.detect` on each image as stored, as `cellkeras detect` does.
  Each shard is a complete COCO document (ids start at 1 in each); `cellkeras.detect.merge_coco`
  (and `read_results`) joins them.
* Crashes. Beam writes the sharded outputs only when every image is done, so a run that dies
  at 90 % (a killed worker, a preempted VM, Ctrl-C) would lose everything. Each worker therefore
  also appends its finished results to `OUT/_checkpoint/` every `checkpoint_every` images
  (whole files, written under a temporary name and renamed). `resume=True` (`cellkeras batch
  --resume`) runs only the files the checkpoint does not hold for every task and merges the
  rest into the outputs; the checkpoint is deleted once the outputs and `OUT/batch.json` (the
  manifest that marks a finished run) are written.

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
import os
import time
import uuid
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

from cellkeras.inference.loading import ModelInfo, prepare_image_for_model
from cellkeras.io.images import ImageError, decode_raw

PREDICTIONS = "predictions"
DETECTIONS = "detections"
ERRORS = "errors"
HEATMAPS = "heatmaps"
CHECKPOINT = "_checkpoint"
MANIFEST = "batch.json"
MODEL_COPY = "model.keras"  # the model the workers load: OUT is the one place they all reach
ERROR_COLUMNS = ("path", "stage", "reason")
METRICS_NAMESPACE = "cellkeras.batch"
COUNTERS = ("images_decoded", "images_classified", "images_detected", "images_resumed", "errors")

_ERRORS_TAG = "errors"
_RUN_FILE = "run.json"  # inside the checkpoint: what produced it, checked before resuming


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
        checkpoint_every: each worker saves its finished results to `OUT/_checkpoint/` after
            this many images per task (and at the end of each bundle).
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
            "columns": _columns(self.info) if self.classify else None,
            "image_size": list(self.info.image_size) if self.info.image_size else None,
            "normalization": self.info.normalization,
            "detect": repr(self.detect) if self.detect is not None else None,
        }


@dataclasses.dataclass(frozen=True)
class Failure:
    """An image the model (or detector) failed on: travels as its inference, not as a crash."""

    reason: str


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


# --- model handlers -------------------------------------------------------------------------


class KerasModelHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """Loads a cellkeras `.keras` model (custom layers registered, safe mode) once per worker."""

    def __init__(self, model_file: str, *, max_batch_size: int = 32, **kwargs: Any):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size, **kwargs)
        self._model_file = model_file

    def load_model(self) -> Any:
        import tempfile

        import keras

        # Registers ParallelCNN and the custom layers, so the trainer's `.keras` files load.
        import cellkeras.models.registry  # noqa: F401  registers the model classes for loading

        if os.path.isfile(self._model_file):
            return keras.saving.load_model(self._model_file)
        # A remote worker reads the copy `run_batch` staged in OUT (gs://, s3://, hdfs://...).
        with tempfile.TemporaryDirectory() as folder:
            local = os.path.join(folder, "model.keras")
            with FileSystems.open(self._model_file) as f, open(local, "wb") as copy:
                copy.write(f.read())
            return keras.saving.load_model(local)

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        # The default pickles the whole batch just to measure it.
        return int(sum(np.asarray(x).nbytes for x in batch))


class ClassifyModelHandler(KerasModelHandler):
    """Class probabilities (K,) float32 per image, through `cellkeras.explain.cam.predict`.

    When a batch fails, its images run one at a time, and the one that fails alone gets a
    `Failure` as its inference: one bad image costs only itself, never its batch or the run.
    """

    def run_inference(
        self, batch: Sequence[np.ndarray], model: Any, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        from cellkeras.inference.predict import predict

        # A model without a training size takes each image at its own size: stack equal shapes.
        probabilities: list[Any] = [None] * len(batch)
        by_shape: dict[tuple, list[int]] = {}
        for k, image in enumerate(batch):
            by_shape.setdefault(image.shape, []).append(k)
        for indices in by_shape.values():
            try:
                found = predict(model, np.stack([batch[k] for k in indices]), len(indices))
            except Exception:  # find the image that failed, keep the others
                found = [self._one(predict, model, batch[k]) for k in indices]
            for k, probs in zip(indices, found, strict=True):
                probabilities[k] = probs
        return [
            PredictionResult(image, probs, self._model_file)
            for image, probs in zip(batch, probabilities, strict=True)
        ]

    @staticmethod
    def _one(predict: Any, model: Any, image: np.ndarray) -> Any:
        try:
            return predict(model, image[None], 1)[0]
        except Exception as err:  # reported in errors.csv
            return Failure(_reason(err))

    def get_metrics_namespace(self) -> str:
        return "cellkeras_classify"


class DetectModelHandler(KerasModelHandler):
    """`cellkeras.detect.detect` per image; a failure is returned as a `Failure`, not raised.

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
                found = Failure(str(err))
            except Exception as err:  # reported in errors.csv
                found = Failure(_reason(err))
            results.append(PredictionResult(image, found, self._model_file))
        return results

    def get_metrics_namespace(self) -> str:
        return "cellkeras_detect"


# --- DoFns ----------------------------------------------------------------------------------


def _error(path: str, stage: str, reason: str) -> beam.pvalue.TaggedOutput:
    Metrics.counter(METRICS_NAMESPACE, "errors").inc()
    return beam.pvalue.TaggedOutput(_ERRORS_TAG, (path, stage, reason))


class ResumeSplitFn(beam.DoFn):
    """(path, {"file": metadata, task: checkpointed results}) → the file to run, or its results.

    A file is done when the checkpoint holds it for every task; its results go on to the
    outputs (tagged by task) and it is not read again. Otherwise it runs (again) for every task
    and its partial checkpointed results are dropped, so nothing is written twice. Checkpointed
    results of a file the patterns no longer match are dropped too.
    """

    def __init__(self, tasks: Sequence[str]):
        self._tasks = list(tasks)

    def process(self, element: tuple[str, dict[str, Iterable[Any]]]) -> Iterator[Any]:
        path, grouped = element
        files = list(grouped["file"])
        if not files:
            return
        done = {task: list(grouped[task]) for task in self._tasks}
        if all(done.values()):
            Metrics.counter(METRICS_NAMESPACE, "images_resumed").inc()
            for task, results in done.items():
                # One of each: a retried bundle may have saved a result twice.
                yield beam.pvalue.TaggedOutput(task, (path, results[0]))
            return
        yield files[0]  # two patterns matching one file: one run


class DecodeImageFn(beam.DoFn):
    """ReadableFile → (path, pixels as stored (H, W, C)); unreadable or non-image files → errors."""

    def process(self, readable: fileio.ReadableFile) -> Iterator[Any]:
        path = readable.metadata.path
        try:
            data = readable.read()
        except Exception as err:  # every file system raises its own kinds
            yield _error(path, "read", f"cannot be read ({_reason(err)})")
            return
        try:
            pixels = decode_raw(data, source=path)
        except ImageError as err:
            yield _error(path, "decode", err.reason)
            return
        except Exception as err:  # a decoder bug must not end the run
            yield _error(path, "decode", _reason(err))
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
        except Exception as err:  # reported in errors.csv
            yield _error(path, "classify", _reason(err))


class PredictionCsvFn(beam.DoFn):
    """(path, PredictionResult) → (path, one line of the `classify` CSV)."""

    def __init__(self, info: ModelInfo):
        self._info = info

    def process(self, element: tuple[str, PredictionResult]) -> Iterator[Any]:
        from cellkeras.inference.classify import csv_columns, csv_values, prediction_row

        path, result = element
        if isinstance(result.inference, Failure):
            yield _error(path, "classify", result.inference.reason)
            return
        row = prediction_row(path, np.asarray(result.inference), self._info.class_names())
        Metrics.counter(METRICS_NAMESPACE, "images_classified").inc()
        yield path, _csv_line([csv_values(row)[c] for c in csv_columns(self._info)])


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
            yield _error(path, "detect", found.reason)
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
                record["heatmap"] = _write_heatmap(self._out, path, found.heatmap)
            except Exception as err:  # the boxes are still good
                yield _error(path, "heatmap", _reason(err))
        record["boxes"] = np.asarray(found.boxes, np.float32).tolist()
        record["scores"] = np.asarray(found.scores, np.float32).tolist()
        Metrics.counter(METRICS_NAMESPACE, "images_detected").inc()
        yield path, record


class CheckpointFn(beam.DoFn):
    """Passes (path, result) on and saves it to `OUT/_checkpoint/<task>-<uuid>.jsonl`.

    Saves every `every` results and at the end of the bundle, each time as a whole new file
    written under a temporary name and renamed, so a crash never leaves half a line behind.
    A retried bundle saves its results again under other names; `ResumeSplitFn` keeps one.
    """

    def __init__(self, out: str, task: str, every: int):
        self._out = out
        self._task = task
        self._every = every
        self._pending: list[str] = []

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, element: tuple[str, Any]) -> Iterator[tuple[str, Any]]:
        self._pending.append(json.dumps(element))
        if len(self._pending) >= self._every:
            self._flush()
        yield element

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = FileSystems.join(self._out, CHECKPOINT, f"{self._task}-{uuid.uuid4().hex}.jsonl")
        _write_atomically(name, ("\n".join(self._pending) + "\n").encode("utf-8"))
        self._pending = []


def _read_checkpoint(readable: fileio.ReadableFile) -> Iterator[tuple[str, Any]]:
    for line in readable.read_utf8().splitlines():
        if line.strip():
            path, result = json.loads(line)
            yield path, result


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
            [np.asarray(r["boxes"], np.float32).reshape(-1, 4) for r in records],
            [np.asarray(r["scores"], np.float32) for r in records],
            category=self._category,
        )
        document["info"] = dict(self._info)
        name = shard_name(self._out, DETECTIONS, shard, self._num_shards, ".json")
        _write_atomically(name, (json.dumps(document, indent=1) + "\n").encode("utf-8"))
        yield name


# --- helpers --------------------------------------------------------------------------------


def _csv_line(values: Sequence[Any]) -> str:
    # The csv module quotes paths holding commas or quotes, as `cellkeras classify` does.
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def _write_atomically(name: str, data: bytes) -> None:
    """Writes `name` whole or not at all (a temporary name, then a rename)."""
    temporary = f"{name}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(temporary) as f:
        f.write(data)
    if FileSystems.exists(name):  # a retried bundle; object stores refuse to rename over it
        FileSystems.delete([name])
    FileSystems.rename([temporary], [name])


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
    """Adds the batch graph to `p`; returns its output PCollections by name.

    With `config.resume`, the files `OUT/_checkpoint/` holds for every task are not run again;
    their saved results go to the outputs with the new ones. The workers load the model from
    `OUT/model.keras`, which `prepare_output` copies there.
    """
    from cellkeras.detect.coco import category_name

    info = config.info
    tasks = config.tasks()
    model_file = FileSystems.join(config.out, MODEL_COPY)
    out_prefix = _folder_prefix(config.out)
    checkpoint_files = _checkpoint_files(config.out, tasks) if config.resume else {}
    keyed: dict[str, Any] = {
        "file": (
            p
            | "Patterns" >> beam.Create(list(config.inputs))
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW_IF_WILDCARD)
            # `--input 'data/**' --out data/results` must not read its own outputs as images.
            | "NotOutputs" >> beam.Filter(lambda m, out: not _inside(m.path, out), out_prefix)
            | "ByPath" >> beam.Map(lambda m: (m.path, m))
        )
    }
    for task in tasks:
        keyed[task] = (
            p
            | f"Checkpoint_{task}" >> beam.Create(checkpoint_files.get(task, []))
            | f"MatchCheckpoint_{task}" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | f"ReadCheckpoint_{task}" >> fileio.ReadMatches()
            | f"ParseCheckpoint_{task}" >> beam.FlatMap(_read_checkpoint)
        )
    # Grouping by path is also the shuffle that spreads the files over the workers.
    split = (
        keyed
        | "JoinCheckpoint" >> beam.CoGroupByKey()
        | "ToRun" >> beam.ParDo(ResumeSplitFn(tasks)).with_outputs(*tasks, main="files")
    )
    decoded = (
        split.files
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
        handler = ClassifyModelHandler(model_file, max_batch_size=config.batch_size)
        rows = (
            prepared.inputs
            | "Classify" >> RunInference(KeyedModelHandler(handler))
            | "CsvRows" >> beam.ParDo(PredictionCsvFn(info)).with_outputs(_ERRORS_TAG, main="rows")
        )
        errors.append(rows[_ERRORS_TAG])
        outputs[PREDICTIONS] = (
            (
                rows.rows
                | "SavePredictions"
                >> beam.ParDo(CheckpointFn(config.out, PREDICTIONS, config.checkpoint_every)),
                split[PREDICTIONS],
            )
            | "AllPredictions" >> beam.Flatten()
            | "CsvLines" >> beam.Values()
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
            model_file,
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
            >> beam.ParDo(DetectionRecordFn(config.out, config.save_heatmaps)).with_outputs(
                _ERRORS_TAG, main="records"
            )
        )
        errors.append(detected[_ERRORS_TAG])
        # One empty entry per shard, so every shard file is written even when it gets no image.
        every_shard = p | "Shards" >> beam.Create([(k, None) for k in range(config.num_shards)])
        num_shards = config.num_shards
        records = (
            (
                detected.records
                | "SaveDetections"
                >> beam.ParDo(CheckpointFn(config.out, DETECTIONS, config.checkpoint_every)),
                split[DETECTIONS],
            )
            | "AllDetections" >> beam.Flatten()
            | "ToShard" >> beam.MapTuple(lambda path, record: (shard_of(path, num_shards), record))
        )
        outputs[DETECTIONS] = (
            (records, every_shard)
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
    from cellkeras.inference.classify import csv_columns

    return csv_columns(info)


def _has_scheme(path: str) -> bool:
    return "://" in path


def _folder_prefix(folder: str) -> str:
    """`folder` with one trailing separator (absolute when local), for prefix tests."""
    if _has_scheme(folder):
        return folder.rstrip("/") + "/"
    return os.path.join(os.path.abspath(folder), "")


def _inside(path: str, prefix: str) -> bool:
    return (path if _has_scheme(path) else os.path.abspath(path)).startswith(prefix)


def check_inputs(patterns: Sequence[str]) -> int:
    """The number of distinct files the patterns match, in the launcher, before any worker starts.

    Raises:
        FileNotFoundError: naming the first pattern that matches nothing (a typo would otherwise
            give an empty, successful run).
        ValueError: naming a pattern that is a local folder (it would be skipped, not searched).
    """
    from apache_beam.io.filesystem import BeamIOError

    found_paths: set[str] = set()
    for pattern in patterns:
        if not _has_scheme(pattern) and os.path.isdir(pattern):
            folder = pattern.rstrip("/\\")
            raise ValueError(
                f"--input {pattern!r} is a folder; give a file pattern, e.g. '{folder}/**' for "
                f"every file under it or '{folder}/*.png'"
            )
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except BeamIOError as err:
            raise FileNotFoundError(
                f"--input pattern {pattern!r} cannot be matched: {err}"
            ) from None
        files = [m.path for m in found if not m.path.endswith(("/", "\\"))]
        if not files:
            raise FileNotFoundError(f"--input pattern {pattern!r} matches no files")
        found_paths.update(files)
    return len(found_paths)


def _matching(pattern: str) -> list[str]:
    from apache_beam.io.filesystem import BeamIOError

    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except BeamIOError:  # a folder that does not exist yet
        return []
    return sorted(m.path for m in found)


def _checkpoint_files(out: str, tasks: Sequence[str]) -> dict[str, list[str]]:
    folder = FileSystems.join(out, CHECKPOINT)
    return {task: _matching(FileSystems.join(folder, f"{task}-*.jsonl")) for task in tasks}


def _previous_outputs(out: str) -> list[str]:
    """Files of an earlier run in `out` (shards, errors, manifest, Beam's temporary folders)."""
    names = []
    for pattern in (
        f"{PREDICTIONS}-*-of-*.csv",
        f"{DETECTIONS}-*-of-*.json",
        f"{ERRORS}.csv",
        MANIFEST,
        MODEL_COPY,
        "beam-temp-*",
    ):
        names.extend(_matching(FileSystems.join(out, pattern)))
    return names


def prepare_output(config: BatchConfig) -> None:
    """Checks (and with `overwrite`, clears) the output folder before the pipeline starts.

    Raises:
        FileExistsError: `out` holds another run's outputs and neither `overwrite` nor `resume`
            was asked for, or `resume` was asked for a finished run.
        FileNotFoundError: `resume` without a checkpoint in `out`.
        ValueError: `resume` with a checkpoint of another model or other settings.
    """
    out = config.out
    checkpoint = FileSystems.join(out, CHECKPOINT)
    run_file = FileSystems.join(checkpoint, _RUN_FILE)
    previous = _previous_outputs(out)
    has_checkpoint = FileSystems.exists(run_file)
    if config.overwrite:
        leftovers = previous + ([checkpoint] if FileSystems.exists(checkpoint) else [])
        heatmaps = FileSystems.join(out, HEATMAPS)
        if FileSystems.exists(heatmaps):
            leftovers.append(heatmaps)
        if leftovers:
            FileSystems.delete(leftovers)
    elif config.resume:
        if FileSystems.exists(FileSystems.join(out, MANIFEST)):
            raise FileExistsError(
                f"{out} holds a finished run ({MANIFEST}); there is nothing to resume "
                "(use --overwrite to run again)"
            )
        if not has_checkpoint:
            raise FileNotFoundError(
                f"--resume: {checkpoint} does not exist; there is no crashed run to continue in "
                f"{out}"
            )
        with FileSystems.open(run_file) as f:
            saved = json.loads(f.read().decode("utf-8"))
        now = json.loads(json.dumps(config.identity()))
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if changed:
            raise ValueError(
                f"--resume: the checkpoint in {out} was made with other "
                f"{', '.join(changed)} ({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); "
                "run with the same settings, or use --overwrite to start over"
            )
        # Beam's half-written shards of the crashed run: rewritten from the checkpoint.
        stale = [p for p in previous if not p.endswith((MANIFEST, MODEL_COPY))]
        if stale:
            FileSystems.delete(stale)
        stage_model(config)
        return
    elif previous or has_checkpoint:
        what = (
            "a crashed run's checkpoint (--resume continues it)"
            if has_checkpoint
            else (f"outputs of another run ({FileSystems.split(previous[0])[1]}, ...)")
        )
        raise FileExistsError(
            f"--out {out} holds {what}; use --overwrite to replace them, or another --out"
        )
    _write_atomically(run_file, json.dumps(config.identity(), indent=1).encode("utf-8"))
    stage_model(config)


def stage_model(config: BatchConfig) -> str:
    """Copies the model to `OUT/model.keras`, where every worker of every runner can read it.

    The launcher's path (a local export) is not visible to Dataflow, Flink or Spark workers;
    the output folder must be. The copy also records which model made the outputs.
    """
    with FileSystems.open(config.model) as f:
        data = f.read()
    name = FileSystems.join(config.out, MODEL_COPY)
    _write_atomically(name, data)
    return name


def run_batch(
    config: BatchConfig, pipeline_args: Sequence[str] = (), *, output_checked: bool = False
) -> dict[str, int]:
    """Runs the pipeline to the end, writes `OUT/batch.json` and returns its counters.

    Args:
        config: the `BatchConfig`.
        pipeline_args: Beam pipeline options (`--runner=...`, `--direct_num_workers=...`, ...);
            the DirectRunner when no runner is named.
        output_checked: the caller has already run `prepare_output(config)`.

    Returns:
        `images_decoded`, `images_classified`, `images_detected`, `images_resumed` (taken from
        the checkpoint of a crashed run) and `errors` (error rows; a file the model cannot take
        fails once per task), as the runner reports them.

    Raises:
        FileExistsError, FileNotFoundError, ValueError: from `prepare_output`, before the
            pipeline starts.
    """
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    if not output_checked:
        prepare_output(config)
    started = time.time()
    options = PipelineOptions(list(pipeline_args))
    with beam.Pipeline(options=options) as p:
        build_pipeline(p, config)
    # Leaving the `with` block ran the pipeline and waited for it.
    result = p.result
    counters = dict.fromkeys(COUNTERS, 0)
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    for counter in query["counters"]:
        # Committed values where the runner has them; the DirectRunner reports attempted only.
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] += int(value or 0)
    manifest = {
        "inputs": list(config.inputs),
        "model": config.model,
        "tasks": config.tasks(),
        "num_shards": config.num_shards,
        "counters": counters,
        "seconds": round(time.time() - started, 1),
        "resumed": config.resume,
    }
    _write_atomically(
        FileSystems.join(config.out, MANIFEST), json.dumps(manifest, indent=1).encode("utf-8")
    )
    # The outputs now hold everything the checkpoint did.
    FileSystems.delete([FileSystems.join(config.out, CHECKPOINT)])
    return counters


# --- reading the outputs back ---------------------------------------------------------------


@dataclasses.dataclass
class BatchResults:
    """A finished run's outputs, shards merged.

    Attributes:
        rows: the prediction rows (dicts with the `classify` CSV's columns), sorted by path.
        detections: one COCO document of every detection shard (None when detection was off).
        errors: `{path, stage, reason}` rows.
        manifest: `batch.json`: inputs, model, tasks, num_shards, counters, seconds.
    """

    rows: list[dict[str, str]]
    detections: dict[str, Any] | None
    errors: list[dict[str, str]]
    manifest: dict[str, Any]


def _read_text(path: str) -> str:
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def read_results(out: str) -> BatchResults:
    """Reads and merges the shards a finished run wrote to `out` (any Beam file system).

    Only the shards the run's manifest names are read (`-of-NNNNN` with its `num_shards`).

    Raises:
        FileNotFoundError: when `out` holds no `batch.json` (no finished run), or a shard the
            manifest names is missing.
    """
    from cellkeras.detect.coco import merge_coco

    manifest_file = FileSystems.join(out, MANIFEST)
    if not FileSystems.exists(manifest_file):
        raise FileNotFoundError(f"{manifest_file} does not exist: no finished batch run in {out}")
    manifest = json.loads(_read_text(manifest_file))
    num_shards = manifest["num_shards"]

    def shards(task: str, suffix: str) -> list[str]:
        if task not in manifest["tasks"]:
            return []
        names = [shard_name(out, task, k, num_shards, suffix) for k in range(num_shards)]
        missing = [n for n in names if not FileSystems.exists(n)]
        if missing:
            raise FileNotFoundError(f"{out}: shard {missing[0]} of the finished run is missing")
        return names

    rows: list[dict[str, str]] = []
    for shard in shards(PREDICTIONS, ".csv"):
        rows.extend(csv.DictReader(io.StringIO(_read_text(shard))))
    rows.sort(key=lambda r: r["path"])
    documents = [json.loads(_read_text(s)) for s in shards(DETECTIONS, ".json")]
    detections = merge_coco(documents) if documents else None
    errors = list(csv.DictReader(io.StringIO(_read_text(FileSystems.join(out, f"{ERRORS}.csv")))))
    return BatchResults(rows, detections, errors, manifest)
