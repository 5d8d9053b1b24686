"""Versioned, atomic SavedModel export with serving signatures that TF Serving loads as is.

`export_model(model, "exports/cells", classes=[...], image_size=64, channels=3)` writes

```
exports/cells/
  3/                                  # the version: highest existing integer + 1 (first: 1)
    saved_model.pb, variables/        # the SavedModel (keras.export.ExportArchive)
    fingerprint.pb, assets/           #   written by TensorFlow
    assets.extra/
      tf_serving_warmup_requests      # TFRecord of PredictionLog protos TF Serving replays on load
    model.keras                       # the Keras model itself, for explain/detect/fine-tuning
    model_card.json                   # classes, channels, normalization, size, metrics, versions
```

Signatures (both return `probabilities` float32 (B, K), `class_index` int64 (B,) and
`class_name` string (B,)):

* `serving_default(image_bytes)`: string (B,) of encoded PNG (8 or 16 bit), JPEG, BMP or GIF
  (first frame) files. Each image is decoded in the graph and goes through the training
  pipeline's steps exactly (`cellkeras.data.images.decode_image`, then
  `tf.image.resize(bilinear, antialias=True)` as in `cellkeras.data.pipeline`): channels are
  converted on the stored integers (grey → RGB replicates, RGB → grey is the 0.299/0.587/0.114
  luminance truncated to the stored type, alpha is dropped), then normalized ("range": uint8 / 255,
  uint16 / 65535; "percentile": per-channel 1st-99.8th percentile stretch), then resized to
  `image_size`. JPEGs are decoded with `dct_method="INTEGER_ACCURATE"`, which gives the same
  pixels as OpenCV (TensorFlow's default, INTEGER_FAST, differs by up to 8 grey levels).
  TensorFlow has no TIFF decoder, so TIFF bytes are refused with a message that says what to do:
  decode on the client with `cellkeras.data.read_image` (which also reads multichannel and 12-bit
  TIFFs) and call `serving_images`, or re-encode as a 16-bit PNG (lossless). Bytes that are no
  image raise `InvalidArgumentError` naming the batch index and the first bytes.
  The input is named `image_bytes` so TF Serving's REST API accepts `{"b64": ...}` values.
* `serving_images(images)`: float32 (B, H, W, C) already normalized to [0, 1], any H and W; only
  resized in the graph.

Why `model.keras` sits beside `saved_model.pb`: TF Serving and `tf.saved_model.load` read only
`saved_model.pb`, `variables/`, `assets/` and `assets.extra/` and ignore other files, so the
version folder stays a valid servable, while one folder holds everything a user needs
(`cellkeras detect --model EXPORT_DIR/3` finds `model.keras` there). `assets.extra/` is kept for
what the server itself reads (the warmup file).

Why "max + 1" versions rather than timestamps: TF Serving serves the highest integer, and small
consecutive numbers are what its docs and users expect to type (`/versions/3`). Two processes that
pick the same number do not clash: each builds in its own `.tmp-<version>-<pid>` folder (a
dot-name TF Serving never takes for a version), and the final `os.rename` fails for the second,
which then takes the next free number. The one catch: deleting the highest version and exporting
again reuses its number, which a running TF Serving that has already loaded it will not reload.

The warmup file is written without `tensorflow-serving-api` (not a dependency): the
`PredictionLog` protobufs are encoded by hand (see `prediction_log_bytes` for the field numbers)
and `read_warmup_requests` decodes them back.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import cellkeras
from cellkeras.data.images import NORMALIZATIONS

SERVING_DEFAULT = "serving_default"
SERVING_IMAGES = "serving_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUT_KEYS = ("probabilities", "class_index", "class_name")
MODEL_FILE = "model.keras"
CARD_FILE = "model_card.json"
WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
EXPORT_FORMAT = "cellkeras-export/1"
TMP_PREFIX = ".tmp-"

# Keys of the model card that describe the signatures; `metadata` may not override them, or the
# card would disagree with the graph.
_RESERVED_CARD_KEYS = frozenset(
    {"format", "version", "classes", "num_classes", "channels", "image_size", "normalization"}
    | {"signatures", "files", "versions", "created"}
)
# The luminance weights of `cellkeras.data.images.select_channels`.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_PERCENTILES = (1.0, 99.8)

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_GIF = (b"GIF87a", b"GIF89a")
# Offset of the bit-depth byte of a PNG: 8 signature + 4 length + 4 "IHDR" + 4 width + 4 height.
_PNG_BIT_DEPTH_AT = 24


# --- in-graph preprocessing ----------------------------------------------------------------------


def _luminance(rgb: tf.Tensor) -> tf.Tensor:
    """Grey from integer RGB, bit-identical to `select_channels(pixels, 1)`.

    numpy computes `rgb @ weights` with OpenBLAS, which on x86-64 with FMA (every machine here)
    rounds like `fma(b, w2, fma(g, w1, r * w0))`; plain float32 `r*w0 + g*w1 + b*w2` differs in
    about 1 pixel in 20,000, and the truncating cast turns that into a whole grey level. A float32
    product is exact in float64, so "multiply and add in float64, round to float32" reproduces
    each FMA.
    """
    values = tf.cast(rgb, tf.float64)
    weights = _LUMA.astype(np.float64)
    acc = tf.cast(tf.cast(values[..., 0] * weights[0], tf.float32), tf.float64)
    acc = tf.cast(values[..., 1] * weights[1] + acc, tf.float32)
    acc = tf.cast(values[..., 2] * weights[2] + tf.cast(acc, tf.float64), tf.float32)
    # The training code casts back to the stored type, which truncates; so does tf.cast.
    return tf.cast(acc, rgb.dtype)[..., None]


def _to_channels(pixels: tf.Tensor, channels: int, where: tf.Tensor) -> tf.Tensor:
    """`select_channels(pixels, channels)` on integer (H, W, n) pixels whose n is known at run time.

    TensorFlow's decoders give grey+alpha PNGs 2 channels where OpenCV gives 3 (grey replicated);
    both become grey here, as they do in training.
    """
    have = tf.shape(pixels)[-1]
    if channels == 3:
        # concat, not tile: TileOp has no uint16 kernel on CPU.
        out = tf.cond(
            have < 3, lambda: tf.concat([pixels[..., :1]] * 3, -1), lambda: pixels[..., :3]
        )
    elif channels == 1:
        out = tf.cond(have < 3, lambda: pixels[..., :1], lambda: _luminance(pixels[..., :3]))
    else:
        check = tf.debugging.Assert(
            tf.equal(have, channels),
            [
                tf.strings.join(
                    [
                        where,
                        f": the model takes {channels} channels and the image has ",
                        tf.strings.as_string(have),
                        "; only grey/RGB/RGBA conversions run in the graph, send the "
                        "channels the model expects to the 'serving_images' signature",
                    ]
                )
            ],
        )
        with tf.control_dependencies([check]):
            out = tf.identity(pixels)
    out.set_shape([None, None, channels])
    return out


def _percentile(sorted_values: tf.Tensor, q: float) -> tf.Tensor:
    """np.percentile's default "linear" method on values sorted along axis 0, per column."""
    n = tf.shape(sorted_values)[0]
    position = tf.cast(n - 1, tf.float64) * (q / 100.0)
    below = tf.floor(position)
    low = tf.cast(below, tf.int32)
    high = tf.minimum(low + 1, n - 1)
    t = position - below
    a = tf.cast(tf.gather(sorted_values, low), tf.float64)
    b = tf.cast(tf.gather(sorted_values, high), tf.float64)
    return tf.cast(a + (b - a) * t, tf.float32)


