"""TFRecord round trips (plain and gzip) and errors that name the bad record."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from cellkeras.data import (
    BadInputError,
    ImageSet,
    decode_image,
    load_class_folders,
    load_tfrecords,
    write_tfrecords,
)
from cellkeras.data.tfrecord import make_example


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_from_arrays_is_lossless(tmp_path, compress):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65535, (5, 9, 10, 3), dtype=np.uint16)
    images = ImageSet(classes=["a", "b"], labels=[0, 1, 0, 1, 1], images=pixels)
    shards = write_tfrecords(images, tmp_path / "data", num_shards=2, compress=compress)
    assert len(shards) == 2 and shards[0].endswith(".gz") == compress
    back = load_tfrecords(str(tmp_path / "data-*"))
    assert back.classes == ["a", "b"]
    # Shards interleave the records; match them back by content.
    restored = {
        tuple(decode_image(e).ravel()[:8]): int(lbl)
        for e, lbl in zip(back.encoded, back.labels, strict=True)
    }
    for image, label in zip(pixels, images.labels, strict=True):
        assert restored[tuple((image / 65535).astype(np.float32).ravel()[:8])] == label


def test_files_are_copied_byte_for_byte(class_tree, tmp_path):
    images = load_class_folders(class_tree)
    write_tfrecords(images, tmp_path / "tree")
    back = load_tfrecords([str(tmp_path)])
    assert back.classes == images.classes
    assert back.encoded[0] == Path(images.paths[0]).read_bytes()


def test_classes_from_labels_without_text(tmp_path):
    path = str(tmp_path / "plain.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for label in (0, 2):
            writer.write(make_example(b"\x89PNG\r\n\x1a\n", label).SerializeToString())
    assert load_tfrecords(path).classes == ["0", "1", "2"]
    with pytest.raises(BadInputError, match="labels \\[2\\] out of range"):
        load_tfrecords(path, classes=["a", "b"])


def test_bad_record_and_bad_file_are_named(tmp_path):
    path = str(tmp_path / "mixed.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(make_example(b"\x89PNG\r\n\x1a\n", 0).SerializeToString())
        writer.write(b"this is not a tf.Example")
        writer.write(make_example(b"", 1).SerializeToString())
    with pytest.raises(BadInputError) as caught:
        load_tfrecords(path)
    message = str(caught.value)
    assert "mixed.tfrecord record 1: not a tf.train.Example" in message
    assert "mixed.tfrecord record 2: missing image/encoded" in message
    junk = tmp_path / "junk.tfrecord"
    junk.write_bytes(b"definitely not a record file" * 10)
    with pytest.raises(BadInputError, match="junk.tfrecord: not a readable TFRecord"):
        load_tfrecords(str(junk))
    with pytest.raises(BadInputError, match="no TFRecord file matches"):
        load_tfrecords(str(tmp_path / "nothing-*"))
