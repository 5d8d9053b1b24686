"""The serving signatures' in-graph preprocessing, shared by training-time parity checks.

Signatures (both return `probabilities` float32 (B, K), `class_index` int64 (B,) and
`class_name` string (B,)):

* `serving_default(image_bytes)`: string (B,) of encoded PNG (8 or 16 bit), JPEG, BMP or GIF
  (first frame) files. Each image is decoded in the graph and goes through the training
  pipeline's steps exactly (`cellkeras.io.images.decode_image`, then
  `tf.image.resize(bilinear, antialias=True)` as in `cellkeras.data.pipeline`): channels are
  converted on the stored integers (grey → RGB replicates, RGB → grey is the luma formula of
  `cellkeras.io.images`: `LUMA_WEIGHTS`, exact in float64, floored to the stored type; alpha is
  dropped), then normalized ("range": uint8 / 255, uint16 / 65535; "percentile": per-channel
  1st-99.8th percentile stretch), then resized to `image_size`. JPEGs are decoded with `dct_method="INTEGER_ACCURATE"`, which gives the same
  pixels as OpenCV (TensorFlow's default, INTEGER_FAST, differs by up to 8 grey levels).
  TensorFlow has no TIFF decoder, so TIFF bytes are refused with a message that says what to do:
  decode on the client with `cellkeras.data.read_image` (which also reads multichannel and 12-bit
  TIFFs) and call `serving_images`, or re-encode as a 16-bit PNG (lossless). Bytes that are no
  image raise `InvalidArgumentError` naming the batch index and the first bytes.
  The input is named `image_bytes` so TF Serving's REST API accepts `{"b64": ...}` values.
* `serving_images(images)`: float32 (B, H, W, C) already normalized to [0, 1], any H and W; only
  resized in the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from cellkeras.io.formats import BMP_MAGIC, GIF_MAGICS, JPEG_MAGIC, PNG_MAGIC, TIFF_MAGICS
from cellkeras.io.images import LUMA_WEIGHTS, NORMALIZATIONS, NORMALIZE_PERCENTILES

SERVING_DEFAULT = "serving_default"
SERVING_IMAGES = "serving_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
OUTPUT_KEYS = ("probabilities", "class_index", "class_name")

# Offset of the bit-depth byte of a PNG: 8 signature + 4 length + 4 "IHDR" + 4 width + 4 height.
_PNG_BIT_DEPTH_AT = 24


def _luminance(rgb: tf.Tensor) -> tf.Tensor:
    """Grey from integer RGB, bit-identical to `cellkeras.io.images.to_grey`.

    The same explicit formula, ``floor(r * w0 + g * w1 + b * w2)`` in float64 with the float32
    `LUMA_WEIGHTS`: every product and sum is exact (integers below 2**16 times float32 weights),
    so neither the order of the additions nor a fused multiply-add can change a grey level.
    """
    values = tf.cast(rgb, tf.float64)
    weights = [float(np.float32(w)) for w in LUMA_WEIGHTS]
    grey = values[..., 0] * weights[0] + values[..., 1] * weights[1] + values[..., 2] * weights[2]
    return tf.cast(tf.floor(grey), rgb.dtype)[..., None]


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
    """`cellkeras.io.images.normalize` on integer (H, W, C) pixels."""
    if normalization == "range":
        # A true division, as numpy does. Grappler rewrites `x / constant` in a graph into
        # `x * (1 / constant)`, which is one ulp off in ~half the grey levels; DivNoNan is left
        # alone (and the divisor is never 0).
        top = tf.constant(pixels.dtype.max, tf.float32)
        return tf.math.divide_no_nan(tf.cast(pixels, tf.float32), top)
    values = tf.cast(pixels, tf.float32)
    columns = tf.sort(tf.reshape(values, [-1, tf.shape(values)[-1]]), axis=0)
    low = _percentile(columns, NORMALIZE_PERCENTILES[0])
    high = _percentile(columns, NORMALIZE_PERCENTILES[1])
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

    is_png = starts(PNG_MAGIC)
    index = tf.constant(5)
    # Later assignments win, so the most specific test comes last.
    for condition, value in (
        (starts(*TIFF_MAGICS), 4),
        (tf.logical_or(starts(BMP_MAGIC), starts(*GIF_MAGICS)), 3),
        (starts(JPEG_MAGIC), 2),
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
    """Decodes one encoded image in the graph as `cellkeras.io.images.decode_image` does.

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


def serving_outputs(probabilities: Any, classes: tf.Tensor) -> dict[str, tf.Tensor]:
    probabilities = tf.cast(probabilities, tf.float32)
    class_index = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
    return {
        "probabilities": probabilities,
        "class_index": class_index,
        "class_name": tf.gather(classes, class_index),
    }
