"""Heatmaps over whole images from a classifier: sliding windows, Grad-CAM, tiling, rescaling.

Two ways to get a map of "where the cells are" from a model trained with image labels only:

* `sliding_window_heatmap` (the seed's `generate_heatmap`, batched): classify every window of
  the model's training size around a grid of centres `stride` pixels apart, one `predict` call
  per batch of windows, and interpolate the target-class probability between the centres. Each
  window is normalized the way the training patches were ("percentile": its own 1st-99.8th
  percentile stretch; "range": the dtype's range). The values are probabilities, so the map
  means the same on every image and an empty image stays cold. The natural fit for a
  centred-patch classifier (the nuclei preset). `cellkeras.detect.dense` computes the same map
  from one conv-trunk pass per image (what `detect` uses when the model allows); this function
  stays the reference.
* `gradcam_heatmap`: Grad-CAM (from `cellkeras.explain`) of the most probable target class over
  the whole image or over overlapping tiles of it, each map scaled to its own maximum and then
  multiplied by the tile's target-class probability, so a tile with nothing in it stays cold.

`tiled_heatmap` runs any per-batch heatmap function over overlapping tiles and stitches the
tiles' centres; for a function that only looks `overlap / 2` pixels around each pixel (a
sliding window of side <= overlap / 2, aligned to its stride), the result equals the whole-image
map. `rescale_for_diameter` resizes an image so its cells have the diameter the model was
trained on (as Cellpose's `diameter`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from cellkeras.io.images import (
    NORMALIZATIONS,
    NORMALIZE_PERCENTILES,
    normalize,
    stretch_between,
)


def target_classes(classes: Sequence[str] | None, num_classes: int) -> list[int]:
    """The output indices whose probabilities add up to "a cell is here".

    Every class except one named "background" (case-insensitive); all classes when there is
    none (then the heat of a sliding window says "some class", which only works for
    classifiers trained with a background class, see `cellkeras.detect.pipeline`). Without
    names (`classes` None), every output but the first, taken as the background as in the
    nuclei and synthetic workflows' models (the only output for a one-output model).
    """
    if classes is None:
        return list(range(1, num_classes)) or [0]
    return [i for i, name in enumerate(classes) if str(name).lower() != "background"]


def normalize_windows(windows: np.ndarray, normalization: str) -> np.ndarray:
    """`cellkeras.io.images.normalize` applied to each window of a (B, h, w, C) batch."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")
    if normalization == "range":
        return normalize(windows, "range")
    values = windows.astype(np.float32)
    flat = values.reshape(len(values), -1, values.shape[-1])
    low, high = np.percentile(flat, NORMALIZE_PERCENTILES, axis=1)  # (B, C) each, numpy "linear"
    low, high = low[:, None, None, :], high[:, None, None, :]
    return stretch_between(values, low, high)


def stretch_frame(image: np.ndarray, normalization: str) -> tuple[np.ndarray, str]:
    """`(image, normalization)` for the windows of an (H, W, C) image: under "frame_percentile"
    the whole image is stretched once by its percentiles, as the training frames were before
    their patches were cut, and the windows then take it as it is ("range" on [0, 1] floats);
    otherwise unchanged."""
    if normalization != "frame_percentile":
        return image, normalization
    return normalize(image, "frame_percentile"), "range"


def as_hwc(image: np.ndarray) -> np.ndarray:
    """One image as (H, W, C); a grey (H, W) image gains its channel axis."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"expected one (H, W, C) image, got shape {image.shape}")
    return image


def predict_probabilities(model, batch) -> np.ndarray:
    """The model's (first) output on one batch, float32."""
    # predict_on_batch runs Keras' compiled predict function (2-3x an eager call on CPU) without
    # `predict`'s per-call tf.data setup.
    out = model.predict_on_batch(batch)
    out = out[0] if isinstance(out, list | tuple) else out
    return np.asarray(out, np.float32)