def _normalize(pixels: tf.Tensor, normalization: str) -> tf.Tensor:
    """`cellkeras.data.images.normalize` on integer (H, W, C) pixels."""
    if normalization == "range":
        # A true division, as numpy does. Grappler rewrites `x / constant` in a graph into
        # `x * (1 / constant)`, which is one ulp off in ~half the grey levels; DivNoNan is left
        # alone (and the divisor is never 0).
        top = tf.constant(pixels.dtype.max, tf.float32)
        return tf.math.divide_no_nan(tf.cast(pixels, tf.float32), top)
    values = tf.cast(pixels, tf.float32)
    columns = tf.sort(tf.reshape(values, [-1, tf.shape(values)[-1]]), axis=0)
    low = _percentile(columns, _PERCENTILES[0])
    high = _percentile(columns, _PERCENTILES[1])
    return tf.clip_by_value((values - low) / tf.maximum(high - low, 1e-6), 0.0, 1.0)


def _format_index(data: tf.Tensor) -> tf.Tensor:
    """0 PNG 8-bit (or less), 1 PNG 16-bit, 2 JPEG, 3 BMP/GIF, 4 TIFF, 5 not an image."""
    length = tf.strings.length(data)
    # substr fails past the end of the string, so short (broken) inputs read as "no depth".
    depth = tf.cond(
        length > _PNG_BIT_DEPTH_AT,
        lambda: tf.strings.substr(data, _PNG_BIT_DEPTH_AT, 1),
        lambda: tf.constant(b""),
    )

    def starts(*magics: bytes) -> tf.Tensor:
        hits = [tf.equal(tf.strings.substr(data, 0, len(m)), m) for m in magics]
        return tf.reduce_any(tf.stack(hits))

    is_png = starts(_PNG)
    index = tf.constant(5)
    # Later assignments win, so the most specific test comes last.
    for condition, value in (
        (starts(*_TIFF), 4),
        (tf.logical_or(starts(b"BM"), starts(*_GIF)), 3),
        (starts(_JPEG), 2),
        (is_png, 0),
        (tf.logical_and(is_png, tf.equal(depth, b"\x10")), 1),
    ):
        index = tf.where(condition, tf.constant(value), index)
    return index


