"""Synthetic blood smears: cellkeras' embedded default dataset.

The generator imitates the public "blood cell images" dataset (one white blood cell per image
among red cells, Wright-Giemsa stain: pinkish background and red cells, purple nuclei). Four
white-cell types differ by morphology the way they do under the microscope:

- eosinophil: bilobed nucleus ("spectacles"), cytoplasm packed with orange-red granules;
- lymphocyte: small cell, round dense nucleus filling most of it, thin rim of sky-blue cytoplasm;
- monocyte: the largest cell, kidney- to horseshoe-shaped lacy nucleus, grey-blue cytoplasm,
  sometimes vacuoles;
- neutrophil: 3-5 (rarely 2) nuclear lobes joined by thin strands, pale lilac cytoplasm with
  faint fine granules.

Red cells are pale discs with a lighter centre, overlapping, at a density that varies from image
to image. Pixels come from a Beer-Lambert model: every stain has an absorbance vector, the cells
add stain concentration, and the light that gets through is `exp(-absorbance)`, so overlapping
cells darken the way they do in a real smear. Every image gets its own stain hue/saturation,
illumination gradient (vignetting), blur and signal-dependent (Poisson-like) plus Gaussian noise.

`difficulty` (0 = clean and well separated, 1 = default, 2 = hard) widens the overlap between
classes (two-lobed neutrophils, three-lobed eosinophils with few granules, monocytes whose deep
notch makes them look bilobed, large lymphocytes with more cytoplasm, size ranges) and the
strength of stain, illumination and noise variation.

Everything is drawn from a random generator seeded by `(seed, image index)`, so the same seed
gives bit-identical images, and image `i` does not depend on how many images are asked for.
All geometry is designed in "units": one unit is one pixel of a 96-pixel image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from cellkeras.data.imageset import ImageSet

SYNTHETIC_CLASSES: tuple[str, ...] = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
"""White-cell classes, alphabetical like the blood-cell dataset's folders."""

RED_CELL: int = -1
"""`box_labels` code of a red blood cell; white cells carry their index into `classes`."""

DEFAULT_RED_CELL_DENSITY: float = 0.5
"""Mean fraction of the field covered by red cells (overlaps counted twice)."""

DEFAULT_CELL_DIAMETER: float = 34.0
"""Mean neutrophil diameter in pixels of a 96-pixel `generate_cells` image (the scene default)."""

# Mean cell radius in units; the order lymphocyte < neutrophil ~ eosinophil < monocyte is the
# real one (7-10, 12-15, 12-17, 15-22 micrometres), compressed so size alone never decides.
_WHITE_RADIUS = {"lymphocyte": 12.5, "neutrophil": 17.0, "eosinophil": 17.5, "monocyte": 19.5}
_RED_RADIUS = 10.5
_UNIT_PX = 96.0

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
_EOSIN, _NUCLEUS, _GRANULE, _CYTO = range(4)
_SHIFT = 4  # cv2 sub-pixel bits: coordinates are passed multiplied by 16


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def generate_cells(
    num_images: int,
    image_size: int | tuple[int, int] = 96,
    seed: int = 0,
    channels: int = 3,
    difficulty: float = 1.0,
    red_cell_density: float = DEFAULT_RED_CELL_DENSITY,
    classes: Sequence[str] = SYNTHETIC_CLASSES,
) -> ImageSet:
    """Generates a balanced set of synthetic blood-smear images, one white cell each.

    Labels are balanced: every consecutive block of `len(classes)` images holds each class once,
    in an order shuffled per block, so any prefix is balanced to within one image per class and
    image `i` is the same whatever `num_images` is (a larger set extends a smaller one).

    Args:
        num_images: number of images N.
        image_size: side of square images, or `(height, width)`.
        seed: non-negative integer; the same seed gives bit-identical output.
        channels: 3 for RGB, 1 for grayscale (the RGB image converted, so the two agree).
        difficulty: 0 clean and well separated, 1 default, 2 hard (see the module docstring).
        red_cell_density: mean fraction of the image covered by red cells; each image varies it
            by a factor of 0.5-1.5.
        classes: the white-cell classes to draw, a subset of `SYNTHETIC_CLASSES` in any order;
            labels index into it.

    Returns:
        An `ImageSet` with uint8 `images` (N, H, W, channels), `labels`, and per image float32
        `boxes` (K, 4) `[x_min, y_min, x_max, y_max]` in pixels (white cell first, then every
        red cell with a visible part, clipped to the image) and int64 `box_labels` (K,): the
        class index for the white cell, `RED_CELL` (-1) for red cells. `name` is "synthetic".

    Raises:
        ValueError: for a bad count, size, channel number, seed, difficulty or class name.
    """
    height, width = _check_size(image_size)
    kinds = _check_common(seed, channels, difficulty, red_cell_density, classes)
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}.")
    num_classes = len(kinds)
    unit = min(height, width) / _UNIT_PX
    images = np.empty((num_images, height, width, channels), dtype=np.uint8)
    labels = np.empty(num_images, dtype=np.int64)
    boxes: list[np.ndarray] = []
    box_labels: list[np.ndarray] = []
    order = None
    for i in range(num_images):
        block, slot = divmod(i, num_classes)
        if slot == 0:
            order = np.random.default_rng((seed, 0, block)).permutation(num_classes)
        label = int(order[slot])
        rng = np.random.default_rng((seed, 1, i))
        image, cell_boxes, cell_labels = _render_field(
            rng,
            height,
            width,
            unit,
            [(kinds[label], label)],
            red_cell_density,
            difficulty,
            scene=False,
        )
        images[i] = _to_channels(image, channels)
        labels[i] = label
        boxes.append(cell_boxes)
        box_labels.append(cell_labels)
    return ImageSet(
        classes=list(classes),
        labels=labels,
        images=images,
        boxes=boxes,
        box_labels=box_labels,
        name="synthetic",
    )


