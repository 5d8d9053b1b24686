"""Data sources, checks and the tf.data factory.

Every source returns an `ImageSet`; `make_dataset` turns one into batches at any image size.
"""

from cellkeras.data.images import ImageError, decode_image, read_image
from cellkeras.data.imageset import ImageSet
from cellkeras.data.pipeline import class_weights, make_dataset, parse_image_size
from cellkeras.data.sources import BadInputError, check_images, load_class_folders, load_labels_csv
from cellkeras.data.tfrecord import load_tfrecords, write_tfrecords

__all__ = [
    "BadInputError",
    "ImageError",
    "ImageSet",
    "check_images",
    "class_weights",
    "decode_image",
    "load_class_folders",
    "load_labels_csv",
    "load_tfrecords",
    "make_dataset",
    "parse_image_size",
    "read_image",
    "write_tfrecords",
]
