"""The files `cellkeras detect --out DIR` writes besides `detections.json`, for other tools.

```
write_label_tiff(out / "a_labels.tif", found.labels, pixel_size_um=0.619)   # napari, Fiji
rows = cell_rows(found.labels, image, found.scores, 0.619, "a.tif")
write_geojson(out / "a.geojson", found.labels, rows, category="nucleus")    # QuPath
write_cells_csv(out / "cells.csv", rows_of_every_image)                      # one row per cell
```

* `<stem>_labels.tif`: the instance label image (0 background, cell `i` = value `i`, the order
  of `detections.json`'s annotations of that image and of `cells.csv`'s `id`), uint16 (uint32
  past 65535 cells). With a pixel size it is an ImageJ hyperstack whose XResolution is pixels
  per µm and unit "um", so Fiji shows µm; uint32 is not an ImageJ type, so that case has
  centimetre resolution tags instead, which Fiji's Bio-Formats and tifffile read.
* `<stem>.geojson`: a FeatureCollection of one Polygon (MultiPolygon for a cell in pieces)
  per cell in QuPath's form: `properties.objectType` "detection", `classification`
  `{name, color}`, `measurements` `{name: number}` (the `cells.csv` columns), coordinates in
  pixels from the top-left corner of the image (QuPath: File > Import objects).
* `cells.csv`: `cellkeras.detect.instances.cell_rows` for every image, one header.

Every file is written through `cellkeras.io.files.write_atomically`, so a killed run leaves
whole files or none.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellkeras.detect.instances import CELL_COLUMNS, label_dtype, outlines
from cellkeras.io.files import write_atomically

# QuPath shows a detection in its class's colour; one fixed colour per run keeps files stable.
CLASS_COLOUR = (230, 70, 50)
# `cells.csv` columns that GeoJSON leaves out of `measurements`: names, and positions QuPath
# computes itself from the outline.
_NOT_MEASUREMENTS = ("image", "id", "pixel_size_um", "centroid_x", "centroid_y", "bbox_x_min",
                     "bbox_y_min", "bbox_x_max", "bbox_y_max")  # fmt: skip


def write_label_tiff(
    path: str | Path, labels: np.ndarray, pixel_size_um: float | None = None
) -> Path:
    """Writes an instance label image as a TIFF napari and Fiji open (see the module doc).

    Returns:
        The path written.
    """
    import tifffile

    labels = np.asarray(labels)
    count = int(labels.max()) if labels.size else 0
    data = labels.astype(label_dtype(count))
    options: dict[str, Any] = {"photometric": "minisblack"}
    if pixel_size_um is not None and data.dtype == np.uint16:
        per_um = 1.0 / float(pixel_size_um)
        options.update(
            imagej=True, resolution=(per_um, per_um), metadata={"unit": "um", "axes": "YX"}
        )
    elif pixel_size_um is not None:
        per_cm = 1e4 / float(pixel_size_um)
        options.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    return write_atomically(path, lambda tmp: tifffile.imwrite(tmp, data, **options))


def _geometry(rings: list[np.ndarray]) -> dict[str, Any]:
    polygons = [[[[round(float(x), 3), round(float(y), 3)] for x, y in ring]] for ring in rings]
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def geojson_features(
    labels: np.ndarray, rows: Sequence[dict[str, Any]], category: str = "cell"
) -> dict[str, Any]:
    """A QuPath FeatureCollection: one detection per row of `rows` (label `row["id"]`).

    Feature ids are UUIDs (QuPath reads them as object ids) derived from the image name and the
    label, so the same run writes the same file.
    """
    rings = outlines(labels, len(rows))
    features = []
    for row, cell_rings in zip(rows, rings, strict=True):
        if not cell_rings:
            raise ValueError(f"{row['image']}: label {row['id']} has no pixels to outline")
        measurements = {
            key: value
            for key, value in row.items()
            if key not in _NOT_MEASUREMENTS and isinstance(value, int | float)
        }
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cellkeras:{row['image']}#{row['id']}")),
                "geometry": _geometry(cell_rings),
                "properties": {
                    "objectType": "detection",
                    "name": f"{category} {row['id']}",
                    "classification": {"name": category, "color": list(CLASS_COLOUR)},
                    "isLocked": False,
                    "measurements": measurements,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    path: str | Path, labels: np.ndarray, rows: Sequence[dict[str, Any]], category: str = "cell"
) -> Path:
    """Writes `geojson_features(labels, rows, category)` to `path`."""
    document = geojson_features(labels, rows, category)
    text = json.dumps(document, separators=(",", ":")) + "\n"
    return write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_cells_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Writes the rows of every image under one header: the union of their columns in order of
    first appearance (RGB images add per-channel intensity columns that grey ones leave empty),
    `CELL_COLUMNS` when no image has a cell."""
    columns: list[str] = [] if rows else list(CELL_COLUMNS)
    for row in rows:
        columns.extend(key for key in row if key not in columns)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)

    return write_atomically(path, write)
