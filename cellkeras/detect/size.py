"""Cell size from the image alone, for `detect` without `--cell_diameter` (as Cellpose's size
model gives the diameter its network was not told).

```
image ─► Otsu foreground (image_foreground) ─► distance transform ─► peaks = centres, their
      heights = radii ─► distance watershed from the peaks ─► regions' equivalent diameters
      ─► median
```

The median over regions (not pixels) counts each nucleus once, whatever its size; regions cut by
the image border are left out (they are smaller than the nuclei they belong to), and so are
specks smaller than a quarter of the first guess.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from cellkeras.detect.boxes import (
    distance_to_background,
    image_foreground,
    peak_markers,
    split_touching,
)

# Below this the estimate is not a size: pixel noise smoothed at 1 px and cut at Otsu's level
# reads as blobs of 4.07 px whatever the noise (a blank or out-of-focus frame), and `detect`
# would upscale such a frame 3x for a 12 px model. The smallest nuclei the estimate was checked
# on (6 px, docs/BENCHMARKS.md "Cell size") come out at 5.8-7.7 px.
MIN_MEASURABLE_DIAMETER = 5.0


def estimate_diameter(image: np.ndarray, passes: int = 2) -> float | None:
    """The median equivalent diameter of the image's nuclei, in pixels (None: no foreground, or
    nothing larger than `MIN_MEASURABLE_DIAMETER`).

    A first pass at 1 px smoothing, then `passes - 1` more with the smoothing scaled to the last
    estimate (an eighth of the diameter, 1-4 px): too little smoothing breaks dim, textured
    nuclei into fragments under Otsu's threshold (the laptrack nuclei came out at 0.75 of their
    labelled size), too much merges small ones (docs/BENCHMARKS.md, "Cell size").
    """
    diameter = blob_diameter(image, 1.0)
    for _ in range(passes - 1):
        if diameter is None:
            break
        diameter = blob_diameter(image, float(np.clip(diameter / 8.0, 1.0, 4.0)))
    if diameter is None or diameter < MIN_MEASURABLE_DIAMETER:
        return None
    return diameter


def blob_diameter(image: np.ndarray, sigma: float = 1.0) -> float | None:
    """The median equivalent diameter (``2 * sqrt(area / pi)``) of the image's blobs, pixels.

    Args:
        image: (H, W) or (H, W, C) fluorescence image (bright cells on a dark background).
        sigma: Gaussian smoothing before Otsu's threshold, pixels.

    Returns:
        The diameter in pixels, or None when the image has no foreground to measure.
    """
    foreground = image_foreground(image, sigma)
    if not foreground.any() or foreground.all():
        return None
    distance = distance_to_background(foreground)
    # First guess: the typical radius is the median height of the local distance maxima.
    peaks = peak_markers(distance, foreground, 2.0)
    heights = distance[peaks > 0]
    if not len(heights):
        return None
    radius = float(np.median(heights))
    regions = split_touching(foreground, max(2.0, 0.7 * radius))
    ids = np.unique(regions[regions > 0])
    border = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
    inner = np.setdiff1d(ids, border)
    ids = inner if len(inner) >= 3 else ids
    areas = np.asarray(ndimage.sum_labels(np.ones(regions.shape), regions, ids))
    areas = areas[areas >= 0.25 * math.pi * radius**2]
    if not len(areas):
        return None
    return float(np.median(2.0 * np.sqrt(areas / math.pi)))
