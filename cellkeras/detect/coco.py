"""Detections as COCO-style JSON (the `cellkeras detect` output, contract in DESIGN.md).

```
{"images": [{"id": 1, "file_name": "a.png", "width": 576, "height": 210}],
 "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h],
                  "area": w * h, "score": 0.97, "iscrowd": 0}],
 "categories": [{"id": 1, "name": "nucleus"}]}
```

`bbox` is COCO's `[x, y, width, height]` in pixels, from the internal
`[x_min, y_min, x_max, y_max]` (inclusive-exclusive, so width = x_max - x_min).

With instance label images (`labels=`, `Detections.labels`), every annotation also carries
`segmentation`, the cell's mask as COCO compressed RLE (`{"size": [H, W], "counts": str}`,
`pycocotools.mask.decode` reads it), and `area` is the mask's pixel count instead of w * h.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(K, 4) `[x_min, y_min, x_max, y_max]` → `[x, y, width, height]`."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(K, 4) `[x, y, width, height]` → `[x_min, y_min, x_max, y_max]`."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def to_coco(
    images: Sequence[dict[str, Any]],
    boxes: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    category: str = "cell",
    labels: Sequence[np.ndarray | None] | None = None,
) -> dict[str, Any]:
    """A COCO results document for one category.

    Args:
        images: per image a dict with at least `file_name`, `width`, `height` (ids are assigned
            1, 2, ... in order; other keys are kept).
        boxes: per image (K, 4) `[x_min, y_min, x_max, y_max]`.
        scores: per image (K,).
        category: the category's name (id 1).
        labels: per image the instance label image (label `i + 1` is box `i`) or None; where
            given, annotations get `segmentation` (RLE) and the mask's `area`.

    Returns:
        A JSON-serialisable dict with `images`, `annotations` and `categories`.
    """
    if not len(images) == len(boxes) == len(scores):
        raise ValueError("images, boxes and scores need one entry per image")
    labels = [None] * len(images) if labels is None else labels
    if len(labels) != len(images):
        raise ValueError("labels needs one entry (a label image or None) per image")
    out_images, annotations = [], []
    for image_id, (meta, image_boxes, image_scores, image_labels) in enumerate(
        zip(images, boxes, scores, labels, strict=True), start=1
    ):
        out_images.append({"id": image_id, **meta})
        masks = _masks(image_labels, len(image_scores))
        for k, (xywh, score) in enumerate(
            zip(xyxy_to_xywh(image_boxes), np.asarray(image_scores), strict=True)
        ):
            x, y, w, h = (round(float(v), 2) for v in xywh)
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": 1,
                "bbox": [x, y, w, h],
                "area": round(w * h, 2),
                "score": round(float(score), 4),
                "iscrowd": 0,
            }
            if masks is not None:
                annotation["segmentation"], annotation["area"] = masks[k]
            annotations.append(annotation)
    return {
        "images": out_images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": category}],
    }


def _masks(labels: np.ndarray | None, count: int) -> list[tuple[dict, int]] | None:
    """(RLE, pixel count) per label 1..`count`, or None without a label image."""
    if labels is None:
        return None
    from pycocotools import mask as mask_utils

    from cellkeras.detect.instances import coco_rles

    rles = coco_rles(labels, count)
    if not rles:
        return []
    areas = [int(a) for a in mask_utils.area([{**r, "counts": r["counts"].encode()} for r in rles])]
    return list(zip(rles, areas, strict=True))


def merge_coco(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One COCO document from several (e.g. the shards of `cellkeras batch`).

    Image and annotation ids are renumbered 1, 2, ... in the order given (each annotation keeps
    its image); the `info` of the first document is kept.

    Raises:
        ValueError: when the documents' categories differ, or an annotation names an image id
            its document does not have.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    categories = None
    for index, document in enumerate(documents):
        if categories is None:
            categories = document["categories"]
        elif document["categories"] != categories:
            raise ValueError(
                f"document {index} has categories {document['categories']}, the first has "
                f"{categories}: only documents of the same categories merge"
            )
        new_ids = {}
        for image in document["images"]:
            new_ids[image["id"]] = len(images) + 1
            images.append({**image, "id": new_ids[image["id"]]})
        for annotation in document["annotations"]:
            if annotation["image_id"] not in new_ids:
                raise ValueError(
                    f"document {index}: annotation {annotation['id']} names image "
                    f"{annotation['image_id']}, which the document does not have"
                )
            annotations.append(
                {
                    **annotation,
                    "id": len(annotations) + 1,
                    "image_id": new_ids[annotation["image_id"]],
                }
            )
    merged: dict[str, Any] = {
        "images": images,
        "annotations": annotations,
        "categories": categories or [],
    }
    if documents and "info" in documents[0]:
        merged["info"] = documents[0]["info"]
    return merged


def category_name(classes: list[str] | None) -> str:
    """The COCO category: the one non-background class, or "cell" when there are several."""
    targets = [c for c in classes or [] if c.lower() != "background"]
    return targets[0] if len(targets) == 1 else "cell"
