"""Heatmap → boxes: threshold, contours, touching-cell splitting, filters and non-max suppression.

Pure numpy/OpenCV/scipy: a heatmap (H, W) goes in, boxes `[x_min, y_min, x_max, y_max]` (float
pixels, inclusive-exclusive as `cellkeras.data.samples.instance_boxes`: `x_max` is one past the
last column) with one score each come out.

```
heat ─► threshold (fraction of max | Otsu | fixed value) ─► mask
     ─► [erode] ─► regions: cv2.findContours (one per contour), or split touching cells:
                 distance transform ─► peak markers ─► watershed (scikit-image),
                 or [extent="image"] heat regions (split by the foreground's distance peaks) as
                 markers grown over the image's foreground
     ─► box + score (mean or max heat inside) ─► area limits, border policy ─► NMS (cv2.dnn)
```

Empty images: "fraction" and "otsu" are relative to the map itself, so on their own they would
turn the noise of an empty map into boxes; `min_peak` (an absolute heat level the region's peak
must reach) is what keeps a map with nothing hot empty. Heatmaps from `cellkeras.detect.heatmaps`
are absolute (probabilities, or a per-tile Grad-CAM times the tile's class probability), so
`min_peak` means the same on every image.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np
from scipy import ndimage

from cellkeras.io.images import stretch_between, to_grey

THRESHOLD_MODES = ("fraction", "otsu", "fixed")
SPLIT_MODES = (None, "distance", "heat")
BORDER_POLICIES = ("keep", "drop")
SCORE_MODES = ("mean", "max")
EXTENT_MODES = ("heat", "image")
FOREGROUND_MODES = ("otsu", "local", "auto")
# "auto" foreground: per image, the rule ("otsu" or "local") that gives more instances of a
# nucleus's size, 0.5-2x the area of a disc of `BoxParams.auto_diameter`. Global Otsu breaks
# dim nuclei into fragments (too small), "local" grows and joins bright ones (too large);
# leave-one-source-out, it took Otsu on every ndev frame and "local" on laptrack (F1@0.5
# 0.905 and 0.882, against one rule for both: 0.873 / 0.882; docs/BENCHMARKS.md).
AUTO_AREA_RANGE = (0.5, 2.0)
# "local" foreground: a pixel also counts when brighter than its neighbourhood's Gaussian mean
# (this sigma, pixels: about 0.6 nucleus diameters at the nuclei workflow's 12 px scale) and
# above this fraction of the way from the background level to Otsu's level. Dim nuclei that a
# global Otsu threshold cuts into fragments are then whole (laptrack: F1@0.5 of Otsu +
# watershed 0.80 -> 0.91; docs/BENCHMARKS.md, "Detection").
LOCAL_SIGMA = 7.5
LOCAL_FLOOR = 0.5


@dataclasses.dataclass
class BoxParams:
    """How a heatmap becomes boxes (every field has a default that works on [0, 1] maps).

    Attributes:
        threshold: "fraction" (of the map's max), "otsu" (Otsu's threshold on the map's
            histogram) or "fixed" (an absolute heat level, e.g. one calibrated on labelled
            images with `cellkeras.evaluate.calibrate_threshold` and then frozen).
        value: the fraction for "fraction", the level for "fixed"; unused by "otsu".
        min_peak: a region whose highest heat is below this is dropped (the empty-image guard).
        split: None keeps each contour whole; "distance" splits touching cells by watershed on
            the distance transform of the mask (markers at its peaks); "heat" uses the heatmap's
            own peaks and basins (good when the map peaks at cell centres, as a centred-patch
            classifier's does).
        min_distance: minimum distance in pixels between two split markers (about a cell radius).
        erode: side in pixels of the square the foreground mask is eroded by before regions are
            found (0: none). A centred-patch classifier's map is each object grown by the
            patch's central region, so its regions are too large by about that much; the
            amount is calibrated on labelled images. Erosion also cuts thin necks.
        extent: "heat": boxes bound the heat regions; "image": the heat regions are only
            markers, and each box bounds the part of the image's own foreground (Otsu on the
            lightly smoothed image) that a watershed from those markers gives it; image
            foreground with no marker gives no box. With `split` "distance" ("heat") a hot
            region holds one marker per peak of the foreground's distance transform (of the
            heat) inside it, so touching nuclei whose hot regions merged are still split
            (`image_markers`). Needs `image` in `heatmap_to_boxes`.
        foreground: the image foreground for `extent="image"`: "otsu" (global Otsu),
            "local" (also pixels above their neighbourhood's mean, for dim nuclei;
            `image_foreground`) or "auto" (per image, whichever of the two gives more
            instances of about `auto_diameter`; `AUTO_AREA_RANGE`).
        auto_diameter: the cells' diameter in the map's pixels, for `foreground="auto"` (the
            nuclei workflow rescales images so that it is the training diameter).
        min_area: smallest region in pixels (after splitting); see `area_limits_px` for µm².
        max_area: largest region in pixels, None for no limit.
        border: "keep" every box, or "drop" boxes that touch the image border (cut cells).
        score: "mean" or "max" heat inside the region.
        nms_iou: boxes overlapping a higher-scored box by more than this IoU are dropped.
    """

    threshold: str = "fraction"
    value: float = 0.5
    min_peak: float = 0.2
    split: str | None = None
    min_distance: float = 5.0
    erode: int = 0
    extent: str = "heat"
    foreground: str = "otsu"
    auto_diameter: float = 12.0
    min_area: float = 4.0
    max_area: float | None = None
    border: str = "keep"
    score: str = "mean"
    nms_iou: float = 0.5

    def __post_init__(self) -> None:
        for name, value, known in (
            ("threshold", self.threshold, THRESHOLD_MODES),
            ("split", self.split, SPLIT_MODES),
            ("border", self.border, BORDER_POLICIES),
            ("score", self.score, SCORE_MODES),
            ("extent", self.extent, EXTENT_MODES),
            ("foreground", self.foreground, FOREGROUND_MODES),
        ):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; known: {known}")


def area_limits_px(
    min_area: float | None,
    max_area: float | None = None,
    pixel_size_um: float | None = None,
) -> tuple[float, float | None]:
    """Area limits in pixels from limits in pixels (`pixel_size_um` None) or in µm².

    Args:
        min_area: smallest area, in µm² when `pixel_size_um` is given, else pixels; None = 0.
        max_area: largest area, likewise; None for no limit.
        pixel_size_um: micrometres per pixel (e.g. 0.619 for the ndev nuclei sample).

    Returns:
        `(min_area_px, max_area_px)`.
    """
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    per_px = 1.0 if pixel_size_um is None else 1.0 / float(pixel_size_um) ** 2
    low = 0.0 if min_area is None else float(min_area) * per_px
    high = None if max_area is None else float(max_area) * per_px
    return low, high


def threshold_heatmap(heat: np.ndarray, mode: str = "fraction", value: float = 0.5) -> float:
    """The heat level above which pixels count as foreground.

    Args:
        heat: (H, W) non-negative map.
        mode: "fraction" → `value * max`; "otsu" → Otsu's threshold of the map (computed on
            the map scaled to its own [0, max] in 256 levels, OpenCV's implementation);
            "fixed" → `value`.
        value: see `mode`.

    Returns:
        The threshold (foreground is `heat > threshold`); `inf` for an all-zero map with a
        relative mode, so nothing is foreground.
    """
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold mode {mode!r}; known: {THRESHOLD_MODES}")
    heat = np.asarray(heat, np.float32)
    if mode == "fixed":
        return float(value)
    top = float(heat.max()) if heat.size else 0.0
    if top <= 0:
        return math.inf
    if mode == "fraction":
        return float(value) * top
    scaled = np.round(heat / top * 255.0).astype(np.uint8)
    level, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # cv2 marks pixels > level as foreground; map that level back to heat units.
    return (float(level) + 0.5) / 255.0 * top


def contour_labels(mask: np.ndarray) -> np.ndarray:
    """One label per external contour of a binary mask (`cv2.findContours`, 8-connected).

    Holes inside a contour belong to it, as they do to the cell a box is drawn around.

    Returns:
        int32 (H, W): 0 background, 1..K the contours in OpenCV's order.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    labels = np.zeros(mask.shape, np.int32)
    for i, contour in enumerate(contours):
        cv2.drawContours(labels, [contour], 0, color=i + 1, thickness=cv2.FILLED)
    return labels


