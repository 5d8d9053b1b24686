"""A PNG grid of example images per class, with their boxes: the quick look at any `ImageSet`."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from cellkeras.data.imageset import ImageSet
from cellkeras.io.display import display_range, to_display_rgb
from cellkeras.io.images import decode_raw

# Box colours per class index (RGB, matplotlib's tab10); boxes with a negative label (the
# synthetic generator's red cells) are drawn thin and grey so the labelled cells stand out.
_CLASS_COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]
_OTHER_COLOUR = (150, 150, 150)
_MIN_DISPLAY = 160  # small images are enlarged so one-pixel box lines stay thin


def draw_gallery(
    imageset: ImageSet,
    out_path: str | os.PathLike,
    per_class: int = 6,
    draw_boxes: bool = True,
    title: str | None = None,
) -> str:
    """Writes a PNG grid: one labelled row per class, the first `per_class` images of each.

    Args:
        imageset: any `ImageSet`, in memory (uint8, uint16 or float pixels, 1, 3 or 4 channels)
            or file-backed (`paths`).
        out_path: PNG file to write; parent folders are created.
        per_class: images shown per class (columns).
        draw_boxes: draw `imageset.boxes` when present: in the class colour for boxes whose
            label is a class index, thin grey for others (e.g. `RED_CELL`).
        title: figure title; defaults to the set's `name` and size.

    Returns:
        The path written, as a string.

    Raises:
        ValueError: if `per_class` < 1 or the set is empty.
        OSError: if an image file cannot be read.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}.")
    if len(imageset) == 0:
        raise ValueError("cannot draw a gallery of an empty ImageSet.")
    rows = imageset.num_classes
    fig, axes = plt.subplots(
        rows, per_class, figsize=(1.6 * per_class + 0.8, 1.6 * rows + 0.6), squeeze=False
    )
    counts = imageset.class_counts()
    shown = [np.flatnonzero(imageset.labels == k)[:per_class] for k in range(rows)]
    # One intensity range for the whole grid, so a dim background patch looks dim next to a
    # bright nucleus instead of being stretched into loud noise on its own.
    value_range = None
    stored = imageset.images
    if stored is not None and stored.dtype != np.uint8:
        value_range = display_range(stored[np.concatenate(shown)])
    for row, name in enumerate(imageset.classes):
        indices = shown[row]
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(col < len(indices))
            if col < len(indices):
                index = int(indices[col])
                image = _render(imageset, index, draw_boxes, value_range)
                ax.imshow(image, interpolation="antialiased")
            if col == 0:
                ax.set_ylabel(f"{name}\n(n={counts[row]})", fontsize=9)
    if title is None:
        title = f"{imageset.name or 'images'}: {len(imageset)} images, {rows} classes"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = os.fspath(out_path)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _load_for_display(imageset: ImageSet, index: int) -> np.ndarray:
    """The pixels of image `index` as stored, or decoded from its file or bytes by the same
    reader training uses (so the gallery shows what the model sees, CMYK and TIFF included)."""
    if imageset.images is not None:
        return np.asarray(imageset.images[index])
    if imageset.encoded is not None:
        return decode_raw(imageset.encoded[index], source=f"{imageset.name} record {index}")
    path = os.fspath(imageset.paths[index])
    try:
        return decode_raw(Path(path).read_bytes(), source=path)
    except FileNotFoundError:
        raise OSError(f"cannot read image {path!r}: file not found.") from None


def _render(
    imageset: ImageSet,
    index: int,
    with_boxes: bool,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Image `index` as uint8 RGB, enlarged if small, with its boxes drawn."""
    image = to_display_rgb(_load_for_display(imageset, index), value_range=value_range)
    zoom = max(1, int(np.ceil(_MIN_DISPLAY / max(1, min(image.shape[:2])))))
    if zoom > 1:
        image = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
    if not with_boxes or imageset.boxes is None:
        return image
    labels = None if imageset.box_labels is None else imageset.box_labels[index]
    if labels is None:
        labels = np.full(len(imageset.boxes[index]), int(imageset.labels[index]))
    return draw_boxes(image, imageset.boxes[index], labels, scale=zoom)


def draw_boxes(
    image: np.ndarray, boxes: np.ndarray, box_labels: np.ndarray, scale: float = 1.0
) -> np.ndarray:
    """Draws boxes on a copy of an image, coloured by label.

    Args:
        image: pixels as stored (any dtype, 1, 3 or 4 channels); converted to uint8 RGB.
        boxes: (K, 4) `[x_min, y_min, x_max, y_max]` in pixels of the unscaled image.
        box_labels: (K,) class index per box (class colour, thick), or negative (thin grey).
        scale: factor from box coordinates to `image` pixels (when the image was enlarged).

    Returns:
        uint8 RGB (H, W, 3) with the boxes drawn.
    """
    out = to_display_rgb(image).copy()
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(box_labels).reshape(-1)
    # Grey boxes first, so class-coloured boxes are drawn on top of them.
    for k in np.argsort(labels >= 0, kind="stable"):
        x0, y0, x1, y1 = (boxes[k] * scale).round().astype(int)
        if labels[k] >= 0:
            colour, thickness = _CLASS_COLOURS[int(labels[k]) % len(_CLASS_COLOURS)], 2
        else:
            colour, thickness = _OTHER_COLOUR, 1
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thickness, cv2.LINE_AA)
    return out