def sliding_window_heatmap(
    model,
    image: np.ndarray,
    window: int,
    stride: int = 4,
    class_indices: Sequence[int] | None = None,
    normalization: str = "range",
    batch_size: int = 1024,
    input_size: int | None = None,
) -> np.ndarray:
    """Probability of the target classes in a window centred on each pixel.

    Window centres lie on a grid `stride` pixels apart (pixel `i * stride + (stride - 1) / 2`);
    the probabilities there are interpolated bilinearly to every pixel. The image is
    mirror-padded (OpenCV's BORDER_REFLECT_101) so that border pixels have centred windows too.

    Args:
        model: a Keras classifier taking float32 (B, h, w, C) in [0, 1] and returning
            probabilities (B, K).
        image: (H, W, C) pixels as stored (uint8/uint16/float): each window is normalized with
            `normalization`, as the training pipeline normalized each training patch.
        window: window side in pixels of `image`.
        stride: grid step in pixels, 1 <= stride <= window.
        class_indices: outputs whose probabilities are summed (default: all but index 0).
        normalization: "range", "percentile" (per window) or "frame_percentile" (the whole
            image once, `stretch_frame`).
        batch_size: windows per model call.
        input_size: side the windows are resized to before the model (default: `window`).

    Returns:
        float32 (H, W) in [0, 1].
    """
    image, normalization = stretch_frame(as_hwc(image), normalization)
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    height, width, channels = image.shape
    if class_indices is None:
        class_indices = target_classes(None, int(model.outputs[0].shape[-1]))
    pad = window + stride
    if normalization == "range":
        # A per-pixel normalization is the same per window: do it once, not per window.
        image, normalization = normalize(image, "range"), None
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    if padded.ndim == 2:
        padded = padded[..., None]
    ny, nx, first = window_grid(height, width, window, stride)
    first += pad  # in padded coordinates
    tops = first + stride * np.arange(ny)
    lefts = first + stride * np.arange(nx)
    views = np.lib.stride_tricks.sliding_window_view(padded, (window, window), axis=(0, 1))
    yy, xx = np.meshgrid(tops, lefts, indexing="ij")
    yy, xx = yy.ravel(), xx.ravel()
    heat = np.empty(len(yy), np.float32)
    index = np.asarray(class_indices)
    for start in range(0, len(yy), batch_size):
        # views is (Y, X, C, h, w): gather a batch, then put channels last.
        batch = views[yy[start : start + batch_size], xx[start : start + batch_size]]
        batch = np.moveaxis(batch, 1, -1)
        batch = normalize_windows(batch, normalization) if normalization else batch
        batch = batch.astype(np.float32, copy=False)
        if input_size is not None and input_size != window:
            batch = np.stack(
                [
                    cv2.resize(w, (input_size, input_size), interpolation=cv2.INTER_AREA)
                    for w in batch
                ]
            ).reshape(len(batch), input_size, input_size, channels)
        probs = predict_probabilities(model, batch)
        heat[start : start + len(batch)] = probs[:, index].sum(axis=1)
    return np.clip(grid_to_pixels(heat.reshape(ny, nx), stride, height, width), 0.0, 1.0)


def window_grid(height: int, width: int, window: int, stride: int) -> tuple[int, int, int]:
    """`(ny, nx, first)`: the window grid of an image, shared by the window and dense paths.

    One grid point beyond each side, so border pixels are interpolated between real windows
    rather than clamped (which also makes a tiled map equal the whole-image one). `first` is
    the top (and left) of grid point 0's window relative to the image's first pixel; point i's
    window starts `i * stride` px later, centred on pixel `(i - 1) * stride + (stride - 1) / 2`.
    """
    ny, nx = math.ceil(height / stride) + 2, math.ceil(width / stride) + 2
    return ny, nx, (stride - window) // 2 - stride


