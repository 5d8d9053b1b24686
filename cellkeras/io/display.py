"""Images as RGB uint8 for showing them: galleries, contact sheets, overlays, drawn boxes.

One set of rules for every figure cellkeras draws (`to_display_rgb`):

Values (`scaling`):

* "auto" (the default): uint8 is shown as it is; bool as 0/255; floats whose finite values all
  lie in [0, 1] (the model's inputs) are multiplied by 255; anything else (uint16 and other
  integers, floats beyond [0, 1]) is stretched between its `DISPLAY_PERCENTILES`, so 12-bit
  fluorescence in 16-bit files is visible and one hot pixel does not darken the rest.
* "range": integers by their type's maximum (uint16 / 65535), floats taken as [0, 1] and
  clipped, bool as 0/255 — for images whose absolute level matters (augmented rows shown next
  to their original).
* "percentile": always the percentile stretch, uint8 included.
* `value_range=(low, high)`, whatever `scaling` says: `low` → 0 and `high` → 255, e.g. one
  range for a whole gallery (see `display_range`) so a dim patch stays dim beside a bright one.

One range serves all channels (a per-channel stretch would change the colours) and, for a
batch, all images. NaN is shown as the low end. Values are rounded to the nearest level.

Channels (the last axis when there are three or more axes): (H, W) and one channel are grey,
repeated to RGB; three are RGB; four are RGBA, and alpha is dropped; two or five and more are a
multi-channel microscopy stack with no natural colour mapping, and the first channel is shown
as grey. Any leading axes are kept, so (N, H, W, C) gives (N, H, W, 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Low and high percentiles of the display stretch: the darkest 0.5% go black and the brightest
# 0.2% saturate; cell images are mostly background, so the high end must not clip the cells.
DISPLAY_PERCENTILES: tuple[float, float] = (0.5, 99.8)

SCALINGS = ("auto", "range", "percentile")


def display_range(
    values: np.ndarray, percentiles: Sequence[float] = DISPLAY_PERCENTILES
) -> tuple[float, float]:
    """`(low, high)` percentiles of the finite values (one range for all channels); (0, 1) when
    there is none. Pass it as `value_range` to show several images on one scale."""
    values = np.asarray(values, np.float32)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    low, high = np.percentile(finite, percentiles)
    return float(low), float(high)


def display_channels(image: np.ndarray) -> np.ndarray:
    """The channel rule of the module docstring: (..., H, W, 3), values untouched."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 4:
        return image[..., :3]
    return np.repeat(image[..., :1], 3, axis=-1)


def _levels(values: np.ndarray, low: float, high: float) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float32), nan=low, posinf=high, neginf=low)
    scaled = (values - low) * (255.0 / max(high - low, 1e-6))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _in_unit_range(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return not finite.size or (float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0)


def _value_range(image: np.ndarray, scaling: str) -> tuple[float, float] | None:
    """The values shown as 0 and 255 under `scaling`; None where they are display levels."""
    if scaling == "percentile":
        return display_range(image)
    if image.dtype == np.uint8:
        return None
    if scaling == "range" and np.issubdtype(image.dtype, np.integer):
        return 0.0, float(np.iinfo(image.dtype).max)
    if np.issubdtype(image.dtype, np.floating) and (scaling == "range" or _in_unit_range(image)):
        return 0.0, 1.0
    return display_range(image)


def to_display_rgb(
    image: np.ndarray,
    scaling: str = "auto",
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Any image (or batch) as RGB uint8 for display, by the rules of the module docstring.

    Args:
        image: (H, W), (H, W, C) or (..., H, W, C) pixels of any numeric or bool dtype.
        scaling: "auto", "range" or "percentile".
        value_range: `(low, high)` mapped to 0 and 255; overrides `scaling`.

    Returns:
        A C-contiguous uint8 array (..., H, W, 3).
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    image = display_channels(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * np.uint8(255)
    if value_range is None:
        value_range = _value_range(image, scaling)
    out = image if value_range is None else _levels(image, *value_range)
    return np.ascontiguousarray(out)