def peak_markers(surface: np.ndarray, mask: np.ndarray, min_distance: float) -> np.ndarray:
    """Markers at the local maxima of `surface` inside `mask`, at least `min_distance` apart.

    `skimage.feature.peak_local_max` per connected part of the mask; a part without a strict
    peak (a plateau) gets one marker at its highest pixel, so no region is lost.

    Returns:
        int32 (H, W) marker labels 1..M, 0 elsewhere.
    """
    from skimage.feature import peak_local_max

    mask = np.asarray(mask).astype(bool)
    parts, n_parts = ndimage.label(mask, structure=np.ones((3, 3)))
    markers = np.zeros(mask.shape, np.int32)
    if not n_parts:
        return markers
    coords = peak_local_max(
        np.where(mask, surface, 0).astype(np.float32),
        min_distance=max(1, int(round(min_distance))),
        labels=parts,
        exclude_border=False,
    )
    markers[tuple(coords.T)] = np.arange(1, len(coords) + 1)
    count = len(coords)
    missing = np.setdiff1d(np.arange(1, n_parts + 1), parts[tuple(coords.T)])
    if len(missing):
        best = ndimage.maximum_position(surface, parts, missing)
        for position in best:
            count += 1
            markers[position] = count
    return markers


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """float32 Euclidean distance of every mask pixel to the nearest background pixel (the
    landscape whose peaks are nucleus centres), by OpenCV's fast 5x5-mask approximation."""
    return cv2.distanceTransform(np.asarray(mask).astype(np.uint8), cv2.DIST_L2, 5)


