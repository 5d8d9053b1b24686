"""The sliding-window classifier evaluated densely: the conv trunk once per image, not per window.

A classifier of the form *conv trunk → GlobalAveragePooling2D → head* (every cellkeras model:
each branch of a `ParallelCNN` is one, merged by per-sample layers) gives, for a window, the
head of the window's mean trunk features. Run the trunk on the whole image instead, average
its feature map over every window's footprint (an average pool of the window's size at the
trunk's stride) and apply the head to all those pooled vectors in one batch: one trunk
evaluation serves every window whose origin lies on the trunk's grid.

Window origins `stride` px apart that fall between trunk cells (a trunk of total stride 8 and a
4 px step) are handled by shift-and-stitch: the part of the trunk whose cells are no coarser
than `gcd(stride, S)` (S: the trunk's stride) runs once, and only the rest runs once per shift,
on crops of that part's output. For the default model at a 4 px step that rest is the last
max-pool and conv, so the whole image costs about one trunk pass.

What differs from the window path: a window's trunk sees the image around the window (the
window path zero-pads each layer at the window's edge), so the heat differs slightly, mostly
where structures sit just outside the window; `tests/test_detect_dense.py` measures it. A
trunk of "valid" convolutions and pools (the `valid_narrow` model) never reads padding: a
window's map is the whole image's map over the window, a few cells smaller than `window / S`,
and the dense heat is the window heat exactly. A
per-window normalization ("percentile") cannot be shared by overlapping windows; the dense path
normalizes each pixel with the percentiles of the window centred on it (each window's centre
is normalized exactly as the window path normalizes it, its edges approximately).

`dense_classifier(model, window, stride)` converts a Keras model (or returns why it cannot);
`dense_heatmap` is the drop-in for `sliding_window_heatmap`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from collections.abc import Sequence

import cv2
import numpy as np

from cellkeras.detect.heatmaps import (
    as_hwc,
    grid_to_pixels,
    predict_probabilities,
    sliding_window_heatmap,
    stretch_frame,
    target_classes,
    tiled_heatmap,
    window_grid,
)
from cellkeras.io.images import (
    NORMALIZATIONS,
    NORMALIZE_PERCENTILES,
    normalize,
    stretch_between,
)

# Layers that look at more than one pixel, by the attribute holding their kernel size.
_KERNEL_ATTRS = ("kernel_size", "pool_size")


class NotConvertible(ValueError):
    """A model whose window classifier has no dense equivalent here, with the reason."""


@dataclasses.dataclass
class DenseClassifier:
    """A classifier split for dense evaluation (see the module docs).

    Attributes:
        prefix: images → the cut tensors (cells no coarser than `step`), run once per image.
        suffix: cut tensors → per branch, the trunk features average-pooled over each window
            (pool `window / s_i`, strides `period / s_i`), run once per shift.
        head: the pooled feature vectors (one input per GlobalAveragePooling2D) → probabilities.
        cut_jumps: pixels per cell of each cut tensor.
        period: S, the least common multiple of the trunks' strides.
        step: `gcd(stride, period)`: shifts are multiples of it.
        reach: pixels beyond a window that its dense features depend on (trunk context).
        shrink: pixels the trunk loses at an image's far edges ("valid" layers; 0 for "same").
    """

    prefix: object
    suffix: object
    head: object
    cut_jumps: list[int]
    period: int
    step: int
    reach: int
    shrink: int = 0


def _history(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation, operation._inbound_nodes[node_index]


def _inputs_of(tensor) -> list:
    operation, node = _history(tensor)
    if node is None or not node.input_tensors:
        return []
    return list(node.input_tensors)


def _trunk_tensors(model, ends: Sequence) -> list:
    """Every tensor between the model's input and `ends`, inputs before their consumers."""
    order, seen = [], set()

    def visit(tensor) -> None:
        if id(tensor) in seen:
            return
        seen.add(id(tensor))
        for parent in _inputs_of(tensor):
            visit(parent)
        order.append(tensor)

    for end in ends:
        visit(end)
    return order


