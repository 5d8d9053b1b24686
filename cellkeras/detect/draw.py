"""Drawing detections with OpenCV (no matplotlib): display images, heatmap overlays, boxes.

All functions return RGB uint8 arrays; `cv2.imwrite` needs them converted to BGR
(`save_rgb` does that).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cellkeras.io.display import to_display_rgb

PRED_COLOUR = (255, 200, 0)  # amber
TRUE_COLOUR = (0, 220, 90)  # green


def colour_heatmap(heat: np.ndarray) -> np.ndarray:
    """A [0, 1] map as an RGB uint8 image (OpenCV's JET colour map; absolute, not rescaled)."""
    levels = np.clip(np.asarray(heat, np.float32) * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The seed's overlay: `cv2.addWeighted(image, 0.7, heatmap, alpha, 0)` in RGB uint8."""
    base = to_display_rgb(image)
    return cv2.addWeighted(base, 0.7, colour_heatmap(heat), alpha, 0)


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray | None = None,
    colour: tuple[int, int, int] = PRED_COLOUR,
    thickness: int = 1,
    scale: int = 1,
) -> np.ndarray:
    """Boxes (and scores, when given) drawn on a copy of the image.

    Args:
        image: any image, shown by `cellkeras.io.display.to_display_rgb`.
        boxes: (K, 4) `[x_min, y_min, x_max, y_max]` inclusive-exclusive pixels.
        scores: optional (K,) scores written above each box.
        colour: RGB.
        thickness: line width in output pixels.
        scale: integer upscaling (nearest neighbour) first, so small boxes stay readable.
    """
    out = to_display_rgb(image).copy()  # uint8 RGB comes back as it is: draw on a copy
    if scale > 1:
        out = np.ascontiguousarray(np.kron(out, np.ones((scale, scale, 1), np.uint8)))
    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64).reshape(-1, 4) * scale):
        # cv2.rectangle's corners are inclusive: pull the exclusive max in by one pixel.
        p0 = (int(round(x0)), int(round(y0)))
        p1 = (int(round(x1)) - 1, int(round(y1)) - 1)
        cv2.rectangle(out, p0, p1, colour, thickness)
        if scores is not None:
            cv2.putText(
                out,
                f"{float(scores[k]):.2f}",
                (p0[0], max(8, p0[1] - 2)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.3 * max(1, scale),
                colour,
                1,
                cv2.LINE_AA,
            )
    return out


def save_rgb(path: str | Path, rgb: np.ndarray) -> Path:
    """Writes an RGB uint8 image with OpenCV (any format its extension names)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Maximum PNG compression: detection figures are noisy microscope images and compress
    # poorly; the extra encoding time is negligible next to detection.
    params = [cv2.IMWRITE_PNG_COMPRESSION, 9] if path.suffix.lower() == ".png" else []
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write {path}")
    return path
