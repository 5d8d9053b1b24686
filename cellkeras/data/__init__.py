"""Data sources, checks and the tf.data factory.

Every source returns an `ImageSet`; `make_dataset` turns one into batches at any image size.
Names are imported on first use, so `cellkeras --help` and the video tools do not pay for
loading TensorFlow.
"""

import lazy_loader

# Plain imports: `cellkeras.io` loads no TensorFlow, and lazy_loader only reaches submodules.
from cellkeras.io.errors import BadInputError as BadInputError
from cellkeras.io.errors import ImageError as ImageError
from cellkeras.io.images import decode_image as decode_image
from cellkeras.io.images import parse_channels as parse_channels
from cellkeras.io.images import parse_image_size as parse_image_size
from cellkeras.io.images import read_image as read_image

__getattr__, _, _lazy_names = lazy_loader.attach(
    __name__,
    submod_attrs={
        "imageset": ["ImageSet"],
        "pipeline": ["class_weights", "make_dataset"],
        "sources": ["check_images", "load_class_folders", "load_labels_csv"],
        "splits": ["split_imageset", "time_block_split"],
        "tfrecord": ["load_tfrecords", "write_tfrecords"],
    },
)
__all__ = sorted(
    [*_lazy_names, "BadInputError", "ImageError", "decode_image", "parse_channels",
     "parse_image_size", "read_image"]
)  # fmt: skip


def __dir__() -> list[str]:
    # lazy_loader's own lists only the lazy names.
    return __all__
