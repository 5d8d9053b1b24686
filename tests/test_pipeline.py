"""make_dataset: shapes, normalization, every storage kind, balancing, augmentation hook."""

import numpy as np
import pytest
import tensorflow as tf

from cellkeras.data import (
    ImageSet,
    check_images,
    class_weights,
    load_class_folders,
    load_tfrecords,
    make_dataset,
    parse_image_size,
    write_tfrecords,
)


def _arrays(n=30, counts=None, size=(12, 16), dtype=np.uint8):
    labels = np.repeat(np.arange(len(counts)), counts) if counts else np.arange(n) % 3
    pixels = np.zeros((len(labels), *size, 3), dtype)
    pixels[...] = (labels * 40 + 10).astype(dtype)[:, None, None, None]
    return ImageSet(classes=["a", "b", "c"][: labels.max() + 1], labels=labels, images=pixels)


def test_batches_shapes_and_values():
    images = _arrays()
    batches = list(make_dataset(images, (8, 10), training=False, batch_size=7))
    assert len(batches) == 5 and batches[-1][0].shape == (2, 8, 10, 3)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and y.shape == (30, 3)
    # Flat images survive resizing; evaluation keeps the stored order.
    np.testing.assert_allclose(x[:, 4, 4, 0], (images.labels * 40 + 10) / 255, rtol=1e-5)
    np.testing.assert_array_equal(y.argmax(1), images.labels)


def test_training_shuffles_reproducibly_and_per_epoch():
    images = _arrays()
    ds = make_dataset(images, 8, training=True, batch_size=30, seed=3)
    first, second = (next(iter(ds))[1].numpy().argmax(1) for _ in range(2))
    again = next(iter(make_dataset(images, 8, training=True, batch_size=30, seed=3)))[1]
    np.testing.assert_array_equal(first, again.numpy().argmax(1))
    epochs = [np.concatenate([b[0].numpy()[:, 0, 0, 0] for b in ds]) for _ in range(2)]
    assert not np.array_equal(epochs[0], epochs[1])


def test_oversampling_balances_classes():
    images = _arrays(counts=[40, 8, 4])
    ds = make_dataset(images, 8, training=True, batch_size=16, balance="oversample", seed=0)
    labels = np.concatenate([b[1].numpy().argmax(1) for b in ds])
    assert len(labels) == 3 * 40 and ds.cardinality() == 8
    assert np.bincount(labels).tolist() == [40, 40, 40]  # exactly, not on average
    weights = class_weights(images)
    assert weights[2] == pytest.approx(52 / (3 * 4))


def test_oversampling_draws_a_new_class_order_every_epoch():
    images = _arrays(counts=[12, 4, 2])
    images.images[:, 0, 0, 1] = np.arange(len(images))  # each image's index, in green
    ds = make_dataset(images, (12, 16), training=True, batch_size=9, balance="oversample", seed=0)
    epochs = []
    for _ in range(3):
        batches = [(x.numpy(), y.numpy()) for x, y in ds]
        labels = np.concatenate([y.argmax(1) for _, y in batches])
        index = np.rint(np.concatenate([x[:, 0, 0, 1] for x, _ in batches]) * 255).astype(int)
        assert np.bincount(labels).tolist() == [12, 12, 12]  # every epoch balanced
        assert sorted(index[labels == 0]) == list(range(12))  # the largest class once each
        # The smaller classes go round in full passes: each image 3 or 6 times.
        assert np.bincount(index[labels == 1]).tolist()[12:] == [3, 3, 3, 3]
        epochs.append(labels)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    again = make_dataset(images, (12, 16), training=True, batch_size=9, balance="oversample")
    first = np.concatenate([y.numpy().argmax(1) for _, y in again])
    np.testing.assert_array_equal(first, epochs[0])  # reproducible from the seed


def test_files_and_tfrecords_give_the_same_pixels(class_tree, tmp_path):
    folders = load_class_folders(class_tree)
    checked, channels = check_images(folders, verbose=False)
    write_tfrecords(checked, tmp_path / "t")
    records = load_tfrecords(str(tmp_path / "t-*"))
    a = next(iter(make_dataset(checked, 10, training=False, batch_size=18, channels=channels)))
    b = next(iter(make_dataset(records, 10, training=False, batch_size=18, channels=channels)))
    np.testing.assert_allclose(a[0], b[0])
    grey = next(iter(make_dataset(checked, 10, training=False, batch_size=4, channels=1)))
    assert grey[0].shape == (4, 10, 10, 1)
    # Stretched files decode to float32 as the pipeline declares (float64 once broke it).
    for normalization in ("percentile", "frame_percentile"):
        kwargs = dict(batch_size=4, channels=channels, normalization=normalization)
        stretched = next(iter(make_dataset(checked, 10, training=True, **kwargs)))[0].numpy()
        assert stretched.dtype == np.float32 and stretched.max() > 0


def test_augment_receives_a_dict_and_only_in_training():
    calls = []

    def augment(batch):
        calls.append(sorted(batch))
        return {"images": 1.0 - batch["images"], "labels": batch["labels"]}

    images = _arrays()
    x_train = next(iter(make_dataset(images, 8, training=True, augment=augment, seed=0)))[0]
    x_eval = next(iter(make_dataset(images, 8, training=False, augment=augment)))[0]
    assert calls and calls[0] == ["images", "labels"]
    assert float(tf.reduce_min(x_train)) > 0.5 > float(tf.reduce_max(x_eval))


def test_16bit_arrays_and_percentile():
    images = _arrays(dtype=np.uint16)
    x = next(iter(make_dataset(images, 8, training=False)))[0].numpy()
    assert x.max() < 0.01
    images.images[:, :, :8] = 5000  # a bright left half sets each image's range
    x = next(iter(make_dataset(images, 8, training=False, normalization="percentile")))[0]
    assert float(tf.reduce_max(x)) == pytest.approx(1.0)
    assert float(tf.reduce_min(x)) == pytest.approx(0.0)


@pytest.mark.parametrize("bad", ["0", "12y", "4x0", "a"])
def test_image_size_parsing(bad):
    assert parse_image_size("24x32") == (24, 32) and parse_image_size(16) == (16, 16)
    with pytest.raises(ValueError):
        parse_image_size(bad)
