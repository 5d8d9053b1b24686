"""TFRecord files of `tf.train.Example`s, the format TFX's ExampleGen writes.

Features: `image/encoded` (PNG/JPEG/TIFF bytes), `image/class/label` (int64), optionally
`image/class/text` (the class name). Plain and gzip files are both read; the compression is
found from each file's first bytes, so a folder may mix them.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from cellkeras.data.imageset import ImageSet
from cellkeras.io.errors import BadInputError

ENCODED_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
TEXT_KEY = "image/class/text"
_GZIP_MAGIC = b"\x1f\x8b"


def expand_tfrecord_paths(patterns: str | Sequence[str]) -> list[str]:
    """Files named by globs, folders (every file inside) or paths; comma-separated in a string."""
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p]
    files: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            files += sorted(str(p) for p in Path(pattern).iterdir() if p.is_file())
        else:
            matched = sorted(glob.glob(pattern))
            if not matched:
                raise BadInputError([(pattern, "no TFRecord file matches")])
            files += matched
    return files


def _compression(path: str) -> str:
    with open(path, "rb") as handle:
        return "GZIP" if handle.read(2) == _GZIP_MAGIC else ""


def shard_tfrecord_files(patterns: str | Sequence[str], index: int, count: int) -> list[str]:
    """Share `index` of `count` of the TFRecord files: `files[index::count]` of the sorted,
    deduplicated expansion of `patterns`, so every reader given the same patterns takes a
    different, fixed set of whole files and together they take each file once.

    Raises:
        ValueError: fewer files than shares (some share would be empty), naming the patterns,
            the files and the share count.
        BadInputError: a pattern that matches no file.
    """
    if not 0 <= index < count:
        raise ValueError(f"share index {index} is out of range for {count} shares")
    files = sorted(set(expand_tfrecord_paths(patterns)))
    if len(files) < count:
        raise ValueError(
            f"{len(files)} TFRecord file(s) {files} (from {patterns!r}) cannot be shared among "
            f"{count} readers by file: write at least {count} shards"
        )
    return files[index::count]


def load_tfrecords(
    patterns: str | Sequence[str],
    classes: Sequence[str] | None = None,
    *,
    resolve_classes: Callable[[dict[int, str] | None, int], Sequence[str]] | None = None,
) -> ImageSet:
    """Reads every example into an `ImageSet` of encoded images (pixels are decoded later).

    Class names come from `classes`, else from `image/class/text` where every example has one,
    else they are the label numbers as strings.

    `resolve_classes(named, num_labels)`, when given and `classes` is None, decides the class
    names instead: `named` maps each label read to its `image/class/text` (None when some
    example has none), `num_labels` is the largest label read plus one. A reader of one share
    of a dataset's files uses it to agree with the other readers on the whole dataset's classes
    (a share may lack a class, or its highest label).

    Raises:
        BadInputError: a file that is not a TFRecord, or an example without the required
            features or with a label outside the classes, named by file and record number.
    """
    feature_spec = {
        ENCODED_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
        LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        TEXT_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    encoded: list[bytes] = []
    labels: list[int] = []
    texts: list[str] = []
    problems: list[tuple[str, str]] = []
    for path in expand_tfrecord_paths(patterns):
        records = tf.data.TFRecordDataset(path, compression_type=_compression(path))
        number = 0
        try:
            for batch in records.batch(512).as_numpy_iterator():
                for offset, example in _parse_batch(batch, feature_spec, problems, path, number):
                    where = f"{path} record {number + offset}"
                    data, label = example[ENCODED_KEY], int(example[LABEL_KEY])
                    if not data:
                        problems.append((where, f"missing {ENCODED_KEY}"))
                    elif label < 0:
                        problems.append((where, f"missing or negative {LABEL_KEY}"))
                    else:
                        encoded.append(data)
                        labels.append(label)
                        texts.append(example[TEXT_KEY].decode("utf-8"))
                number += len(batch)
        except tf.errors.DataLossError as err:
            problems.append((path, f"not a readable TFRecord file ({err.message})"))
    if not encoded and not problems:
        problems.append((str(patterns), "the TFRecord files hold no examples"))

    named = None
    if classes is None and texts and all(texts):
        named = {}
        for label, text in zip(labels, texts, strict=True):
            if named.setdefault(label, text) != text:
                problems.append(
                    (text, f"label {label} is named both {named[label]!r} and {text!r}")
                )
    num_labels = max(labels, default=-1) + 1
    if classes is not None:
        names = list(classes)
    elif resolve_classes is not None:
        names = list(resolve_classes(named, num_labels))
    else:
        names = class_names(named, num_labels)
    out_of_range = sorted({label for label in labels if label >= len(names)})
    if out_of_range:
        problems.append((str(patterns), f"labels {out_of_range} out of range for classes {names}"))
    if problems:
        raise BadInputError(problems)
    return ImageSet(classes=names, labels=np.array(labels), encoded=encoded, name="tfrecords")


def class_names(named: dict[int, str] | None, num_labels: int) -> list[str]:
    """Names of labels 0..num_labels-1: each label's text where `named` gives one, else (or
    for a label without one) the label number as a string."""
    return [(named or {}).get(i, str(i)) for i in range(num_labels)]


def _parse_batch(batch, feature_spec, problems, path, first_number):
    """Yields (offset, {feature: numpy value}) for each parseable record of a batch.

    Parsing a batch in one op is about 100x faster than one eager call per record; only a batch
    that fails is parsed again record by record, to name the bad record.
    """
    try:
        parsed = tf.io.parse_example(batch, feature_spec)
        columns = {key: value.numpy() for key, value in parsed.items()}
        for offset in range(len(batch)):
            yield offset, {key: column[offset] for key, column in columns.items()}
        return
    except tf.errors.InvalidArgumentError:
        pass
    for offset, record in enumerate(batch):
        try:
            parsed = tf.io.parse_single_example(record, feature_spec)
        except tf.errors.InvalidArgumentError as err:
            reason = err.message.splitlines()[0]
            problems.append(
                (
                    f"{path} record {first_number + offset}",
                    f"not a tf.train.Example with the expected features ({reason})",
                )
            )
            continue
        yield offset, {key: value.numpy() for key, value in parsed.items()}


def _encode_png(pixels: np.ndarray) -> bytes:
    """PNG keeps 8- and 16-bit pixels exactly; floats in [0, 1] become 16-bit."""
    if pixels.dtype not in (np.uint8, np.uint16):
        pixels = np.round(np.clip(pixels, 0.0, 1.0) * 65535).astype(np.uint16)
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    elif pixels.ndim == 3 and pixels.shape[-1] not in (1, 4):
        raise ValueError(f"PNG cannot hold {pixels.shape[-1]} channels; pick 1 or 3 first")
    ok, buffer = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def make_example(encoded: bytes, label: int, class_name: str | None = None) -> tf.train.Example:
    feature = {
        ENCODED_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    if class_name is not None:
        feature[TEXT_KEY] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[class_name.encode("utf-8")])
        )
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_tfrecords(
    imageset: ImageSet,
    output_prefix: str | Path,
    num_shards: int = 1,
    compress: bool = True,
) -> list[str]:
    """Writes any `ImageSet` as TFRecord shards `PREFIX-00000-of-0000N[.gz]`.

    Files are copied byte for byte (no re-encoding loss); in-memory pixels are PNG-encoded.
    Each shard is written to a temporary name and renamed when complete, so an interrupted
    write leaves no shard that looks finished.

    Returns:
        The shard paths.
    """
    output_prefix = Path(output_prefix)
    output_prefix.parent.mkdir(parents=True, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP" if compress else "")
    suffix = ".gz" if compress else ""
    shards = [f"{output_prefix}-{k:05d}-of-{num_shards:05d}{suffix}" for k in range(num_shards)]
    temporaries = []
    writers = []
    for _ in shards:
        handle, temporary = tempfile.mkstemp(prefix=".partial-", dir=output_prefix.parent)
        os.close(handle)
        temporaries.append(temporary)
        writers.append(tf.io.TFRecordWriter(temporary, options))
    try:
        for i in range(len(imageset)):
            if imageset.paths is not None:
                data = Path(imageset.paths[i]).read_bytes()
            elif imageset.encoded is not None:
                data = imageset.encoded[i]
            else:
                data = _encode_png(imageset.images[i])
            label = int(imageset.labels[i])
            example = make_example(data, label, imageset.classes[label])
            writers[i % num_shards].write(example.SerializeToString())
    except BaseException:
        for writer, temporary in zip(writers, temporaries, strict=True):
            writer.close()
            os.unlink(temporary)
        raise
    for writer, temporary, shard in zip(writers, temporaries, shards, strict=True):
        writer.close()
        os.replace(temporary, shard)
    return shards