def decode_image_bytes(
    data: tf.Tensor,
    channels: int,
    normalization: str = "range",
    where: str | tf.Tensor = "image_bytes",
) -> tf.Tensor:
    """Decodes one encoded image in the graph as `cellkeras.data.images.decode_image` does.

    Args:
        data: scalar string tensor holding a PNG (8/16-bit), JPEG, BMP or GIF file.
        channels: the channel count to convert to (see the module docstring).
        normalization: "range" or "percentile".
        where: names the image in error messages (e.g. "image_bytes[3]").

    Returns:
        float32 (H, W, channels) in [0, 1].

    Raises:
        tf.errors.InvalidArgumentError: at run time, for TIFF, empty or unknown bytes (the message
            names `where`, the problem and the first bytes), and from TensorFlow's decoders for
            corrupt files of a known format.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")
    where = tf.convert_to_tensor(where, tf.string)

    def finish(pixels: tf.Tensor) -> tf.Tensor:
        return _normalize(_to_channels(pixels, channels, where), normalization)

    def png8() -> tf.Tensor:
        return finish(tf.io.decode_png(data, channels=0, dtype=tf.uint8))

    def png16() -> tf.Tensor:
        return finish(tf.io.decode_png(data, channels=0, dtype=tf.uint16))

    def jpeg() -> tf.Tensor:
        return finish(tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE"))

    def bmp_gif() -> tf.Tensor:
        return finish(tf.io.decode_image(data, channels=0, expand_animations=False))

    def refuse(reason: str) -> Any:
        def branch() -> tf.Tensor:
            head = tf.strings.substr(data, 0, tf.minimum(tf.strings.length(data), 16))
            message = tf.strings.join([where, ": ", reason, "; its first bytes are"])
            check = tf.debugging.Assert(False, [message, head])
            with tf.control_dependencies([check]):
                return tf.zeros([0, 0, channels], tf.float32)

        return branch

    branches = [
        png8,
        png16,
        jpeg,
        bmp_gif,
        refuse(
            "TIFF cannot be decoded inside the serving graph (TensorFlow has no TIFF decoder); "
            "decode it on the client with cellkeras.data.read_image and call the "
            f"'{SERVING_IMAGES}' signature, or re-encode it as a (16-bit) PNG"
        ),
        refuse("not a PNG, JPEG, BMP or GIF image (empty, truncated or another format)"),
    ]
    image = tf.switch_case(_format_index(data), branches)
    image.set_shape([None, None, channels])
    return image


def resize_images(images: tf.Tensor, image_size: Sequence[int]) -> tf.Tensor:
    """The training pipeline's resize: bilinear with antialiasing, float32 out."""
    return tf.image.resize(images, list(image_size), method="bilinear", antialias=True)