def _layer_reach(operation, jump: int) -> int:
    """Pixels on each side that one output cell of `operation` reads beyond its input cell."""
    kernel = next((getattr(operation, a) for a in _KERNEL_ATTRS if hasattr(operation, a)), None)
    if kernel is not None:
        dilation = getattr(operation, "dilation_rate", (1, 1))
        size = max((int(k) - 1) * int(d) for k, d in zip(kernel, dilation, strict=False))
        return math.ceil(size / 2) * jump
    gauss = getattr(operation, "_gauss", None)  # cellkeras' SobelEdges: blur, Sobel, NMS
    if hasattr(operation, "_sobel"):
        return (0 if gauss is None else len(gauss) // 2) + 2
    return 0


def dense_classifier(model, window: int, stride: int) -> DenseClassifier:
    """Splits `model` into the prefix, suffix and head of dense evaluation.

    Args:
        model: a functional Keras classifier with one image input and one probability output,
            whose output depends on the image only through GlobalAveragePooling2D layers.
        window: window side in pixels (the window path's, at the model's input size).
        stride: window grid step in pixels.

    Raises:
        NotConvertible: with the reason, for any other model.
    """
    import keras

    if len(getattr(model, "inputs", None) or []) != 1 or len(model.outputs) != 1:
        raise NotConvertible("the model is not a functional model with one input and one output")
    gaps = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.GlobalAveragePooling2D)
        and getattr(layer, "data_format", "channels_last") == "channels_last"
        and not getattr(layer, "keepdims", False)
    ]
    if not gaps or any(len(layer._inbound_nodes) != 1 for layer in gaps):
        raise NotConvertible("it has no (singly used) channels-last GlobalAveragePooling2D layer")
    ends = [layer.input for layer in gaps]
    try:
        head = keras.Model([layer.output for layer in gaps], model.outputs[0], name="dense_head")
    except ValueError as err:
        raise NotConvertible(f"its head reads more than the pooled features ({err})") from None
    tensors = _trunk_tensors(model, ends)
    trunk = keras.Model(model.inputs, tensors)
    channels = model.inputs[0].shape[-1]

    def cells_at(side: int) -> list:
        try:
            specs = trunk.compute_output_spec(keras.KerasTensor((1, side, side, channels)))
        except ValueError as err:  # "valid" layers on a window smaller than their field
            raise NotConvertible(f"its trunk does not run on {side} px ({err})") from None
        return [spec.shape[1] for spec in specs]

    # Two probes: "valid" layers lose a fixed border, so a cell's size is the difference.
    probe = 64 * window
    small, large = cells_at(probe), cells_at(2 * probe)
    jumps, reach, shrink = {}, {}, 0
    for tensor, c1, c2 in zip(tensors, small, large, strict=True):
        if c1 is None or c2 is None or c2 == c1 or probe % (c2 - c1):
            raise NotConvertible(f"the trunk's tensor {tensor.name} is not on an integer grid")
        jumps[id(tensor)] = probe // (c2 - c1)
        # Pixels a "valid" trunk loses at the far edge: the crops must leave room for them.
        shrink = max(shrink, probe - jumps[id(tensor)] * c1)
        parents = _inputs_of(tensor)
        base = max((reach[id(p)] for p in parents), default=0)
        in_jump = min((jumps[id(p)] for p in parents), default=1)
        reach[id(tensor)] = base + _layer_reach(_history(tensor)[0], in_jump) if parents else 0
    strides = [jumps[id(end)] for end in ends]
    if any(window % s for s in strides):
        raise NotConvertible(
            f"the window ({window} px) is not a multiple of the trunk strides {strides}"
        )
    period = math.lcm(*strides)
    # Cells of each end on one window: window / stride, or fewer where "valid" layers shrink it.
    at_window = dict(zip(map(id, tensors), cells_at(window), strict=True))
    window_cells = [at_window[id(end)] for end in ends]
    step = math.gcd(stride, period)
    cut = []
    for tensor in tensors:
        if step % jumps[id(tensor)]:
            continue
        consumers_coarser = any(
            step % jumps[id(other)] and any(p is tensor for p in _inputs_of(other))
            for other in tensors
        )
        if consumers_coarser or any(tensor is end for end in ends):
            cut.append(tensor)
    pooled = [
        keras.layers.AveragePooling2D(
            n, strides=period // s, padding="valid", dtype=layer.dtype_policy
        )(end)
        for layer, end, s, n in zip(gaps, ends, strides, window_cells, strict=True)
    ]
    try:
        prefix = keras.Model(model.inputs, cut, name="dense_prefix")
        suffix = keras.Model(cut, pooled, name="dense_suffix")
    except ValueError as err:
        raise NotConvertible(f"its trunk cannot be cut at the {step} px grid ({err})") from None
    return DenseClassifier(
        prefix, suffix, head, [jumps[id(t)] for t in cut], period, step,
        max(reach[id(end)] for end in ends), shrink,
    )  # fmt: skip