def split_touching(
    mask: np.ndarray,
    min_distance: float = 5.0,
    heat: np.ndarray | None = None,
) -> np.ndarray:
    """Splits touching blobs of a binary mask into one label each (marker watershed).

    With `heat` None the landscape is the mask's Euclidean distance transform
    (`cv2.distanceTransform`; two touching disks have two distance peaks joined by a saddle at
    the neck); otherwise it is `heat` (peaks at cell centres). Markers are the landscape's peaks
    (`peak_markers`), and `skimage.segmentation.watershed` floods the inverted landscape from
    them inside the mask.

    Args:
        mask: (H, W) binary foreground.
        min_distance: minimum distance between two markers in pixels (about a cell radius).
        heat: optional (H, W) map to split on instead of the distance transform.

    Returns:
        int32 (H, W) labels, 0 background, 1..K regions.
    """
    from skimage.segmentation import watershed

    mask = np.asarray(mask).astype(bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    surface = distance_to_background(mask) if heat is None else np.asarray(heat, np.float32)
    markers = peak_markers(surface, mask, min_distance)
    return watershed(-surface, markers, mask=mask).astype(np.int32)


def label_boxes(
    labels: np.ndarray, heat: np.ndarray, score: str = "mean"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Box, score, area and peak heat of every labelled region.

    Returns:
        `(boxes, scores, areas, peaks)`: float32 (K, 4) `[x_min, y_min, x_max, y_max]`
        (inclusive-exclusive), float32 (K,) mean or max heat inside, float32 (K,) pixel counts,
        float32 (K,) max heat inside; regions in label order (empty labels skipped).
    """
    if score not in SCORE_MODES:
        raise ValueError(f"unknown score {score!r}; known: {SCORE_MODES}")
    slices = ndimage.find_objects(labels)
    ids = [i + 1 for i, sl in enumerate(slices) if sl is not None]
    if not ids:
        empty = np.zeros((0,), np.float32)
        return np.zeros((0, 4), np.float32), empty, empty, empty
    boxes = np.array(
        [(sl[1].start, sl[0].start, sl[1].stop, sl[0].stop) for sl in slices if sl is not None],
        np.float32,
    )
    heat = np.asarray(heat, np.float64)
    reduce = ndimage.mean if score == "mean" else ndimage.maximum
    scores = np.asarray(reduce(heat, labels, ids), np.float32)
    areas = np.asarray(ndimage.sum_labels(np.ones_like(heat), labels, ids), np.float32)
    peaks = np.asarray(ndimage.maximum(heat, labels, ids), np.float32)
    return boxes, scores, areas, peaks


def non_max_suppression(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5
) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, highest score first (`cv2.dnn.NMSBoxes`).

    Args:
        boxes: (K, 4) `[x_min, y_min, x_max, y_max]`.
        scores: (K,) scores.
        iou_threshold: a box overlapping a kept, higher-scored box by more IoU is dropped.

    Returns:
        int64 indices into `boxes`, by decreasing score.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros((0,), np.int64)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    scores = np.asarray(scores, np.float64)
    # NMSBoxes keeps only scores above a non-negative cut-off; a shift that keeps the order
    # lets every box take part whatever its score.
    ranked = scores - scores.min() + 1.0
    kept = cv2.dnn.NMSBoxes(xywh.tolist(), ranked.tolist(), 0.0, float(iou_threshold))
    kept = np.asarray(kept, np.int64).reshape(-1)
    return kept[np.argsort(-scores[kept], kind="stable")]


def image_foreground(
    image: np.ndarray, sigma: float = 1.0, mode: str = "otsu", offset: float = 0.0
) -> np.ndarray:
    """Otsu foreground of an image (RGB as the data layer's grey, Gaussian-smoothed by `sigma`
    pixels).

    The classical baseline's mask, and the extent source of `BoxParams(extent="image")`. With
    `mode="local"` pixels brighter than their neighbourhood's mean (`LOCAL_SIGMA`) and above
    `LOCAL_FLOOR` of the way from the background's median to Otsu's level count too. `offset`
    shifts Otsu's level on the image's 0.5-99.8 percentile scale (the baseline's grid tunes it).
    """
    if mode not in ("otsu", "local"):  # "auto" picks between these two per image
        raise ValueError(f"unknown foreground {mode!r}; known: otsu, local")
    image = np.asarray(image, np.float32)
    if image.ndim == 3:
        # The one grey formula, so an RGB image is cut on the grey a 1-channel model sees.
        grey = to_grey(image[..., :3])[..., 0] if image.shape[-1] >= 3 else image.mean(axis=-1)
    else:
        grey = image
    if sigma > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), sigma)
    low, high = np.percentile(grey, [0.5, 99.8])
    grey = stretch_between(grey, low, high)
    level = threshold_heatmap(grey, "otsu") + offset
    foreground = grey > level
    if mode == "local" and foreground.any() and not foreground.all():
        background = float(np.median(grey[~foreground]))
        floor = background + LOCAL_FLOOR * (level - background)
        local = cv2.GaussianBlur(grey, (0, 0), LOCAL_SIGMA)
        foreground |= (grey > local) & (grey > floor)
    return foreground


def image_markers(
    seeds: np.ndarray,
    foreground: np.ndarray,
    surface: np.ndarray | None = None,
    min_distance: float = 5.0,
) -> np.ndarray:
    """Watershed markers for `extent="image"`: the hot part of the foreground, split or whole.

    With `surface` None every connected part of `seeds` (heat mask and image foreground) is one
    marker, so touching nuclei whose hot regions merged become one box. Otherwise the markers
    are the peaks of `surface` over the whole foreground (`peak_markers`, at least
    `min_distance` apart; for the foreground's distance transform these are the classical
    watershed's nucleus centres) that lie inside `seeds`, plus one marker for every part of
    `seeds` that holds no such peak: the heat says which foreground is a nucleus, the surface
    how many nuclei a hot region holds.

    Returns:
        int32 (H, W) marker labels, 0 elsewhere.
    """
    seeds = np.asarray(seeds, bool)
    regions = contour_labels(seeds)
    if surface is None:
        return regions
    peaks = peak_markers(surface, foreground, min_distance)
    peaks = np.where(seeds, peaks, 0)
    points = np.flatnonzero(peaks)
    markers = np.zeros(seeds.shape, np.int32)
    markers.flat[points] = np.arange(1, len(points) + 1)
    covered = np.unique(regions.flat[points])
    empty = np.setdiff1d(np.unique(regions[regions > 0]), covered)
    fill = np.isin(regions, empty)
    markers[fill] = len(points) + np.searchsorted(empty, regions[fill]) + 1
    return markers


def image_instances(
    heat: np.ndarray, mask: np.ndarray, image: np.ndarray, params: BoxParams, mode: str
) -> np.ndarray:
    """`extent="image"` labels: the hot part of the image's `mode` foreground as markers, grown
    over that foreground by a watershed on its distance transform."""
    from skimage.segmentation import watershed

    foreground = image_foreground(image, mode=mode)
    distance = distance_to_background(foreground)
    markers = image_markers(
        mask & foreground,
        foreground,
        None if params.split is None else distance if params.split == "distance" else heat,
        params.min_distance,
    )
    return watershed(-distance, markers, mask=foreground).astype(np.int32)


def sized_like(labels: np.ndarray, diameter: float) -> int:
    """How many labelled regions have 0.5-2x (`AUTO_AREA_RANGE`) the area of a `diameter` disc."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    disc = math.pi * float(diameter) ** 2 / 4.0
    low, high = AUTO_AREA_RANGE
    return int(((areas >= low * disc) & (areas <= high * disc)).sum())


def heatmap_to_boxes(
    heat: np.ndarray, params: BoxParams | None = None, image: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes around the hot regions of one heatmap.

    Args:
        heat: (H, W) non-negative map (probabilities or a normalized CAM).
        params: `BoxParams` (defaults: half of the max, no splitting, mean score).
        image: (H, W[, C]) image the map belongs to; only used (and required) by
            `extent="image"`.

    Returns:
        `(boxes, scores)`: float32 (K, 4) `[x_min, y_min, x_max, y_max]` in pixels and float32
        (K,), sorted by decreasing score. An image with nothing above `min_peak` gives K = 0.
    """
    boxes, scores, _ = heatmap_to_instances(heat, params, image)
    return boxes, scores


def heatmap_to_instances(
    heat: np.ndarray, params: BoxParams | None = None, image: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`heatmap_to_boxes` with the instance label image the boxes were cut from.

    Returns:
        `(boxes, scores, labels)`: as `heatmap_to_boxes`, and int32 (H, W) labels where pixel
        value `i + 1` is the region of `boxes[i]` and 0 is background; regions the area, peak
        or border filters or NMS dropped are background, so the label count equals K.
    """
    params = params or BoxParams()
    heat = np.nan_to_num(np.asarray(heat, np.float32), nan=0.0)
    if heat.ndim != 2:
        raise ValueError(f"heatmap_to_boxes takes one (H, W) map, got shape {heat.shape}")
    level = threshold_heatmap(heat, params.threshold, params.value)
    mask = heat > level
    if params.erode > 1:
        kernel = np.ones((int(params.erode), int(params.erode)), np.uint8)
        mask = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
    if params.extent == "image":
        if image is None or np.asarray(image).shape[:2] != heat.shape:
            raise ValueError("extent='image' needs the image, of the heatmap's height and width")
        modes = ("otsu", "local") if params.foreground == "auto" else (params.foreground,)
        candidates = [image_instances(heat, mask, image, params, mode) for mode in modes]
        labels = max(candidates, key=lambda c: sized_like(c, params.auto_diameter))
    elif params.split is None:
        labels = contour_labels(mask)
    else:
        labels = split_touching(mask, params.min_distance, heat if params.split == "heat" else None)
    boxes, scores, areas, peaks = label_boxes(labels, heat, params.score)
    keep = (peaks >= params.min_peak) & (areas >= params.min_area)
    if params.max_area is not None:
        keep &= areas <= params.max_area
    if params.border == "drop":
        h, w = heat.shape
        keep &= (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < w) & (boxes[:, 3] < h)
    # label_boxes skips empty labels, so map its rows back to their label values.
    ids = np.array([i + 1 for i, sl in enumerate(ndimage.find_objects(labels)) if sl], np.int64)
    boxes, scores, ids = boxes[keep], scores[keep], ids[keep]
    order = non_max_suppression(boxes, scores, params.nms_iou)
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lut[ids[order]] = np.arange(1, len(order) + 1, dtype=np.int32)
    return boxes[order], scores[order], lut[labels]


def heatmaps_to_boxes(
    heatmaps: np.ndarray | Sequence[np.ndarray],
    params: BoxParams | None = None,
    images: Sequence[np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`heatmap_to_boxes` on each map of a batch; returns a list of `(boxes, scores)`."""
    images = images if images is not None else [None] * len(heatmaps)
    return [heatmap_to_boxes(h, params, im) for h, im in zip(heatmaps, images, strict=True)]