def preprocess_bytes(
    image_bytes: tf.Tensor,
    image_size: Sequence[int],
    channels: int,
    normalization: str = "range",
) -> tf.Tensor:
    """A batch of encoded images → float32 (B, height, width, channels), as in training.

    Images may differ in size and format inside one batch, so each is decoded and resized on
    its own (`tf.map_fn`); the result has the model's static shape.
    """
    height, width = image_size
    indices = tf.range(tf.shape(image_bytes)[0])

    def one(item: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        data, index = item
        where = tf.strings.join([f"{BYTES_INPUT}[", tf.strings.as_string(index), "]"])
        image = decode_image_bytes(data, channels, normalization, where)
        return resize_images(image, (height, width))

    return tf.map_fn(
        one,
        (image_bytes, indices),
        fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32),
    )


def _outputs(probabilities: Any, classes: tf.Tensor) -> dict[str, tf.Tensor]:
    probabilities = tf.cast(probabilities, tf.float32)
    class_index = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
    return {
        "probabilities": probabilities,
        "class_index": class_index,
        "class_name": tf.gather(classes, class_index),
    }


# --- warmup records: PredictionLog protos by hand ----------------------------------------------------


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


def _warmup_records(image_size: Sequence[int], channels: int) -> list[bytes]:
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


# --- versions and the export itself ----------------------------------------------------------------