def generate_scene(
    image_size: int | tuple[int, int] = (512, 512),
    num_cells: int = 16,
    seed: int = 0,
    channels: int = 3,
    difficulty: float = 1.0,
    red_cell_density: float = DEFAULT_RED_CELL_DENSITY,
    cell_diameter: float = DEFAULT_CELL_DIAMETER,
    classes: Sequence[str] = SYNTHETIC_CLASSES,
) -> dict:
    """Generates a large smear field with many white cells of mixed classes among red cells.

    Cells are drawn by the same code as `generate_cells`, at the scale `cell_diameter` sets; the
    default matches 96-pixel `generate_cells` images, so a classifier trained on those sees cells
    of the same size. White cells never overlap each other and lie fully inside the field; red
    cell density varies smoothly across the field as in a real smear.

    Args:
        image_size: side of a square field, or `(height, width)`.
        num_cells: number of white cells; classes are balanced (round-robin, then shuffled).
        seed: non-negative integer; the same seed gives bit-identical output.
        channels: 3 for RGB, 1 for grayscale.
        difficulty: as in `generate_cells`.
        red_cell_density: mean fraction of the field covered by red cells.
        cell_diameter: mean neutrophil diameter in pixels (other types scale with it).
        classes: the white-cell classes to draw, a subset of `SYNTHETIC_CLASSES`.

    Returns:
        A dict with "image" uint8 (H, W, channels), "boxes" float32 (K, 4)
        `[x_min, y_min, x_max, y_max]` (white cells first, then red cells), "box_labels" int64
        (K,) (class index, or `RED_CELL` for red cells) and "classes" (list of names).

    Raises:
        ValueError: for bad arguments, or when `num_cells` white cells do not fit in the field.
    """
    height, width = _check_size(image_size)
    kinds = _check_common(seed, channels, difficulty, red_cell_density, classes)
    if num_cells < 0:
        raise ValueError(f"num_cells must be >= 0, got {num_cells}.")
    if not cell_diameter > 0:
        raise ValueError(f"cell_diameter must be > 0, got {cell_diameter}.")
    rng = np.random.default_rng((seed, 2))
    cell_labels = rng.permutation(np.arange(num_cells) % len(kinds))
    unit = cell_diameter / (2 * _WHITE_RADIUS["neutrophil"])
    image, boxes, box_labels = _render_field(
        rng,
        height,
        width,
        unit,
        [(kinds[int(lab)], int(lab)) for lab in cell_labels],
        red_cell_density,
        difficulty,
        scene=True,
    )
    return {
        "image": _to_channels(image, channels),
        "boxes": boxes,
        "box_labels": box_labels,
        "classes": list(classes),
    }


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _check_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int | np.integer):
        height = width = int(image_size)
    else:
        height, width = (int(v) for v in image_size)
    if min(height, width) < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}.")
    return height, width


