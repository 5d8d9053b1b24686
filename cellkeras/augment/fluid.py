"""`FluidDistortion`: a vectorized, XLA-compiled random warp for cell images.

The seed simulated "fluidity of cells" with Augmentor's `random_distortion` (a 4x4 mesh whose
interior vertices move at random) followed by flips, a random crop and a resize. Done one
image at a time that is a Python loop; done as a chain of Keras layers it is one resample per
layer. This layer draws one transformation per image (a smooth displacement field, "mesh" or
"elastic", plus flips, rotation, translation and crop) and resamples the whole batch once
through the kernel in `cellkeras.augment.warp`, which says how.

All sizes are fractions of the image's height (y) and width (x), so one setting means the same
distortion at 64 px and at 256 px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import tensorflow as tf
from keras_cv import bounding_box
from keras_cv.layers import VectorizedBaseImageAugmentationLayer

# Re-exported: the layer's public helpers lived here before the kernel had its own module.
from cellkeras.augment.warp import FILL_MODES as FILL_MODES
from cellkeras.augment.warp import MODES as MODES
from cellkeras.augment.warp import compiled_warp
from cellkeras.augment.warp import control_weights as control_weights
from cellkeras.augment.warp import forward_map_points as forward_map_points
from cellkeras.augment.warp import num_control_points as num_control_points

# Points sampled along each box edge before taking the bounding box of their images.
_POINTS_PER_EDGE = 9


def _pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """`value` as an (x, y) pair; a scalar is used for both."""
    if isinstance(value, int | float):
        return float(value), float(value)
    pair = tuple(float(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be a number or an (x, y) pair, got {value!r}.")
    return pair


@keras.saving.register_keras_serializable(package="cellkeras")
class FluidDistortion(VectorizedBaseImageAugmentationLayer):
    """Random smooth distortion ("cell fluidity"), optionally fused with flips, rotation,
    translation and a random crop, applied to a whole batch in one resample.

    Every image in a batch gets its own random field; x and y displacements are drawn
    independently. The layer follows keras-cv's calling convention: call it on an image batch
    (B, H, W, C) or a single image, or on a dict with "images" and optionally "labels"
    (passed through), "bounding_boxes" (keras-cv dict, moved with the warp) and
    "segmentation_masks" (warped with nearest-neighbour sampling). It augments only when
    `training` is true (the default outside a model; `model.predict` turns it off).

    Output dtype equals input dtype (uint8 is rounded back); values never leave the range of
    the input because each output pixel is a convex combination of four input pixels.

    Why keras-cv's `VectorizedBaseImageAugmentationLayer`: it is the base of the other
    augmentations the presets chain (RandAugment, MixUp, CutMix), so the dict convention,
    keras-cv box format and ragged boxes behave the same along the chain. Its quirks on
    Keras 3, handled here: `seed=0` fell back to the unseeded global generator, there is no
    `training` argument (it augmented at inference), and it casts every input to float32.

    Args:
        mode: "mesh" (Augmentor-style grid, border fixed) or "elastic" (smooth Gaussian field).
        magnitude: distortion strength as a fraction of the image's width (x) and height (y).
            "mesh": interior grid vertices move by U(-magnitude, magnitude) x size per axis, so
            the largest displacement is `magnitude` x size and its std at a vertex is
            `magnitude / sqrt(3)` x size. "elastic": every pixel moves by N(0, magnitude^2) x
            size per axis. 0 turns the distortion off. Default 0.03 matches the seed's Augmentor
            `magnitude=8` on 240x320 images (8/320 = 0.025, 8/240 = 0.033).
        grid: mesh cells (x, y), or one number for both; the seed's 4x4.
        smoothness: elastic correlation length (control-point spacing) as a fraction of size.
        flip_horizontal: flip left-right with probability 0.5.
        flip_vertical: flip top-bottom with probability 0.5.
        rotation: maximum rotation in degrees, drawn from U(-rotation, rotation).
        translate: maximum translation as a fraction of (width, height), drawn uniformly; one
            number for both axes.
        zoom: (low, high) range of the zoom drawn per image, as Keras' `RandomZoom`: the
            source area is scaled by U(1 + low, 1 + high), so positive values zoom out; one
            number z means (-z, z). 0 is no zoom.
        zoom_width: a separate range for the width's zoom, drawn independently (Keras'
            `width_factor`); None keeps the aspect ratio (one draw for both axes).
        crop_area: area fraction of a random crop (same aspect ratio, uniform position) that is
            resized back to the input size; 1 means no crop. The seed used 0.9.
        fill_mode: how positions outside the image are filled: "reflect" (mirror, default),
            "nearest" (edge pixel) or "constant" (`fill_value`).
        fill_value: value for `fill_mode="constant"`, in the images' units.
        interpolation: "bilinear" or "nearest" for images (masks always use nearest).
        bounding_box_format: keras-cv box format of "bounding_boxes" inputs, e.g. "xyxy".
        seed: makes the sequence of draws reproducible (a fresh layer with the same seed
            replays it). Draw order is call order, so inside a parallel `tf.data` map the
            assignment of draws to batches is only fixed with `deterministic=True`.
        jit_compile: compile the resampling with XLA (several times faster on CPU).
        **kwargs: passed to `keras.layers.Layer`.
    """

    def __init__(
        self,
        mode: str = "mesh",
        magnitude: float = 0.03,
        grid: int | Sequence[int] = 4,
        smoothness: float = 0.15,
        flip_horizontal: bool = False,
        flip_vertical: bool = False,
        rotation: float = 0.0,
        translate: float | Sequence[float] = 0.0,
        zoom: float | Sequence[float] = 0.0,
        zoom_width: float | Sequence[float] | None = None,
        crop_area: float = 1.0,
        fill_mode: str = "reflect",
        fill_value: float = 0.0,
        interpolation: str = "bilinear",
        bounding_box_format: str | None = None,
        seed: int | None = None,
        jit_compile: bool = True,
        **kwargs,
    ) -> None:
        # keras-cv tests `if seed:` (0 takes the global generator, refused by op determinism).
        super().__init__(seed=None if seed is None else 1, **kwargs)
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; known modes: {', '.join(MODES)}.")
        if fill_mode not in FILL_MODES:
            raise ValueError(f"Unknown fill_mode {fill_mode!r}; known: {', '.join(FILL_MODES)}.")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(
                f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}."
            )
        if magnitude < 0:
            raise ValueError(f"magnitude must be >= 0, got {magnitude}.")
        if not 0.0 < smoothness <= 1.0:
            raise ValueError(f"smoothness must be in (0, 1], got {smoothness}.")
        if not 0.0 < crop_area <= 1.0:
            raise ValueError(f"crop_area must be in (0, 1], got {crop_area}.")
        gx, gy = (int(grid), int(grid)) if isinstance(grid, int) else tuple(int(g) for g in grid)
        if gx < 2 or gy < 2:
            raise ValueError(f"grid needs at least 2 cells per axis, got {grid!r}.")
        self.mode = mode
        self.magnitude = float(magnitude)
        self.grid = (gx, gy)
        self.smoothness = float(smoothness)
        self.flip_horizontal = bool(flip_horizontal)
        self.flip_vertical = bool(flip_vertical)
        self.rotation = float(rotation)
        self.translate = _pair(translate, "translate")
        self.zoom = _zoom_range(zoom, "zoom")
        self.zoom_width = None if zoom_width is None else _zoom_range(zoom_width, "zoom_width")
        self.crop_area = float(crop_area)
        self.fill_mode = fill_mode
        self.fill_value = float(fill_value)
        self.interpolation = interpolation
        self.bounding_box_format = bounding_box_format
        self.seed = seed
        self.jit_compile = bool(jit_compile)
        if seed is not None:
            self._random_generator = tf.random.Generator.from_seed(seed)
        self._num_ctrl = num_control_points(mode, self.grid, self.smoothness)

    # -- randomness -------------------------------------------------------------------------

    def get_random_transformation_batch(self, batch_size, **kwargs) -> dict[str, tf.Tensor]:
        """Draw one transformation per image: control displacements and an affine part."""
        gen = self._random_generator
        ny, nx = self._num_ctrl
        # x and y come from separate slots of one draw, so they are independent.
        if self.mode == "mesh":
            ctrl = gen.uniform((batch_size, ny, nx, 2), -1.0, 1.0)
            interior = tf.pad(tf.ones((ny - 2, nx - 2, 1)), [[1, 1], [1, 1], [0, 0]])
            ctrl = ctrl * interior
        else:
            ctrl = gen.normal((batch_size, ny, nx, 2))
        u = gen.uniform((batch_size, 7), 0.0, 1.0)
        angle = (2.0 * u[:, 0] - 1.0) * math.radians(self.rotation)
        fh = tf.where(u[:, 1] < 0.5, -1.0, 1.0) if self.flip_horizontal else tf.ones_like(angle)
        fv = tf.where(u[:, 2] < 0.5, -1.0, 1.0) if self.flip_vertical else tf.ones_like(angle)
        scale = math.sqrt(self.crop_area)
        # Crop position and translation as fractions of size; the kernel multiplies by W, H.
        ox = (2.0 * u[:, 3] - 1.0) * (1.0 - scale) * 0.5 + (2.0 * u[:, 5] - 1.0) * self.translate[0]
        oy = (2.0 * u[:, 4] - 1.0) * (1.0 - scale) * 0.5 + (2.0 * u[:, 6] - 1.0) * self.translate[1]
        cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
        zx = zy = 1.0
        if self.zoom != (0.0, 0.0) or self.zoom_width is not None:
            # A separate draw, so that layers without zoom keep their stream of draws.
            z = gen.uniform((batch_size, 2), 0.0, 1.0)
            low, high = self.zoom
            zy = 1.0 + low + (high - low) * z[:, 0]
            low, high = self.zoom_width or self.zoom
            zx = zy if self.zoom_width is None else 1.0 + low + (high - low) * z[:, 1]
        fh, fv = fh * zx, fv * zy
        affine = tf.stack([cos * fh, -sin * fv, sin * fh, cos * fv, ox, oy], axis=-1)
        return {"ctrl": ctrl, "affine": affine}

    def warp(self, images, ctrl, affine, interpolation: str | None = None) -> tf.Tensor:
        """Apply a given (not random) transformation; for animations and checks.

        Args:
            images: (B, H, W, C) batch, any real dtype; computed in float32.
            ctrl: (B, rows, cols, 2) control displacements in units of `magnitude`
                (x then y); the lattice size is `num_control_points(mode, grid, smoothness)`.
            affine: (B, 6) rows `[a, b, c, d, ox, oy]`: source = [[a, b], [c, d]] @ q + offset,
                with q the displaced output pixel relative to the centre and (ox, oy) the
                offset as fractions of (width, height). `[1, 0, 0, 1, 0, 0]` is no affine.
            interpolation: defaults to the layer's.

        Returns:
            float32 (B, H, W, C).
        """
        transformations = {
            "ctrl": tf.convert_to_tensor(ctrl, tf.float32),
            "affine": tf.convert_to_tensor(affine, tf.float32),
        }
        return self._resample(images, transformations, interpolation or self.interpolation)

    # -- keras-cv hooks ---------------------------------------------------------------------

    def _resample(self, images: tf.Tensor, transformations, interpolation: str) -> tf.Tensor:
        fn = compiled_warp(
            self.mode, self.smoothness, self.fill_mode, interpolation, self.jit_compile
        )
        return fn(
            tf.cast(images, tf.float32),
            transformations["ctrl"],
            transformations["affine"],
            tf.constant(self.magnitude, tf.float32),
            tf.constant(self.fill_value, tf.float32),
        )

    def augment_images(self, images, transformations, **kwargs):
        return self._resample(images, transformations, self.interpolation)

    def augment_labels(self, labels, transformations, **kwargs):
        return labels

    def augment_segmentation_masks(self, segmentation_masks, transformations, **kwargs):
        return self._resample(segmentation_masks, transformations, "nearest")

    def augment_bounding_boxes(self, bounding_boxes, transformations, raw_images=None, **kwargs):
        if self.bounding_box_format is None:
            raise ValueError(
                "FluidDistortion got bounding boxes but no `bounding_box_format`; pass e.g. "
                "FluidDistortion(bounding_box_format='xyxy')."
            )
        bounding_boxes = bounding_box.to_dense(bounding_boxes)
        bounding_boxes = bounding_box.convert_format(
            bounding_boxes, source=self.bounding_box_format, target="xyxy", images=raw_images
        )
        boxes = bounding_boxes["boxes"]  # (B, N, 4) pixel edges: the image spans [0, W]
        shape = tf.shape(raw_images)
        h, w = shape[1], shape[2]
        bsz, n = tf.shape(boxes)[0], tf.shape(boxes)[1]
        # Points along the four edges, in pixel-index coordinates (pixel centres at integers).
        t = tf.linspace(0.0, 1.0, _POINTS_PER_EDGE)
        x1, y1, x2, y2 = (boxes[..., i, None] - 0.5 for i in range(4))
        xs = tf.concat([x1 + (x2 - x1) * t, x1 + (x2 - x1) * t, x1 + 0 * t, x2 + 0 * t], -1)
        ys = tf.concat([y1 + 0 * t, y2 + 0 * t, y1 + (y2 - y1) * t, y1 + (y2 - y1) * t], -1)
        pts = tf.reshape(tf.stack([xs, ys], -1), [bsz, -1, 2])
        out = forward_map_points(
            pts,
            transformations["ctrl"],
            transformations["affine"],
            tf.constant(self.magnitude, tf.float32),
            h,
            w,
            mode=self.mode,
            smoothness=self.smoothness,
        )
        out = tf.reshape(out, [bsz, n, 4 * _POINTS_PER_EDGE, 2]) + 0.5
        new = tf.concat(
            [tf.reduce_min(out, axis=2), tf.reduce_max(out, axis=2)], axis=-1
        )  # x_min, y_min, x_max, y_max
        bounding_boxes = dict(bounding_boxes, boxes=new)
        bounding_boxes = bounding_box.clip_to_image(
            bounding_boxes, bounding_box_format="xyxy", images=raw_images
        )
        return bounding_box.convert_format(
            bounding_boxes,
            source="xyxy",
            target=self.bounding_box_format,
            dtype=self.compute_dtype,
            images=raw_images,
        )

    # -- Keras plumbing ---------------------------------------------------------------------

    def call(self, inputs, training: bool | None = True):
        if training is False:
            return inputs
        image_dtype, mask_dtype = _dtypes(inputs)
        outputs = super().call(inputs)
        if isinstance(outputs, dict):
            outputs = dict(outputs)
            outputs["images"] = _cast_like(outputs["images"], image_dtype)
            if "segmentation_masks" in outputs:
                outputs["segmentation_masks"] = _cast_like(
                    outputs["segmentation_masks"], mask_dtype
                )
            return outputs
        return _cast_like(outputs, image_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            mode=self.mode,
            magnitude=self.magnitude,
            grid=list(self.grid),
            smoothness=self.smoothness,
            flip_horizontal=self.flip_horizontal,
            flip_vertical=self.flip_vertical,
            rotation=self.rotation,
            translate=list(self.translate),
            zoom=list(self.zoom),
            zoom_width=None if self.zoom_width is None else list(self.zoom_width),
            crop_area=self.crop_area,
            fill_mode=self.fill_mode,
            fill_value=self.fill_value,
            interpolation=self.interpolation,
            bounding_box_format=self.bounding_box_format,
            seed=self.seed,
            jit_compile=self.jit_compile,
        )
        return config


def _zoom_range(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """A zoom range (low, high) with 1 + low > 0; a number z means (-z, z)."""
    if isinstance(value, int | float):
        low, high = -abs(float(value)), abs(float(value))
    else:
        pair = tuple(float(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}.")
        low, high = pair
    if not -1.0 < low <= high:
        raise ValueError(f"{name} must satisfy -1 < low <= high, got {value!r}.")
    return low, high


def _dtypes(inputs) -> tuple[tf.DType, tf.DType | None]:
    if isinstance(inputs, dict):
        masks = inputs.get("segmentation_masks")
        return tf.as_dtype(inputs["images"].dtype), (
            None if masks is None else tf.as_dtype(masks.dtype)
        )
    return tf.as_dtype(inputs.dtype), None


def _cast_like(x: tf.Tensor, dtype: tf.DType | None) -> tf.Tensor:
    """Cast back to the caller's dtype; integers are rounded (values are already in range)."""
    if dtype is None or x.dtype == dtype:
        return x
    if dtype.is_integer:
        x = tf.round(x)
    return tf.cast(x, dtype)