def list_versions(export_dir: str | Path) -> list[int]:
    """The integer version folders of an export folder, ascending (TF Serving's view of it)."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        return []
    return sorted(int(p.name) for p in export_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(export_dir: str | Path) -> int:
    """Highest existing version + 1, or 1 for a new export folder."""
    versions = list_versions(export_dir)
    return versions[-1] + 1 if versions else 1


def _signature_description(image_size: Sequence[int], channels: int, k: int) -> dict[str, Any]:
    outputs = {
        "probabilities": {"dtype": "float32", "shape": [-1, k]},
        "class_index": {"dtype": "int64", "shape": [-1]},
        "class_name": {"dtype": "string", "shape": [-1]},
    }
    return {
        SERVING_DEFAULT: {
            "inputs": {BYTES_INPUT: {"dtype": "string", "shape": [-1]}},
            "outputs": outputs,
            "description": (
                "encoded PNG (8/16-bit), JPEG, BMP or GIF files; decoded, converted to "
                f"{channels} channel(s), normalized and resized to {list(image_size)} in the graph "
                "exactly as in training; TIFF is refused (decode it on the client and call "
                f'{SERVING_IMAGES}). REST: {{"instances": [{{"{BYTES_INPUT}": '
                '{"b64": "<base64 of the file>"}}]}'
            ),
        },
        SERVING_IMAGES: {
            "inputs": {IMAGES_INPUT: {"dtype": "float32", "shape": [-1, -1, -1, channels]}},
            "outputs": outputs,
            "description": (
                "float32 images already normalized to [0, 1] (cellkeras.data.read_image), any "
                f"size; resized to {list(image_size)} in the graph"
            ),
        },
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"model card value {value!r} of type {type(value).__name__} is not JSON")


def _model_card(
    version: int,
    classes: Sequence[str],
    image_size: tuple[int, int],
    channels: int,
    normalization: str,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": version,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "classes": list(classes),
        "num_classes": len(classes),
        "channels": channels,
        "image_size": list(image_size),
        "normalization": normalization,
        "input": (
            f"{channels}-channel images, float32 in [0, 1] by '{normalization}' normalization, "
            f"resized to {image_size[0]}x{image_size[1]} (height x width) with bilinear "
            "antialiased resizing"
        ),
        "metrics": {},
        "schedule": [],
        "signatures": _signature_description(image_size, channels, len(classes)),
        "files": {
            "saved_model": "saved_model.pb",
            "keras_model": MODEL_FILE,
            "warmup": f"{WARMUP_DIR}/{WARMUP_FILE}",
        },
        "versions": {
            "cellkeras": cellkeras.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    clash = sorted(_RESERVED_CARD_KEYS & set(metadata or {}))
    if clash:
        raise ValueError(
            f"metadata may not set {clash}: they describe the exported graph; pass them as "
            "export_model arguments"
        )
    card.update(metadata or {})
    return card


def _check_arguments(
    model: keras.Model, classes: Sequence[str], image_size: Any, channels: int, normalization: str
) -> tuple[int, int]:
    from cellkeras.data.pipeline import parse_image_size

    size = parse_image_size(image_size)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names, got {list(classes)}")
    # Subclassed models that were never called have no symbolic inputs/outputs to check.
    outputs = getattr(model, "outputs", None) or []
    inputs = getattr(model, "inputs", None) or []
    if len(outputs) > 1:
        raise ValueError(f"the model must have one output (probabilities), has {outputs}")
    k = outputs[0].shape[-1] if outputs else None
    if k is not None and k != len(classes):
        raise ValueError(f"the model has {k} outputs but {len(classes)} classes were given")
    c = inputs[0].shape[-1] if inputs else None
    if c is not None and c != channels:
        raise ValueError(f"the model takes {c} channels but channels={channels}")
    return size


def export_model(
    model: keras.Model,
    export_dir: str | Path,
    *,
    classes: Sequence[str],
    image_size: int | tuple[int, int] | str,
    channels: int,
    normalization: str = "range",
    metadata: Mapping[str, Any] | None = None,
    version: int | None = None,
) -> Path:
    """Writes `export_dir/<version>/`: SavedModel, warmup requests, `model.keras`, model card.

    The folder appears whole or not at all: everything is written to
    `export_dir/.tmp-<version>-<pid>/`, which is renamed to the version folder at the end and
    removed on any failure.

    Args:
        model: a single-input Keras model taking float32 (B, H, W, channels) in [0, 1] and
            returning probabilities (B, len(classes)).
        export_dir: the folder TF Serving watches (`--model_base_path`); created when missing.
        classes: class names, in the order of the model's outputs.
        image_size: the size the model was trained at: int, (height, width) or "HxW".
        channels: the model's input channels.
        normalization: the training normalization, "range" or "percentile".
        metadata: merged into `model_card.json` (e.g. `metrics`, `schedule`, `model`, `run_dir`);
            must be JSON-serializable and may not override the keys that describe the graph.
        version: the version number; None takes the highest existing one + 1 (1 when none).

    Returns:
        The version folder.

    Raises:
        ValueError: for arguments that disagree with the model or each other.
        FileExistsError: when an explicitly requested `version` already exists.
    """
    size = _check_arguments(model, classes, image_size, channels, normalization)
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    auto_version = version is None
    version = next_version(export_dir) if auto_version else int(version)
    if version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version}")
    if (export_dir / str(version)).exists():
        raise FileExistsError(f"{export_dir / str(version)} already exists")

    tmp = export_dir / f"{TMP_PREFIX}{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run of a process with our pid
    try:
        card = _model_card(version, classes, size, channels, normalization, metadata)
        _write_saved_model(model, tmp, list(classes), size, channels, normalization)
        model.save(tmp / MODEL_FILE)
        write_warmup_file(tmp / WARMUP_DIR / WARMUP_FILE, _warmup_records(size, channels))
        _write_card(tmp / CARD_FILE, card)
        return _publish(tmp, export_dir, version, auto_version, card)
    finally:
        # After a successful rename tmp no longer exists; otherwise nothing half-written stays.
        shutil.rmtree(tmp, ignore_errors=True)


def _write_card(path: Path, card: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(card, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _publish(tmp: Path, export_dir: Path, version: int, auto_version: bool, card: dict) -> Path:
    """Renames the finished folder into place; an automatic version moves past a concurrent one."""
    while True:
        target = export_dir / str(version)
        try:
            # rename() never merges: it fails when another export took `target` meanwhile
            # (an empty leftover folder is replaced, which loses nothing).
            os.rename(tmp, target)
            return target
        except OSError:
            if not auto_version or not target.exists():
                raise
            version = max(version, *list_versions(export_dir)) + 1
            card["version"] = version
            _write_card(tmp / CARD_FILE, card)


def _write_saved_model(
    model: keras.Model,
    path: Path,
    classes: list[str],
    image_size: tuple[int, int],
    channels: int,
    normalization: str,
) -> None:
    class_names = tf.constant(classes, tf.string)

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = preprocess_bytes(image_bytes, image_size, channels, normalization)
        return _outputs(model(images, training=False), class_names)

    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        resized = resize_images(images, image_size)
        return _outputs(model(resized, training=False), class_names)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_DEFAULT,
        serve_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)],
    )
    archive.add_endpoint(
        SERVING_IMAGES,
        serve_images,
        input_signature=[
            tf.TensorSpec([None, None, None, channels], tf.float32, name=IMAGES_INPUT)
        ],
    )
    archive.write_out(str(path), verbose=False)
