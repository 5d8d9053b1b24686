"""Data sources, checks and the tf.data factory.

Every source returns an `ImageSet`; `make_dataset` turns one into batches at any image size.
Names are imported on first use, so `cellkeras --help` and the video tools do not pay for
loading TensorFlow.
"""

import importlib

_EXPORTS = {
    "BadInputError": "cellkeras.data.sources",
    "ImageError": "cellkeras.data.images",
    "ImageSet": "cellkeras.data.imageset",
    "check_images": "cellkeras.data.sources",
    "class_weights": "cellkeras.data.pipeline",
    "decode_image": "cellkeras.data.images",
    "load_class_folders": "cellkeras.data.sources",
    "load_labels_csv": "cellkeras.data.sources",
    "load_tfrecords": "cellkeras.data.tfrecord",
    "make_dataset": "cellkeras.data.pipeline",
    "parse_image_size": "cellkeras.data.pipeline",
    "read_image": "cellkeras.data.images",
    "split_imageset": "cellkeras.data.splits",
    "write_tfrecords": "cellkeras.data.tfrecord",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cellkeras.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return __all__
