"""TF Serving warmup records: `PredictionLog` protos replayed by the server on load.

The records are `tensorflow.serving.PredictionLog` messages built and parsed with the official
protos of `tensorflow-serving-api` (its version follows TensorFlow's), so the file is exactly
what the server's warmup loader reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from cellkeras.serving.signatures import BYTES_INPUT, IMAGES_INPUT, SERVING_DEFAULT, SERVING_IMAGES

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"


def prediction_log_bytes(signature_name: str, inputs: Mapping[str, Any]) -> bytes:
    """A serialized `tensorflow.serving.PredictionLog` holding one PredictRequest.

    `model_spec.name` is left empty: the server fills in the model it is loading.

    Args:
        signature_name: the signature the request calls.
        inputs: input name → array-like (or `TensorProto`), converted with `tf.make_tensor_proto`.

    Returns:
        The protobuf wire bytes, one TFRecord record of the warmup file.
    """
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature_name
    for key in sorted(inputs):
        value = inputs[key]
        proto = value if hasattr(value, "SerializeToString") else tf.make_tensor_proto(value)
        request.inputs[key].CopyFrom(proto)
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    # Deterministic: map entries in key order, so the same export writes the same bytes.
    return log.SerializeToString(deterministic=True)


@dataclass(frozen=True)
class WarmupRequest:
    """One PredictRequest read back from a warmup file."""

    signature_name: str
    inputs: dict[str, np.ndarray]


def parse_prediction_log(data: bytes) -> WarmupRequest:
    """Decodes a serialized PredictionLog holding a predict_log (see `prediction_log_bytes`).

    Raises:
        ValueError: for other log types or malformed bytes.
    """
    try:
        log = prediction_log_pb2.PredictionLog.FromString(data)
    except Exception as err:  # google.protobuf.message.DecodeError, which varies by backend
        raise ValueError(f"malformed PredictionLog: {err}") from err
    kind = log.WhichOneof("log_type")
    if kind != "predict_log":
        raise ValueError(f"PredictionLog holds {kind or 'no log'}, not a predict_log")
    request = log.predict_log.request
    # An empty signature name is how TF Serving spells its default signature.
    signature_name = request.model_spec.signature_name or SERVING_DEFAULT
    inputs = {key: tf.make_ndarray(request.inputs[key]) for key in sorted(request.inputs)}
    return WarmupRequest(signature_name, inputs)


def read_warmup_requests(path: str | Path) -> list[WarmupRequest]:
    """Every request of a `tf_serving_warmup_requests` TFRecord file."""
    records = tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
    return [parse_prediction_log(record) for record in records]


def sample_png(image_size: Sequence[int], channels: int, value: int = 128) -> bytes:
    """A flat 8-bit PNG (mid-grey by default) of `image_size`, grey or RGB."""
    height, width = image_size
    pixels = np.full((height, width, 3 if channels == 3 else 1), value, np.uint8)
    return tf.io.encode_png(pixels).numpy()


def warmup_records(image_size: Sequence[int], channels: int) -> list[bytes]:
    height, width = image_size
    records = []
    if channels in (1, 3):
        data = np.array([sample_png(image_size, channels)], dtype=object)
        records.append(prediction_log_bytes(SERVING_DEFAULT, {BYTES_INPUT: data}))
    images = np.full((1, height, width, channels), 0.5, np.float32)
    records.append(prediction_log_bytes(SERVING_IMAGES, {IMAGES_INPUT: images}))
    return records


def write_warmup_file(path: str | Path, records: Sequence[bytes]) -> Path:
    """Writes serialized PredictionLogs as TF Serving's warmup TFRecord file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path
