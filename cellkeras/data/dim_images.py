"""Dim 16-bit images: how much of their range the images use, and the normalization "auto" picks.

12-bit camera data stored in 16-bit files reaches the network as values of at most ~0.06 under
"range" normalization, and training on it was unstable (docs/BENCHMARKS.md, "Real data").
`check_images` warns about it under "range"; `choose_normalization` is what the trainer's
`--normalization=auto` applies instead.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from cellkeras.data.imageset import ImageSet
from cellkeras.io.images import ImageError, decode_raw

# 16-bit images whose brightest pixels stay below this share of 65535 hold 12-bit (or fewer)
# data; under "range" they reach the network as values of at most 0.06, and training on them
# was unstable: on the ndev nucleus patches (brightest pixels ~1,200) validation accuracy
# flipped between 0.16 and 0.99 from epoch to epoch and 3 of 18 runs ended at a constant
# prediction, none of 16 with "percentile" (docs/BENCHMARKS.md, "Real data").
DIM_RANGE_SHARE = 1 / 16
DIM_BRIGHT_SHARE = 0.01  # this share of dim images may reach DIM_RANGE_SHARE (outliers)
AUTO_NORMALIZATION_SAMPLE = 256  # images decoded to choose; evenly spaced through the set


def range_used(pixels: np.ndarray) -> float | None:
    """The brightest pixel as a share of a 16-bit image's type maximum (None: another type)."""
    if pixels.dtype != np.uint16 or not pixels.size:
        return None
    return float(pixels.max()) / 65535.0


def dim_counts(shares: list[float | None]) -> tuple[int, int, int]:
    """`(images, 16-bit images, 16-bit images reaching DIM_RANGE_SHARE)`: counts, so that
    workers holding shares of the files can add theirs up and apply `counts_are_dim` alike."""
    known = [share for share in shares if share is not None]
    return len(shares), len(known), sum(share >= DIM_RANGE_SHARE for share in known)


def counts_are_dim(images: int, sixteen_bit: int, bright: int) -> bool:
    """Most images are 16-bit, and at most `DIM_BRIGHT_SHARE` of those use 1/16 of the range."""
    return (
        sixteen_bit > 0 and sixteen_bit >= images / 2 and bright <= DIM_BRIGHT_SHARE * sixteen_bit
    )


def _dim_share(shares: list[float | None]) -> float | None:
    """The images' brightest share of their range (99th percentile over the 16-bit ones) when
    `counts_are_dim`; None otherwise."""
    if not counts_are_dim(*dim_counts(shares)):
        return None
    return float(np.percentile([share for share in shares if share is not None], 99))


def warn_if_dim(shares: list[float | None], name: str) -> None:
    """Warns when 16-bit images use a small part of their range under "range"."""
    top = _dim_share(shares)
    if top is not None:
        warnings.warn(
            f"{name}: the 16-bit images use at most {top:.1%} of their range (brightest pixels "
            f"~{round(top * 65535)} of 65535, e.g. 12-bit camera data), so under "
            f"--normalization=range the network sees values of at most {top:.2f}, and training "
            "on such data was unstable here; use --normalization=percentile (or leave it at "
            "auto)",
            stacklevel=3,
        )


def decoded_sample(imageset: ImageSet, count: int) -> list[np.ndarray]:
    """Up to `count` of a file- or bytes-backed set's images, evenly spaced through it, decoded
    as stored. Unreadable ones are passed over: `check_images` reports them, with every other
    bad image."""
    stored = imageset.paths if imageset.paths is not None else imageset.encoded
    if not stored:
        return []
    picks = np.unique(np.linspace(0, len(stored) - 1, min(count, len(stored))).astype(int))
    decoded = []
    for i in picks:
        try:
            data = Path(stored[i]).read_bytes() if imageset.paths is not None else stored[i]
            decoded.append(decode_raw(data, source=str(stored[i])[:200]))
        except (ImageError, OSError):
            continue
    return decoded


def range_shares(imageset: ImageSet) -> list[float | None]:
    """Each image's brightest pixel as a share of its 16-bit range (None: another type), for
    up to `AUTO_NORMALIZATION_SAMPLE` images evenly spaced through the set."""
    if imageset.images is not None:
        return [range_used(image) for image in imageset.images]
    return [range_used(pixels) for pixels in decoded_sample(imageset, AUTO_NORMALIZATION_SAMPLE)]


def choose_normalization(
    imageset: ImageSet,
    counts: tuple[int, int, int] | None = None,
    shares: list[float | None] | None = None,
) -> tuple[str, str]:
    """What `normalization="auto"` means for these images: `(normalization, why)`.

    "percentile" for 16-bit images that use under `DIM_RANGE_SHARE` of their range (12-bit
    camera data, on which training under "range" was unstable), else "range": on the embryo
    frames, 8-bit, a per-image stretch cost 0.17 mean test accuracy on one time-block cut and
    gained 0.04 on another (docs/BENCHMARKS.md, "Real data"), so it is not the default for
    data that fills its range. Decodes at most `AUTO_NORMALIZATION_SAMPLE` images. `counts`
    (`dim_counts` summed over every worker's share of the files) decide instead when given, so
    that workers choose as one process reading every file would; `shares` (`range_shares`)
    when already measured, so nothing is decoded twice.
    """
    shares = range_shares(imageset) if shares is None else shares
    images, sixteen_bit, bright = dim_counts(shares) if counts is None else counts
    if not counts_are_dim(images, sixteen_bit, bright):
        return "range", "not mostly 16-bit images using under 1/16 of their range"
    why = (
        f"{sixteen_bit - bright} of {images} sampled images are 16-bit and use under 1/16 of "
        "their range"
    )
    top = _dim_share(shares)
    if top is not None:
        why += f", at most {top:.1%} (brightest ~{round(top * 65535)} of 65535)"
    return "percentile", why