def _check_common(
    seed: int, channels: int, difficulty: float, density: float, classes: Sequence[str]
) -> list[str]:
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    if not 0 <= difficulty <= 3:
        raise ValueError(f"difficulty must be in [0, 3], got {difficulty}.")
    if not 0 <= density <= 3:
        raise ValueError(f"red_cell_density must be in [0, 3], got {density}.")
    kinds = list(classes)
    unknown = [c for c in kinds if c not in SYNTHETIC_CLASSES]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(
            f"classes must be distinct names from {SYNTHETIC_CLASSES}, got {tuple(classes)}."
        )
    return kinds


def _to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None]
    return rgb


# --------------------------------------------------------------------------------------------
# Field rendering (shared by generate_cells and generate_scene)
# --------------------------------------------------------------------------------------------


def _render_field(
    rng: np.random.Generator,
    height: int,
    width: int,
    unit: float,
    white: list[tuple[str, int]],
    red_density: float,
    difficulty: float,
    scene: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws one field; returns (uint8 RGB image, boxes, box_labels) at the output size."""
    d = float(difficulty)
    # Small outputs are drawn larger and shrunk with area averaging, so that a 32-pixel image
    # still shows lobes and granules as a blurred microscope image would, not as aliasing.
    ss = int(min(4, max(1, math.ceil(0.66 / unit))))
    hw, ww = height * ss, width * ss
    # One image-wide magnification jitter (objective/camera), and per-cell size jitter later.
    scale = float(np.exp(rng.normal(0.0, 0.04 if scene else 0.05 + 0.03 * d)))
    u = unit * ss * scale
    stains, light = _sample_stains(rng, d)
    maps = np.zeros((hw, ww, 4), dtype=np.float32)

    cells = [_make_white_cell(rng, kind, u, d) for kind, _ in white]
    centres = _place_white_cells(rng, cells, hw, ww, scene)

    red_boxes = _draw_red_cells(rng, maps, u, red_density, centres, cells, d, scene)
    white_boxes = []
    for cell, (cx, cy) in zip(cells, centres, strict=True):
        _draw_white_cell(maps, cell, cx, cy)
        pts = cell.outline
        white_boxes.append(
            [cx + pts[:, 0].min(), cy + pts[:, 1].min(), cx + pts[:, 0].max(), cy + pts[:, 1].max()]
        )

    image = _finish(rng, maps, stains, light, ss, height, width, unit * scale, d)

    boxes = np.array(white_boxes + red_boxes, dtype=np.float32).reshape(-1, 4) / ss
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    box_labels = np.array(
        [label for _, label in white] + [RED_CELL] * len(red_boxes), dtype=np.int64
    )
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1.0) & ((boxes[:, 3] - boxes[:, 1]) >= 1.0)
    keep[: len(white)] = True  # white cells lie fully inside by construction
    return image, boxes[keep], box_labels[keep]


def _sample_stains(rng: np.random.Generator, d: float) -> tuple[np.ndarray, np.ndarray]:
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


def _finish(
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


# --------------------------------------------------------------------------------------------
# Red cells
# --------------------------------------------------------------------------------------------


def _draw_red_cells(
    rng: np.random.Generator,
    maps: np.ndarray,
    u: float,
    density: float,
    centres: list[tuple[float, float]],
    cells: list[_WhiteCell],
    d: float,
    scene: bool,
) -> list[list[float]]:
    """Scatters overlapping red cells over the field; returns their unclipped boxes."""
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
    for cell, (cx, cy) in zip(cells, centres, strict=True):
        near = np.hypot(xs - cx, ys - cy) < 0.75 * (cell.radius + r_mean)
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
    eosin = maps[..., _EOSIN]
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


# --------------------------------------------------------------------------------------------
# White cells
# --------------------------------------------------------------------------------------------


@dataclass
class _WhiteCell:
    """A white cell's geometry and stains in cell-local working pixels (centre at 0, 0)."""

    kind: str
    radius: float
    outline: np.ndarray  # (P, 2) cell membrane polygon
    nucleus: list[np.ndarray]  # polygons whose union is the nucleus
    nucleus_conc: float
    chromatin: tuple[int, float]  # texture grid size, relative amplitude
    cyto: tuple[float, float]  # eosin, basophil concentration of the cytoplasm
    granules: tuple[float, float, float, int]  # spacing, sigma (units of u), concentration, stain
    vacuoles: int
    u: float
    seed: int


def _ellipse(cx: float, cy: float, a: float, b: float, angle: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    c, s = math.cos(angle), math.sin(angle)
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([cx + x * c - y * s, cy + x * s + y * c], axis=1)


def _strand(p: np.ndarray, q: np.ndarray, width: float) -> np.ndarray:
    """A thin quadrilateral from p to q: the chromatin filament joining two lobes."""
    direction = q - p
    normal = np.array([-direction[1], direction[0]]) / (np.hypot(*direction) + 1e-6)
    half = normal * width / 2
    return np.stack([p + half, q + half, q - half, p - half])


def _make_white_cell(rng: np.random.Generator, kind: str, u: float, d: float) -> _WhiteCell:
    """Samples one white cell's shape: membrane, nucleus polygons, stains and texture."""
    radius = _WHITE_RADIUS[kind] * u * float(np.exp(rng.normal(0.0, 0.05 + 0.03 * d)))
    big = kind == "lymphocyte" and rng.uniform() < 0.12 * d
    if big:  # a large (reactive) lymphocyte: more cytoplasm, looks like a small monocyte
        radius *= rng.uniform(1.15, 1.35)
    r = radius
    rot = rng.uniform(0.0, 2 * np.pi)
    nucleus: list[np.ndarray] = []
    granules = (2.0, 0.6, 0.0, _NUCLEUS)
    vacuoles = 0

    if kind == "lymphocyte":
        a = r * (rng.uniform(0.62, 0.72) if big else rng.uniform(0.76, 0.88))
        off = rng.normal(0.0, 0.05 * r, size=2)
        nucleus.append(_ellipse(off[0], off[1], a, a * rng.uniform(0.86, 1.0), rot, 32))
        if rng.uniform() < 0.15 * d:  # a shallow cleft, as in a notched lymphocyte
            _notch(nucleus, a, rot, rng.uniform(0.1, 0.25))
        nucleus_conc = rng.uniform(1.15, 1.45)
        chromatin = (int(rng.integers(4, 7)), rng.uniform(0.15, 0.3))
        cyto = (rng.uniform(0.0, 0.06), rng.uniform(0.5, 0.9))
    elif kind == "monocyte":
        a, b = r * rng.uniform(0.62, 0.72), r * rng.uniform(0.46, 0.55)
        depth = rng.uniform(0.15, 0.5 + 0.25 * d)  # deep notches look horseshoe / bilobed
        width = rng.uniform(0.35, 0.65)
        t = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
        x, y = a * np.cos(t), b * np.sin(t)
        dt = np.angle(np.exp(1j * (t - np.pi / 2)))
        y = y - depth * 2 * b * np.exp(-0.5 * (dt / width) ** 2)
        off = rng.normal(0.0, 0.08 * r, size=2)
        c, s = math.cos(rot), math.sin(rot)
        nucleus.append(np.stack([off[0] + x * c - y * s, off[1] + x * s + y * c], axis=1))
        nucleus_conc = rng.uniform(0.7, 0.95)
        chromatin = (int(rng.integers(8, 12)), rng.uniform(0.25, 0.4))
        cyto = (rng.uniform(0.1, 0.2), rng.uniform(0.3, 0.5))
        vacuoles = int(rng.integers(0, 6))
    elif kind == "neutrophil":
        n_lobes = 2 if rng.uniform() < 0.07 * d else int(rng.choice([3, 3, 4, 4, 5]))
        lobe = r * rng.uniform(0.2, 0.25)
        centres = _lobe_chain(rng, n_lobes, lobe, r)
        for p, q in zip(centres[:-1], centres[1:], strict=True):
            nucleus.append(_strand(p, q, lobe * rng.uniform(0.2, 0.4)))
        for p in centres:
            nucleus.append(
                _ellipse(p[0], p[1], lobe * rng.uniform(1.0, 1.35), lobe, rng.uniform(0, np.pi), 20)
            )
        nucleus_conc = rng.uniform(1.0, 1.3)
        chromatin = (int(rng.integers(5, 8)), rng.uniform(0.15, 0.3))
        cyto = (rng.uniform(0.2, 0.32), rng.uniform(0.0, 0.08))
        granules = (2.0, 0.5, rng.uniform(0.05, 0.12), _NUCLEUS)
    else:  # eosinophil
        n_lobes = 3 if rng.uniform() < 0.07 * d else 2
        lobe = r * rng.uniform(0.27, 0.34)
        centres = _lobe_chain(rng, n_lobes, lobe, r)
        for p, q in zip(centres[:-1], centres[1:], strict=True):
            nucleus.append(_strand(p, q, lobe * rng.uniform(0.3, 0.5)))
        for p in centres:
            nucleus.append(
                _ellipse(p[0], p[1], lobe * rng.uniform(1.0, 1.25), lobe, rng.uniform(0, np.pi), 24)
            )
        nucleus_conc = rng.uniform(0.95, 1.25)
        chromatin = (int(rng.integers(5, 8)), rng.uniform(0.15, 0.3))
        cyto = (rng.uniform(0.1, 0.2), rng.uniform(0.0, 0.05))
        # Fewer, paler granules at higher difficulty drift towards a neutrophil.
        fill = rng.uniform(max(0.3, 1.0 - 0.3 * d), 1.0)
        granules = (2.1 / math.sqrt(fill), 0.85, rng.uniform(0.5, 0.8) * fill, _GRANULE)

    # Membrane: an ellipse with a little low-frequency wobble.
    t = np.linspace(0.0, 2 * np.pi, 40, endpoint=False)
    wobble = sum(
        rng.normal(0.0, 0.025) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    aspect = 1.0 + abs(rng.normal(0.0, 0.05))
    c, s = math.cos(rot), math.sin(rot)
    x, y = r * aspect * np.cos(t) * (1 + wobble), r * np.sin(t) * (1 + wobble)
    outline = np.stack([x * c - y * s, x * s + y * c], axis=1)
    return _WhiteCell(
        kind=kind,
        radius=r,
        outline=outline,
        nucleus=nucleus,
        nucleus_conc=float(nucleus_conc),
        chromatin=chromatin,
        cyto=cyto,
        granules=granules,
        vacuoles=vacuoles,
        u=u,
        seed=int(rng.integers(0, 2**31)),
    )


def _notch(nucleus: list[np.ndarray], a: float, rot: float, depth: float) -> None:
    """Pushes the points of the last polygon near one side inwards (a cleft)."""
    pts = nucleus[-1]
    centre = pts.mean(axis=0)
    direction = np.array([-math.sin(rot), math.cos(rot)])
    rel = pts - centre
    along = rel @ direction / (np.hypot(rel[:, 0], rel[:, 1]) + 1e-6)
    push = depth * 2 * a * np.exp(-((np.arccos(np.clip(along, -1, 1)) / 0.45) ** 2) / 2)
    nucleus[-1] = pts - push[:, None] * direction


def _lobe_chain(rng: np.random.Generator, n: int, lobe: float, r: float) -> np.ndarray:
    """Lobe centres along a bending chain (C- or S-shaped), centred and kept inside the cell."""
    heading = rng.uniform(0.0, 2 * np.pi)
    turn_sign = rng.choice([-1.0, 1.0])
    pts = [np.zeros(2)]
    for _ in range(n - 1):
        step = lobe * rng.uniform(2.3, 2.9)
        pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
        if rng.uniform() < 0.25:
            turn_sign = -turn_sign
        heading += turn_sign * rng.uniform(0.4, 1.1)
    chain = np.array(pts)
    chain -= chain.mean(axis=0)
    reach = np.hypot(chain[:, 0], chain[:, 1]).max() + lobe * 1.3
    if reach > 0.9 * r:  # squeeze long chains so every lobe stays inside the membrane
        chain *= (0.9 * r - lobe * 1.3) / (reach - lobe * 1.3)
    return chain + rng.normal(0.0, 0.05 * r, size=2)


def _place_white_cells(
    rng: np.random.Generator, cells: list[_WhiteCell], hw: int, ww: int, scene: bool
) -> list[tuple[float, float]]:
    """Centres such that every white cell lies inside the field and (scenes) none overlap."""
    centres: list[tuple[float, float]] = []
    for cell in cells:
        lo = -cell.outline.min(axis=0) + 1.0
        hi = np.array([ww, hw]) - cell.outline.max(axis=0) - 1.0
        if np.any(hi < lo):
            raise ValueError(
                f"a {cell.kind} of radius {cell.radius:.0f} px does not fit a {ww}x{hw} field; "
                "use a larger image_size or a smaller cell_diameter."
            )
        for _ in range(500):
            x, y = rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1])
            if not scene or all(
                math.hypot(x - px, y - py) > 1.1 * (cell.radius + other.radius) + 2
                for (px, py), other in zip(centres, cells, strict=False)
            ):
                break
        else:
            raise ValueError(
                f"{len(cells)} white cells do not fit a {ww}x{hw} field without overlapping; "
                "lower num_cells or cell_diameter."
            )
        centres.append((float(x), float(y)))
    return centres


def _draw_white_cell(maps: np.ndarray, cell: _WhiteCell, cx: float, cy: float) -> None:
    """Composites one white cell over the field's stain maps, in a patch around it."""
    hw, ww = maps.shape[:2]
    rng = np.random.default_rng(cell.seed)
    u = cell.u
    ext = np.abs(cell.outline).max() + 3.0
    x0, y0 = math.floor(cx - ext), math.floor(cy - ext)
    size = math.ceil(2 * ext) + 2
    origin = np.array([cx - x0 - 0.5, cy - y0 - 0.5])  # cv2 puts pixel centres on integers

    def fill(polys: list[np.ndarray]) -> np.ndarray:
        mask = np.zeros((size, size), dtype=np.uint8)
        for poly in polys:
            pts = np.round((poly + origin) * (1 << _SHIFT)).astype(np.int32)
            cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, _SHIFT)
        return mask.astype(np.float32) / 255.0

    body = fill([cell.outline])
    nuc = fill(cell.nucleus)
    nuc = cv2.GaussianBlur(nuc, (0, 0), max(0.4, 0.45 * u))

    grid, amp = cell.chromatin
    coarse = rng.normal(0.0, 1.0, size=(grid, grid)).astype(np.float32)
    texture = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(
        rng.normal(0.0, 1.0, size=(size, size)).astype(np.float32), (0, 0), 0.7 * u
    )
    texture = np.clip(1.0 + amp * texture + 0.5 * amp * fine / (fine.std() + 1e-6), 0.3, 2.0)

    cyto = body * (1.0 - nuc)
    eosin_c, baso_c = cell.cyto
    patch = np.zeros((size, size, 4), dtype=np.float32)
    patch[..., _EOSIN] = eosin_c * cyto
    patch[..., _CYTO] = baso_c * cyto
    patch[..., _NUCLEUS] = cell.nucleus_conc * nuc * texture

    spacing, g_sigma, g_conc, g_stain = cell.granules
    if g_conc > 0:
        # Granules as impulses scattered at random, then blurred into blobs: one blur instead
        # of a cv2.circle call per granule.
        count = rng.poisson(np.pi * cell.radius**2 / (spacing * u) ** 2)
        impulses = np.zeros((size, size), dtype=np.float32)
        gx = rng.integers(0, size, size=count)
        gy = rng.integers(0, size, size=count)
        np.add.at(impulses, (gy, gx), rng.uniform(0.6, 1.4, size=count).astype(np.float32))
        sigma = max(0.5, g_sigma * u)
        blobs = cv2.GaussianBlur(impulses, (0, 0), sigma) * (2 * np.pi * sigma**2)
        blobs = np.minimum(blobs, 1.6) * body * (1.0 - 0.5 * nuc)
        patch[..., g_stain] += g_conc * blobs
        if g_stain == _NUCLEUS:  # neutrophil "toxic-free" granules are lilac, not purple
            patch[..., _EOSIN] += 0.8 * g_conc * blobs

    if cell.vacuoles:
        holes = np.zeros((size, size), dtype=np.float32)
        vx = rng.integers(0, size, size=cell.vacuoles)
        vy = rng.integers(0, size, size=cell.vacuoles)
        holes[vy, vx] = 1.0
        sigma = 1.2 * u
        holes = np.minimum(cv2.GaussianBlur(holes, (0, 0), sigma) * (2 * np.pi * sigma**2), 1.0)
        patch[..., _CYTO] *= 1.0 - 0.8 * holes * (1.0 - nuc)
        patch[..., _EOSIN] *= 1.0 - 0.8 * holes * (1.0 - nuc)

    # Clip the patch to the field; the white cell covers most of the red cells beneath it.
    px0, py0 = max(0, -x0), max(0, -y0)
    px1, py1 = min(size, ww - x0), min(size, hw - y0)
    if px0 >= px1 or py0 >= py1:
        return
    roi = maps[y0 + py0 : y0 + py1, x0 + px0 : x0 + px1]
    alpha = body[py0:py1, px0:px1, None]
    roi *= 1.0 - 0.9 * alpha
    roi += patch[py0:py1, px0:px1]
