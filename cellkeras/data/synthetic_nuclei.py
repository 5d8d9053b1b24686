"""Synthetic fluorescence nuclei with exact instance labels, deterministic from a seed.

A field is drawn in label space first, then imaged: every nucleus is an ellipse (size, elongation
and orientation drawn per nucleus) painted into the label image, so the labels are exact by
construction; the grey image is each nucleus's brightness times a domed, textured profile, plus a
smooth uneven background, blurred by a Gaussian point-spread function, with Poisson (shot) and
Gaussian (read) noise. What varies, and why (each is something a real nuclear stain shows):

- size: diameters drawn around the field's `diameter` (per-nucleus spread `size_spread`);
- brightness: log-normal per nucleus, with a share `dim_fraction` of dim nuclei (a third to a
  fifth of the others, as in G1 or out-of-focus nuclei);
- blur: the PSF's sigma, per field;
- noise: photons per unit brightness (shot noise) and read noise, per field;
- clumping: a share `clump_fraction` of nuclei is placed against an earlier one, touching or
  overlapping it a little; the later one only gets the pixels still free, like a nucleus lying
  under its neighbour;
- background: an offset plus a tilted plane and a broad blob, per field;
- layout: nuclei only settle where a smooth random field is above a level, so a field has
  crowded colonies and empty stretches (`coverage`: the share of the field open to nuclei).

`synthetic_nuclei_sample` stacks fields into a `NucleiSample`, so everything that takes the real
samples (`nuclei_patches`, the detection experiment) takes these too.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from cellkeras.data.samples import NucleiSample


@dataclasses.dataclass
class NucleiFieldParams:
    """How one synthetic field looks; `random_field_params` draws varied ones.

    Attributes:
        size: (height, width) in pixels.
        diameter: median nucleus diameter in pixels (equivalent diameter of the ellipse).
        size_spread: per-nucleus diameters are `diameter * exp(N(0, size_spread))`.
        density: nuclei per 1000 px² of open area the field tries to hold (free space
            permitting).
        coverage: share of the field open to nuclei (1: all of it).
        clump_fraction: share of nuclei placed touching an earlier nucleus.
        dim_fraction: share of dim nuclei.
        elongation: largest axis ratio of an ellipse (1: circles only).
        brightness: median nucleus brightness above background (grey levels).
        background: background offset (grey levels).
        unevenness: amplitude of the background's plane and blob, relative to `brightness`.
        blur: Gaussian PSF sigma in pixels.
        photons: photons per grey level (higher: less shot noise).
        read_noise: Gaussian read noise sigma (grey levels).
    """

    size: tuple[int, int] = (128, 128)
    diameter: float = 12.0
    size_spread: float = 0.15
    density: float = 3.0
    coverage: float = 0.6
    clump_fraction: float = 0.3
    dim_fraction: float = 0.15
    elongation: float = 1.6
    brightness: float = 1500.0
    background: float = 300.0
    unevenness: float = 0.3
    blur: float = 1.0
    photons: float = 0.5
    read_noise: float = 20.0

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 8:
            raise ValueError(f"size must be (height, width), both >= 8; got {self.size}")
        if not self.diameter >= 2:
            raise ValueError(f"diameter must be >= 2 px, got {self.diameter}")
        for name in ("clump_fraction", "dim_fraction", "coverage"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.elongation < 1:
            raise ValueError(f"elongation must be >= 1, got {self.elongation}")


def random_field_params(
    rng: np.random.Generator, size: tuple[int, int] = (128, 128), diameter: float = 12.0
) -> NucleiFieldParams:
    """Varied field settings: blur, noise, clumping, dim share and background drawn per field."""
    return NucleiFieldParams(
        size=size,
        diameter=diameter,
        size_spread=float(rng.uniform(0.08, 0.25)),
        density=float(rng.uniform(1.5, 4.5)) * (12.0 / diameter) ** 2,
        coverage=float(rng.uniform(0.3, 0.9)),
        clump_fraction=float(rng.uniform(0.0, 0.5)),
        dim_fraction=float(rng.uniform(0.0, 0.3)),
        elongation=float(rng.uniform(1.0, 1.8)),
        brightness=float(rng.uniform(600, 3000)),
        background=float(rng.uniform(100, 800)),
        unevenness=float(rng.uniform(0.0, 0.5)),
        blur=float(rng.uniform(0.5, 2.0)),
        photons=float(rng.uniform(0.1, 2.0)),
        read_noise=float(rng.uniform(5, 40)),
    )


def _ellipse(h: int, w: int, cy: float, cx: float, a: float, b: float, angle: float):
    """The ellipse with semi-axes a, b rotated by `angle` radians, inside its bounding window.

    Returns:
        `(window, inside, rho2)`: the (rows, columns) slices it covers, a boolean mask of its
        pixels there, and every pixel's squared normalized radius (1 on the outline); None when
        it lies outside the image.
    """
    r = a + 1.0
    y0, y1 = max(0, int(np.floor(cy - r))), min(h, int(np.ceil(cy + r)) + 1)
    x0, x1 = max(0, int(np.floor(cx - r))), min(w, int(np.ceil(cx + r)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    y, x = np.ogrid[y0:y1, x0:x1]
    dy, dx = y - cy, x - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    rho2 = (u / a) ** 2 + (v / b) ** 2
    return (slice(y0, y1), slice(x0, x1)), rho2 <= 1.0, rho2


def nuclei_field(params: NucleiFieldParams, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic nuclei field.

    Returns:
        `(image, labels)`: uint16 (H, W) grey image and int32 (H, W) instance labels (0:
        background, 1..K the nuclei: each an ellipse, possibly cut by a neighbour painted before
        it or by the image border).
    """
    rng = np.random.default_rng(seed)
    h, w = params.size
    labels = np.zeros((h, w), np.int32)
    signal = np.zeros((h, w), np.float32)
    # Open area: a smooth random field (features a few nuclei wide) above its quantile.
    field = cv2.GaussianBlur(
        rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), 2.0 * params.diameter
    )
    open_area = field >= np.quantile(field, 1.0 - params.coverage)
    target = int(round(params.density * params.coverage * h * w / 1000.0))
    centres: list[tuple[float, float, float]] = []
    count, attempts = 0, 0
    while count < target and attempts < 20 * max(target, 1):
        attempts += 1
        d = params.diameter * float(np.exp(rng.normal(0.0, params.size_spread)))
        ratio = float(rng.uniform(1.0, params.elongation))
        a, b = d / 2 * np.sqrt(ratio), d / 2 / np.sqrt(ratio)
        angle = float(rng.uniform(0, np.pi))
        clumped = bool(centres) and rng.random() < params.clump_fraction
        if clumped:
            py, px, pr = centres[int(rng.integers(len(centres)))]
            theta = float(rng.uniform(0, 2 * np.pi))
            gap = (pr + d / 2) * float(rng.uniform(0.8, 1.0))
            cy, cx = py + gap * np.sin(theta), px + gap * np.cos(theta)
        else:
            cy, cx = float(rng.uniform(-d / 4, h + d / 4)), float(rng.uniform(-d / 4, w + d / 4))
            if not open_area[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))]:
                continue
        drawn = _ellipse(h, w, cy, cx, a, b, angle)
        if drawn is None or not drawn[1].any():
            continue
        window, inside, rho2 = drawn
        free = inside & (labels[window] == 0)
        if clumped:
            # A nucleus mostly hidden under its neighbour would not be labelled as one.
            if free.sum() < 0.7 * inside.sum():
                continue
        else:
            # Isolated ones keep a one-pixel gap, so only clumps touch.
            grown = cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            if (labels[window][grown] > 0).any():
                continue
        count += 1
        labels[window][free] = count
        centres.append((cy, cx, d / 2))
        level = params.brightness * float(np.exp(rng.normal(0.0, 0.25)))
        if rng.random() < params.dim_fraction:
            level *= float(rng.uniform(0.2, 0.35))
        dome = 0.75 + 0.25 * (1.0 - np.clip(rho2[free], 0, 1))
        signal[window][free] = level * dome
    # Chromatin texture: smooth multiplicative noise on the nuclei only.
    texture = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), 1.0)
    signal *= 1.0 + 0.25 * texture / max(float(texture.std()), 1e-6)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    tilt = rng.normal(0.0, 1.0, 2)
    plane = (tilt[0] * (yy / h - 0.5) + tilt[1] * (xx / w - 0.5)) / max(np.hypot(*tilt), 1e-6)
    by, bx, bs = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.2, 0.5) * max(h, w)
    blob = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * bs**2))
    uneven = params.unevenness * params.brightness * (0.5 * plane + blob)
    clean = params.background + uneven + cv2.GaussianBlur(signal, (0, 0), params.blur)
    clean = np.clip(clean, 0, None)
    image = rng.poisson(clean * params.photons) / params.photons
    image = image + rng.normal(0.0, params.read_noise, (h, w))
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16), labels


def synthetic_nuclei_sample(
    frames: int = 4,
    size: tuple[int, int] = (128, 128),
    diameter: float = 12.0,
    seed: int = 0,
    vary: bool = True,
) -> NucleiSample:
    """`frames` fields stacked as a `NucleiSample` (pixel size None).

    Args:
        frames: number of fields.
        size: (height, width) of each.
        diameter: median nucleus diameter in pixels.
        seed: everything is drawn from it; the same seed gives the same sample.
        vary: draw each field's settings with `random_field_params` (else the defaults).
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(frames):
        params = (
            random_field_params(rng, size, diameter)
            if vary
            else NucleiFieldParams(size=size, diameter=diameter)
        )
        image, label = nuclei_field(params, seed=int(rng.integers(2**31)))
        images.append(image)
        labels.append(label)
    return NucleiSample(images=np.stack(images), labels=np.stack(labels), pixel_size_um=None)