def grid_to_pixels(grid: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    """Bilinear interpolation of values on a `window_grid` to every pixel, (height, width, ...)."""
    ny, nx = grid.shape[:2]
    # cv2.resize puts source sample i at destination (i + 0.5) * stride - 0.5: the grid centres.
    full = cv2.resize(grid, (nx * stride, ny * stride), interpolation=cv2.INTER_LINEAR)
    return full[stride : stride + height, stride : stride + width]


def tiled_heatmap(
    image: np.ndarray,
    heatmap_fn: Callable[[np.ndarray], np.ndarray],
    tile: int,
    overlap: int,
    align: int = 1,
    batch: int | None = None,
) -> np.ndarray:
    """Runs `heatmap_fn` on overlapping tiles of `image` and stitches their centres.

    The image is mirror-padded (BORDER_REFLECT_101) at its right and bottom to a whole number of
    tiles, so every tile has the same shape and `heatmap_fn` gets them all in one batch. Each output pixel comes from
    the tile in whose core it lies (tiles meet in the middle of their overlap).

    Args:
        image: (H, W, C) array.
        heatmap_fn: maps a (N, tile, tile, C) batch to (N, tile, tile) heatmaps.
        tile: tile side in pixels (images smaller than a tile are one tile).
        overlap: pixels shared by neighbouring tiles (>= twice the map's reach for an exact
            stitch), < tile.
        align: tile origins are multiples of this (a sliding window's stride, so its grid of
            centres is the same in every tile).
        batch: tiles per `heatmap_fn` call (None: all in one); memory then grows with the
            batch, not with the image, beyond the image and the stitched map themselves.

    Returns:
        float32 (H, W).
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    height, width = image.shape[:2]
    step = (tile - overlap) // align * align
    if step <= 0:
        raise ValueError(f"tile {tile} minus overlap {overlap} must leave at least {align} px")

    def starts(length: int) -> list[int]:
        # The last tile reaches overlap / 2 past the image, so what the map sees beyond the
        # image's end is the same mirror padding a whole-image map would see.
        out = [0]
        while out[-1] + tile < length + overlap // 2:
            out.append(out[-1] + step)
        return out

    ys, xs = starts(height), starts(width)
    full_h, full_w = ys[-1] + tile, xs[-1] + tile
    padded = image
    if full_h > height or full_w > width:
        padded = cv2.copyMakeBorder(
            image, 0, full_h - height, 0, full_w - width, cv2.BORDER_REFLECT_101
        )
        if padded.ndim == 2:
            padded = padded[..., None]

    def cuts(origins: list[int]) -> list[int]:
        # Tile k owns [cut_k, cut_{k+1}): the middle of its overlaps with its neighbours.
        return [0] + [o + overlap // 2 for o in origins[1:]] + [10**9]

    out = np.zeros((full_h, full_w), np.float32)
    cy, cx = cuts(ys), cuts(xs)
    origins = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    batch = batch or len(origins)
    for start in range(0, len(origins), batch):
        chunk = origins[start : start + batch]
        tiles = np.stack([padded[ys[i] : ys[i] + tile, xs[j] : xs[j] + tile] for i, j in chunk])
        maps = np.asarray(heatmap_fn(tiles), np.float32).reshape(len(chunk), tile, tile)
        for (i, j), heat in zip(chunk, maps, strict=True):
            y, x = ys[i], xs[j]
            y0, y1 = cy[i], min(cy[i + 1], y + tile)
            x0, x1 = cx[j], min(cx[j + 1], x + tile)
            out[y0:y1, x0:x1] = heat[y0 - y : y1 - y, x0 - x : x1 - x]
    return out[:height, :width]


def gradcam_heatmap(
    model,
    image: np.ndarray,
    class_indices: Sequence[int],
    tile: int | None = None,
    overlap: int = 32,
    layer_name: str | None = None,
    branch: str | None = None,
) -> np.ndarray:
    """Grad-CAM of the most probable target class, times its probability, per image or tile.

    For each tile (or the whole image), `cellkeras.explain` computes the Grad-CAM of the target
    class the model finds most probable there, divided by its own maximum, and multiplies it by
    the summed probability of the target classes. A tile the model calls background therefore
    stays cold: the per-tile normalization cannot invent a hot spot where there is no cell.

    Args:
        model: a Keras CNN classifier.
        image: (H, W, C) float32 in [0, 1] (already normalized like the training images).
        class_indices: the target classes (e.g. every class but "background").
        tile: tile side, about the training image size (None: the whole image at once).
        overlap: tile overlap in pixels (tiles meet in its middle).
        layer_name: the conv layer to explain (None: the explain module's default).
        branch: a ParallelCNN branch, or "merged" for the sum over every branch's last conv
            (what `detect` uses for multi-branch models); None: the explain module's default.

    Returns:
        float32 (H, W) in [0, 1].
    """
    from cellkeras.explain import explain, predict

    image = np.asarray(image, np.float32)
    targets = np.asarray(class_indices, np.int64)

    def cams(batch: np.ndarray) -> np.ndarray:
        probs = predict(model, batch)[:, targets]
        best = targets[np.argmax(probs, axis=1)]
        maps = explain(
            model, batch, "gradcam", class_index=best, layer_name=layer_name, branch=branch
        )
        return np.asarray(maps, np.float32) * probs.sum(axis=1)[:, None, None]

    if tile is None or max(image.shape[:2]) <= tile:
        heat = cams(image[None])[0]
    else:
        heat = tiled_heatmap(image, cams, tile, overlap)
    return np.clip(np.nan_to_num(heat), 0.0, 1.0)


def rescale_for_diameter(
    image: np.ndarray, cell_diameter: float | None, train_diameter: float | None
) -> tuple[np.ndarray, float]:
    """Resizes `image` so cells of `cell_diameter` pixels become `train_diameter` pixels.

    Args:
        image: (H, W, C) array of any dtype (kept).
        cell_diameter: typical cell diameter in this image, pixels; None keeps the image.
        train_diameter: the diameter the model was trained on; None keeps the image.

    Returns:
        `(resized image, scale)`: boxes found on the resized image are divided by `scale` to get
        back to the input's pixels.
    """
    if cell_diameter is None or train_diameter is None:
        return image, 1.0
    if not cell_diameter > 0:
        raise ValueError(f"cell_diameter must be > 0, got {cell_diameter}")
    scale = float(train_diameter) / float(cell_diameter)
    if abs(scale - 1.0) < 1e-6:
        return image, 1.0
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    # float32 for the resize: OpenCV's uint16 path is fine, but int types it lacks are not.
    resized = cv2.resize(image.astype(np.float32), size, interpolation=interpolation)
    resized = resized.reshape(size[1], size[0], -1)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        resized = np.clip(np.rint(resized), info.min, info.max).astype(image.dtype)
    # The realised scale differs from the asked one by rounding; boxes need the realised one.
    return resized, size[0] / width
