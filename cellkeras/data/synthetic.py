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

This module holds the two generators and puts a field together; the stains, red cells, optics
and camera are in `cellkeras.data.smear`, the white cells in `cellkeras.data.white_cells`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from cellkeras.data.imageset import ImageSet
from cellkeras.data.smear import draw_red_cells, finish_image, sample_stains
from cellkeras.data.white_cells import (
    WHITE_RADIUS,
    draw_white_cell,
    make_white_cell,
    place_white_cells,
)

SYNTHETIC_CLASSES: tuple[str, ...] = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
"""White-cell classes, alphabetical like the blood-cell dataset's folders."""

RED_CELL: int = -1
"""`box_labels` code of a red blood cell; white cells carry their index into `classes`."""

DEFAULT_RED_CELL_DENSITY: float = 0.5
"""Mean fraction of the field covered by red cells (overlaps counted twice)."""

DEFAULT_CELL_DIAMETER: float = 34.0
"""Mean neutrophil diameter in pixels of a 96-pixel `generate_cells` image (the scene default)."""

# One geometry unit is one pixel of an image this size.
_UNIT_PX = 96.0


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
    unit = cell_diameter / (2 * WHITE_RADIUS["neutrophil"])
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
    stains, light = sample_stains(rng, d)
    maps = np.zeros((hw, ww, 4), dtype=np.float32)

    cells = [make_white_cell(rng, kind, u, d) for kind, _ in white]
    centres = place_white_cells(rng, cells, hw, ww, scene)

    red_boxes = draw_red_cells(
        rng, maps, u, red_density, centres, [c.radius for c in cells], d, scene
    )
    white_boxes = []
    for cell, (cx, cy) in zip(cells, centres, strict=True):
        draw_white_cell(maps, cell, cx, cy)
        pts = cell.outline
        white_boxes.append(
            [cx + pts[:, 0].min(), cy + pts[:, 1].min(), cx + pts[:, 0].max(), cy + pts[:, 1].max()]
        )

    image = finish_image(rng, maps, stains, light, ss, height, width, unit * scale, d)

    boxes = np.array(white_boxes + red_boxes, dtype=np.float32).reshape(-1, 4) / ss
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    box_labels = np.array(
        [label for _, label in white] + [RED_CELL] * len(red_boxes), dtype=np.int64
    )
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1.0) & ((boxes[:, 3] - boxes[:, 1]) >= 1.0)
    keep[: len(white)] = True  # white cells lie fully inside by construction
    return image, boxes[keep], box_labels[keep]
