"""TF Serving warmup records: `PredictionLog` protos replayed by the server on load.

The warmup file is written without `tensorflow-serving-api` (not a dependency): the
`PredictionLog` protobufs are encoded by hand (see `prediction_log_bytes` for the field numbers)
and `read_warmup_requests` decodes them back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from cellkeras.serving.signatures import BYTES_INPUT, IMAGES_INPUT, SERVING_DEFAULT, SERVING_IMAGES

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    # Wire type 2 (length-delimited) covers strings, bytes, sub-messages and map entries.
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def prediction_log_bytes(signature_name: str, inputs: Mapping[str, Any]) -> bytes:
    """A serialized `tensorflow.serving.PredictionLog` holding one PredictRequest.

    Field numbers (tensorflow_serving/apis, checked against tensorflow-serving-api 2.21 in the
    tests when it is installed):

    * prediction_log.proto: `PredictionLog.predict_log = 6`; `PredictLog.request = 1`
    * predict.proto: `PredictRequest.model_spec = 1`, `PredictRequest.inputs = 2`
      (`map<string, TensorProto>`, i.e. repeated entries with `key = 1`, `value = 2`)
    * model.proto: `ModelSpec.signature_name = 3` (`name = 1` is left empty: the server fills in
      the model it is loading)

    Args:
        signature_name: the signature the request calls.
        inputs: input name → array-like (or `TensorProto`), converted with `tf.make_tensor_proto`.

    Returns:
        The protobuf wire bytes, one TFRecord record of the warmup file.
    """
    model_spec = _length_delimited(3, signature_name.encode())
    request = _length_delimited(1, model_spec)
    for key in sorted(inputs):
        value = inputs[key]
        proto = value if hasattr(value, "SerializeToString") else tf.make_tensor_proto(value)
        entry = _length_delimited(1, key.encode()) + _length_delimited(2, proto.SerializeToString())
        request += _length_delimited(2, entry)
    predict_log = _length_delimited(1, request)
    return _length_delimited(6, predict_log)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint in protobuf data")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs of one protobuf message; values are ints or raw bytes."""
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
            if len(value) != size:
                raise ValueError("truncated field in protobuf data")
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, value


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
    from tensorflow.core.framework import tensor_pb2

    logs = [value for field, value in _fields(data) if field == 6]
    if not logs:
        raise ValueError("PredictionLog has no predict_log (field 6)")
    requests = [value for field, value in _fields(logs[0]) if field == 1]
    if not requests:
        raise ValueError("PredictLog has no request (field 1)")
    signature_name, inputs = SERVING_DEFAULT, {}
    for field, value in _fields(requests[0]):
        if field == 1:
            for spec_field, spec_value in _fields(value):
                if spec_field == 3 and spec_value:
                    signature_name = spec_value.decode()
        elif field == 2:
            entry = dict(_fields(value))
            proto = tensor_pb2.TensorProto.FromString(entry.get(2, b""))
            inputs[entry.get(1, b"").decode()] = tf.make_ndarray(proto)
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
