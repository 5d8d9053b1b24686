"""The smear model behind `cellkeras.data.synthetic`: stains, red cells, optics and camera.

Pixels come from a Beer-Lambert model: each field is four stain-concentration maps (eosin,
nuclear stain, eosinophil granules, basophilic cytoplasm), every stain has an absorbance
vector, and the light that gets through is `exp(-absorbance)`, so overlapping cells darken the
way they do in a real smear. `finish_image` then applies the optics and the camera.
All geometry is in "units": one unit is one pixel of a 96-pixel image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

_RED_RADIUS = 10.5

# Absorbance of one unit of stain concentration in R, G, B. Values picked so that the colours at
# concentration 1 match the dataset: red cell ~(219, 140, 155), nucleus ~(94, 60, 162),
# eosinophil granule ~(226, 104, 85), lymphocyte cytoplasm ~(162, 189, 231).
_STAIN_OD = np.array(
    [
        [0.12, 0.58, 0.42],  # eosin: red cells, pink cytoplasm
        [1.00, 1.45, 0.45],  # azure/methylene blue: nuclei (purple)
        [0.12, 0.90, 1.10],  # eosinophil granules (orange-red)
        [0.45, 0.30, 0.10],  # basophilic cytoplasm (sky blue / grey-blue)
    ],
    dtype=np.float32,
)
_BACKGROUND_OD = np.array([0.06, 0.11, 0.05], dtype=np.float32)  # faint lavender plasma film
EOSIN, NUCLEUS, GRANULE, CYTO = range(4)
"""Indices of the stain maps (the last axis of a field's `maps`)."""


def sample_stains(rng: np.random.Generator, d: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-image stain absorbance (5, 3: four stains and the background) and light colour."""
    # Multiplying an absorbance vector channel-wise shifts the stain's hue and saturation; a
    # common factor changes how strongly the slide took up the stain.
    hue = np.exp(rng.normal(0.0, 0.04 + 0.05 * d, size=(5, 3)))
    strength = np.exp(rng.normal(0.0, 0.05 + 0.08 * d, size=(5, 1)))
    base = np.concatenate([_STAIN_OD, _BACKGROUND_OD[None]], axis=0)
    stains = (base * hue * strength).astype(np.float32)
    light = np.array([1.0, 0.985, 0.975]) * rng.uniform(0.93, 1.03)
    light *= np.exp(rng.normal(0.0, 0.01 + 0.015 * d, size=3))
    return stains, light.astype(np.float32)


def finish_image(
    rng: np.random.Generator,
    maps: np.ndarray,
    stains: np.ndarray,
    light: np.ndarray,
    ss: int,
    height: int,
    width: int,
    unit: float,
    d: float,
) -> np.ndarray:
    """Stain maps → transmitted light → optics and camera: resize, vignetting, blur, noise."""
    # cv2.transform applies the (3, 4 + 1) affine map from stain concentrations to minus the
    # absorbance; log(light) in the constant column makes exp() return camera counts directly.
    affine = np.concatenate([-stains[:4].T, (np.log(light * 255.0) - stains[4])[:, None]], axis=1)
    rgb = cv2.exp(cv2.transform(maps, affine))
    if ss > 1:
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)

    # Vignetting around a random optical centre plus a linear tilt of the illumination. Both
    # are smooth, so they are computed on a 9x9 grid and interpolated (cheaper than full size).
    grid = np.linspace(-0.5, 0.5, 9, dtype=np.float32)
    ys, xs = grid[:, None], grid[None, :]
    cx, cy = rng.uniform(-0.3, 0.3, size=2)
    vignette = rng.uniform(0.05, 0.15 + 0.2 * d)
    angle = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(0.0, 0.05 + 0.08 * d)
    illum = (1.0 - (vignette / 0.5) * ((xs - cx) ** 2 + (ys - cy) ** 2)) * (
        1.0 + tilt * (np.cos(angle) * xs + np.sin(angle) * ys)
    )
    illum = cv2.resize(illum.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    rgb *= illum.astype(np.float32)[..., None]

    sigma = rng.uniform(0.25, 0.45 + 0.3 * d) * unit
    if sigma > 0.3:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)

    # Photon (shot) noise grows with the signal; read noise does not. One noise sequence read
    # at offsets 0, 1, 2 for R, G, B costs a third of three; channels stay independent per pixel.
    gain = np.float32(rng.uniform(0.1, 0.3 + 0.5 * d))
    read = np.float32(rng.uniform(0.5, 1.0 + 2.0 * d))
    seq = rng.standard_normal(height * width + 2, dtype=np.float32)
    noise = np.lib.stride_tricks.as_strided(
        seq, shape=(height, width, 3), strides=(4 * width, 4, 4), writeable=False
    )
    std = np.maximum(rgb, 0.0)
    std *= gain
    std += read * read
    np.sqrt(std, out=std)
    std *= noise
    rgb += std
    rgb += 0.5  # round to nearest on the truncating cast below
    np.clip(rgb, 0.0, 255.0, out=rgb)
    return rgb.astype(np.uint8)


def draw_red_cells(
    rng: np.random.Generator,
    maps: np.ndarray,
    u: float,
    density: float,
    centres: list[tuple[float, float]],
    white_radii: Sequence[float],
    d: float,
    scene: bool,
) -> list[list[float]]:
    """Scatters overlapping red cells over the field, most of them pushed off the white cells
    (radii `white_radii` at `centres`); returns their unclipped boxes."""
    hw, ww = maps.shape[:2]
    r_mean = _RED_RADIUS * u
    margin = r_mean
    area = (hw + 2 * margin) * (ww + 2 * margin)
    density = density * (rng.uniform(0.5, 1.5) if not scene else 1.0)
    count = rng.poisson(density * area / (np.pi * r_mean**2))
    xs = rng.uniform(-margin, ww + margin, size=count)
    ys = rng.uniform(-margin, hw + margin, size=count)
    keep = np.ones(count, dtype=bool)
    if scene:
        # A smear is thicker in some places than in others: thin the cells by a smooth field.
        coarse = rng.uniform(0.0, 1.0, size=(4, 4)).astype(np.float32)
        field = cv2.resize(coarse, (ww, hw), interpolation=cv2.INTER_CUBIC)
        field = np.clip(0.25 + 1.5 * field, 0.1, 1.6) / 1.6
        yi = np.clip(ys, 0, hw - 1).astype(int)
        xi = np.clip(xs, 0, ww - 1).astype(int)
        keep &= rng.uniform(size=count) < field[yi, xi]
    # White cells push red cells aside while the smear dries; keep a few overlapping ones.
    for radius_w, (cx, cy) in zip(white_radii, centres, strict=True):
        near = np.hypot(xs - cx, ys - cy) < 0.75 * (radius_w + r_mean)
        keep &= ~near | (rng.uniform(size=count) < 0.15 + 0.1 * d)
    xs, ys = xs[keep], ys[keep]
    n = len(xs)
    radius = r_mean * np.exp(rng.normal(0.0, 0.07, size=n))
    aspect = 1.0 + np.abs(rng.normal(0.0, 0.06, size=n))
    angle = rng.uniform(0.0, np.pi, size=n)
    conc = rng.uniform(0.6, 0.95, size=n)
    pallor = rng.uniform(0.55, 0.85, size=n) * (rng.uniform(size=n) > 0.08)
    pallor_width = rng.uniform(0.4, 0.55, size=n)
    if n == 0:
        return []
    a, b = radius * aspect, radius
    c, s = np.cos(angle), np.sin(angle)
    half_w = np.sqrt((a * c) ** 2 + (b * s) ** 2)
    half_h = np.sqrt((a * s) ** 2 + (b * c) ** 2)

    # All red cells of the field are computed at once on a stack of equal patches; only the
    # paste into the field is a Python loop (a slice add per cell).
    half = math.ceil(a.max() + 1.5)
    size = 2 * half + 1
    x0 = np.floor(xs).astype(np.int64) - half
    y0 = np.floor(ys).astype(np.int64) - half
    grid = np.arange(size, dtype=np.float32) + 0.5
    gx = grid[None, None, :] + (x0 - xs).astype(np.float32)[:, None, None]
    gy = grid[None, :, None] + (y0 - ys).astype(np.float32)[:, None, None]
    col = lambda v: np.asarray(v, dtype=np.float32)[:, None, None]  # noqa: E731
    c, s, a, b = col(c), col(s), col(a), col(b)
    dist = np.sqrt(((gx * c + gy * s) / a) ** 2 + ((gy * c - gx * s) / b) ** 2)
    edge = np.clip((1.0 - dist) * b + 0.5, 0.0, 1.0)  # one-pixel anti-aliased rim
    # Biconcave disc: more haemoglobin at the rim, a pale centre.
    profile = (1.0 + 0.3 * np.exp(-(((dist - 0.8) / 0.15) ** 2))) * (
        1.0 - col(pallor) * np.exp(-((dist / col(pallor_width)) ** 2))
    )
    patches = col(conc) * edge * profile
    eosin = maps[..., EOSIN]
    for k in range(n):
        _paste(eosin, patches[k], int(x0[k]), int(y0[k]))
    return np.stack([xs - half_w, ys - half_h, xs + half_w, ys + half_h], axis=1).tolist()


def _paste(target: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    """Adds `patch` into `target` with its top-left corner at (x0, y0), clipped to `target`."""
    h, w = patch.shape
    tx0, ty0 = max(0, x0), max(0, y0)
    tx1, ty1 = min(target.shape[1], x0 + w), min(target.shape[0], y0 + h)
    if tx0 < tx1 and ty0 < ty1:
        target[ty0:ty1, tx0:tx1] += patch[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