def window_percentiles(
    image: np.ndarray, window: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """The 1st and 99.8th percentiles of every window of the window path's grid, per channel.

    The same windows (mirror padding and grid) and numpy's "linear" percentiles as
    `normalize_windows`. Exact and shared between overlapping windows: a window is
    `window / stride` strips `stride` px wide, and a window's k smallest (largest) values are
    among its strips' k smallest (largest), so each strip is partially sorted once, for every
    window it belongs to, and each window only sorts its strips' candidates.

    Returns:
        `(low, high)`: float32 (ny, nx, C) each.
    """
    height, width, channels = image.shape
    ny, nx, first = window_grid(height, width, window, stride)
    pad = window + stride
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    padded = padded.reshape(*padded.shape[:2], channels).astype(np.float32)
    n = window * window
    # Strips `stride` wide when they tile the window, else each window is its own strip.
    per_window, strip = (window // stride, stride) if window % stride == 0 else (1, window)
    rows = (first + pad + stride * np.arange(ny))[:, None] + np.arange(window)
    starts = first + pad + stride * np.arange(nx + per_window - 1)
    cols = starts[:, None] + np.arange(strip)
    # (ny, strips, C, window * width_strip)
    strips = padded[rows[:, None, :, None], cols[None, :, None, :]]
    strips = np.moveaxis(strips, -1, 2).reshape(ny, len(starts), channels, -1)
    out = []
    for p in NORMALIZE_PERCENTILES:
        rank = (n - 1) * p / 100.0
        i0, frac = math.floor(rank), rank - math.floor(rank)
        i1 = min(i0 + 1, n - 1)
        # Order statistics i0 and i1 counted from the nearer end (negated values for the top).
        top = i0 > (n - 1) / 2
        sign = -1.0 if top else 1.0
        d0, d1 = (n - 1 - i0, n - 1 - i1) if top else (i0, i1)
        k = max(d0, d1) + 1
        values = sign * strips
        if k < values.shape[-1]:
            values = np.partition(values, k - 1, axis=-1)[..., :k]
        windows = np.lib.stride_tricks.sliding_window_view(values, per_window, axis=1)
        windows = windows.reshape(ny, nx, channels, -1)
        windows = np.partition(windows, sorted({d0, d1}), axis=-1)
        a0, a1 = sign * windows[..., d0], sign * windows[..., d1]
        out.append((a0 + frac * (a1 - a0)).astype(np.float32))
    return out[0], out[1]


def normalize_locally(image: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Each pixel stretched by the percentiles of the window centred on it (interpolated
    between the window grid's points), clipped to [0, 1]: "percentile" per window, shared."""
    height, width, channels = image.shape
    low, high = window_percentiles(image, window, stride)
    low = grid_to_pixels(low, stride, height, width).reshape(height, width, channels)
    high = grid_to_pixels(high, stride, height, width).reshape(height, width, channels)
    values = image.astype(np.float32)
    return stretch_between(values, low, high)


def dense_heatmap(
    dense: DenseClassifier,
    image: np.ndarray,
    window: int,
    stride: int = 4,
    class_indices: Sequence[int] | None = None,
    normalization: str = "range",
    head_batch: int = 65536,
) -> np.ndarray:
    """`sliding_window_heatmap`'s map, from one trunk pass (see the module docs).

    Args:
        dense: `dense_classifier(model, window, stride)` of the classifier.
        image: (H, W, C) pixels as stored.
        window, stride: as `sliding_window_heatmap` (the `dense_classifier`'s).
        class_indices: outputs whose probabilities are summed (default: all but index 0).
        normalization: "range" (per pixel: as the window path), "percentile" (each pixel
            by the percentiles of the window centred on it, `normalize_locally`) or
            "frame_percentile" (the whole image once, exactly as the window path).
        head_batch: pooled vectors per head call.

    Returns:
        float32 (H, W) in [0, 1].
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")
    image, normalization = stretch_frame(as_hwc(image), normalization)
    height, width, channels = image.shape
    if class_indices is None:
        class_indices = target_classes(None, int(dense.head.outputs[0].shape[-1]))
    if normalization == "percentile":
        values = normalize_locally(image, window, stride)
    else:
        values = normalize(image, "range")
    period, step = dense.period, dense.step
    ny, nx, first = window_grid(height, width, window, stride)
    # Grid point i's window starts at period * (margin + k_i) + q_i in the padded image, q_i
    # being its shift; `margin` whole periods of mirrored context come before the first one.
    margin = math.ceil(dense.reach / period)
    ky, kx = (stride * np.arange(ny)) // period, (stride * np.arange(nx)) // period
    qy, qx = (stride * np.arange(ny)) % period // step, (stride * np.arange(nx)) % period // step

    def crop_length(k_max: int) -> int:
        return math.ceil((period * (margin + k_max) + window + dense.reach) / period) * period

    length_y, length_x = crop_length(int(ky[-1])), crop_length(int(kx[-1]))
    size_y = math.ceil((period - step + length_y + dense.shrink) / period) * period
    size_x = math.ceil((period - step + length_x + dense.shrink) / period) * period
    offset = period * margin - first  # where the image's first pixel lands
    padded = cv2.copyMakeBorder(
        values, offset, size_y - offset - height, offset, size_x - offset - width,
        cv2.BORDER_REFLECT_101,
    ).reshape(size_y, size_x, channels)  # fmt: skip
    cuts = dense.prefix.predict_on_batch(padded[None])
    cuts = [cuts] if not isinstance(cuts, list | tuple) else list(cuts)
    shifts = [(sy, sx) for sy in range(0, period, step) for sx in range(0, period, step)]
    crops = [
        np.concatenate(
            [
                np.asarray(c)[:, sy // j : (sy + length_y) // j, sx // j : (sx + length_x) // j]
                for sy, sx in shifts
            ]
        )
        for c, j in zip(cuts, dense.cut_jumps, strict=True)
    ]
    pooled = dense.suffix.predict_on_batch(crops)
    pooled = [pooled] if not isinstance(pooled, list | tuple) else list(pooled)
    per_axis = period // step
    shift = (qy[:, None] * per_axis + qx[None, :]).ravel()
    rows = np.repeat(margin + ky, nx)
    cols = np.tile(margin + kx, ny)
    features = [np.asarray(p)[shift, rows, cols] for p in pooled]
    index = np.asarray(class_indices)
    heat = np.empty(len(shift), np.float32)
    for start in range(0, len(shift), head_batch):
        part = [f[start : start + head_batch] for f in features]
        probs = predict_probabilities(dense.head, part if len(part) > 1 else part[0])
        heat[start : start + len(probs)] = probs[:, index].sum(axis=1)
    return np.clip(grid_to_pixels(heat.reshape(ny, nx), stride, height, width), 0.0, 1.0)


HEAT_PATHS = ("auto", "dense", "window")
# Largest |dense - window| heat on the check crop for "auto" to take the dense path: a tenth of
# the [0, 1] probability range (the fixture CNNs differ by < 0.02, a model whose windows read
# their own zero padding by ~1; see docs/BENCHMARKS.md).
DENSE_TOLERANCE = 0.1
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def heat_reach(dense: DenseClassifier, window: int, stride: int, normalization: str) -> int:
    """Pixels around a pixel that its dense heat depends on (for tiles that stitch exactly)."""
    reach = stride + window // 2 + dense.reach + dense.period
    return reach + (stride + window // 2 if normalization == "percentile" else 0)


def _check_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The `side` square around the image's brightest `side / 3` region: cells, not background."""
    height, width = image.shape[:2]
    if max(height, width) <= side:
        return image
    box = max(1, side // 3)
    smooth = cv2.blur(image.astype(np.float32).sum(axis=-1), (box, box))
    cy, cx = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    y0 = int(np.clip(cy - side // 2, 0, max(0, height - side)))
    x0 = int(np.clip(cx - side // 2, 0, max(0, width - side)))
    return image[y0 : y0 + side, x0 : x0 + side]


def _dense_or_reason(
    model, image, window, stride, classes, normalization, batch_size, heat, tolerance
):
    """The DenseClassifier to use, or None with the reason (checked once per model and grid)."""
    # The tolerance check compares the classes' heat, so another class set checks afresh.
    key = (window, stride, normalization, heat, tolerance, tuple(classes))
    cached = _CACHE.setdefault(model, {})
    if key in cached:
        return cached[key]
    try:
        dense, reason = dense_classifier(model, window, stride), None
    except NotConvertible as err:
        dense, reason = None, str(err)
    if dense is not None and heat == "auto":
        crop = _check_crop(image, 3 * window)
        old = sliding_window_heatmap(
            model, crop, window, stride, classes, normalization, batch_size
        )
        new = dense_heatmap(dense, crop, window, stride, classes, normalization)
        diff = float(np.abs(old - new).max())
        if diff > tolerance:
            dense, reason = (
                None,
                (
                    f"its dense heat differs from the window heat by up to {diff:.2f} (> {tolerance})"
                    f" on a {crop.shape[1]}x{crop.shape[0]} check crop: the windows read their own "
                    "padding"
                ),
            )
    if reason is not None:
        warnings.warn(
            f"model {getattr(model, 'name', '?')!r}: window heat, not dense: {reason}",
            stacklevel=3,
        )
    cached[key] = dense
    return dense


def classifier_heatmap(
    model,
    image: np.ndarray,
    window: int,
    stride: int = 4,
    class_indices: Sequence[int] | None = None,
    normalization: str = "range",
    batch_size: int = 1024,
    heat: str = "auto",
    tolerance: float = DENSE_TOLERANCE,
    tile: int = 1024,
) -> np.ndarray:
    """The sliding-window classifier's heat, densely where the model allows (what `detect` uses).

    Args:
        model, image, window, stride, class_indices, normalization, batch_size: as
            `sliding_window_heatmap`.
        heat: "window" (`sliding_window_heatmap`), "dense" (`dense_heatmap` when the model
            converts) or "auto" (dense when it converts and, on a check crop of the first image
            the model sees, the two heats differ by at most `tolerance`). A model that is not
            taken dense gets the window path and one warning saying why.
        tolerance: see `heat`.
        tile: images larger than this are done densely in overlapping tiles of this side, one
            at a time, so memory stays bounded (the stitch equals the whole-image map).

    Returns:
        float32 (H, W) in [0, 1].
    """
    if heat not in HEAT_PATHS:
        raise ValueError(f"unknown heat path {heat!r}; known: {HEAT_PATHS}")
    # Before any tiling: a frame's stretch is the whole image's, not each tile's.
    image, normalization = stretch_frame(as_hwc(image), normalization)
    args = (window, stride, class_indices, normalization)
    dense = None
    if heat != "window":
        dense = _dense_or_reason(model, image, *args, batch_size, heat, tolerance)
    if dense is None:
        return sliding_window_heatmap(model, image, *args, batch_size)
    if max(image.shape[:2]) <= tile:
        return dense_heatmap(dense, image, *args)
    reach = heat_reach(dense, window, stride, normalization)
    align = math.lcm(stride, dense.period)
    overlap = math.ceil(2 * reach / align) * align
    if tile - overlap < align:
        tile = overlap + 4 * align

    def per_tile(tiles: np.ndarray) -> np.ndarray:
        return np.stack([dense_heatmap(dense, t, *args) for t in tiles])

    return tiled_heatmap(image, per_tile, tile, overlap, align=align, batch=1)
