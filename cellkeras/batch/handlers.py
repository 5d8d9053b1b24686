"""Beam `ModelHandler`s that run a cellkeras `.keras` model: classification and detection.

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

The pipeline hands them batches it formed itself (`with_no_batching()`), see `steps.py`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from cellkeras.batch.config import MODEL_COPY


@dataclasses.dataclass(frozen=True)
class Failure:
    """An image the model (or detector) failed on: travels as its inference, not as a crash."""

    reason: str


def describe(err: BaseException) -> str:
    """`TypeName: message`, the reason `errors.csv` gives for an unexpected exception."""
    return f"{type(err).__name__}: {err}"


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
            local = os.path.join(folder, MODEL_COPY)
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
            return Failure(describe(err))

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
                found = Failure(describe(err))
            results.append(PredictionResult(image, found, self._model_file))
        return results

    def get_metrics_namespace(self) -> str:
        return "cellkeras_detect"
