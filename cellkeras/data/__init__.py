"""Data sources, checks and the tf.data factory.

Every source returns an `ImageSet`; `make_dataset` turns one into batches at any image size.
Names are imported on first use, so `cellkeras --help` and the video tools do not pay for
loading TensorFlow.
"""

from cellkeras._lazy import lazy_exports

_EXPORTS = {
    "BadInputError": "cellkeras.io.errors",
    "ImageError": "cellkeras.io.errors",
    "ImageSet": "cellkeras.data.imageset",
    "check_images": "cellkeras.data.sources",
    "class_weights": "cellkeras.data.pipeline",
    "decode_image": "cellkeras.io.images",
    "load_class_folders": "cellkeras.data.sources",
    "load_labels_csv": "cellkeras.data.sources",
    "load_tfrecords": "cellkeras.data.tfrecord",
    "make_dataset": "cellkeras.data.pipeline",
    "parse_image_size": "cellkeras.io.images",
    "parse_channels": "cellkeras.io.images",
    "read_image": "cellkeras.io.images",
    "split_imageset": "cellkeras.data.splits",
    "time_block_split": "cellkeras.data.splits",
    "write_tfrecords": "cellkeras.data.tfrecord",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
