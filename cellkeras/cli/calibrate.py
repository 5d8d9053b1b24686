"""`cellkeras calibrate IMAGE... --labels LABELS --model M`: freeze the detection threshold.

Computes each image's heatmap exactly as `cellkeras detect` does (same workflow, window,
rescaling and gate), sweeps the fixed heat threshold on 0.02..0.98 in steps of 0.02 (past the
edge in steps of 0.002 when the best lies on it), picks the best pooled F1@0.5 (the middle of a
plateau of ties), prints the table around it and writes the choice into the model:

* an export or version folder: the `detection` section of the version's `model_card.json`
  (rewritten atomically), which `cellkeras detect` then uses;
* a `.keras` file (or a trainer run folder's `model.keras`): the sidecar
  `<stem>.detection.json` beside it, read by `load_model_for_inference` just the same.

`--out_model DIR_OR_FILE` writes a calibrated copy there instead (the version folder, or the
`.keras` file with its sidecar) and leaves the original untouched.

LABELS is either a COCO JSON with boxes (images matched by file name, then by stem) or
instance label images (TIFF/PNG, 0 = background, one id per cell), given as files or folders,
each with the stem of its image (`cells.png` <- `cells.tif`, `cells_masks.png` or
`cells_labels.tif`). Images without labels, labels of another size and unreadable files are
refused with one line naming the file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
from pathlib import Path

import numpy as np

from cellkeras.cli.common import fail

LABEL_SUFFIXES = ("", "_masks", "_mask", "_labels", "_label")
TABLE_ROWS = 5  # thresholds printed on each side of the chosen one


class CalibrateError(ValueError):
    """Input `cellkeras calibrate` refuses, with one line naming the file."""


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Registers `calibrate` on the `cellkeras` command's sub-parsers."""
    from cellkeras.cli.detect import add_detection_arguments

    p = subparsers.add_parser(
        "calibrate",
        help="choose the detection threshold on labelled images and store it in the model",
        description=(
            "Sweeps the detection heat threshold on labelled images, prints precision, recall "
            "and F1@0.5 per threshold and writes the best into the model card (or a "
            "<stem>.detection.json beside a .keras file), which `cellkeras detect` then uses."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    p.add_argument(
        "--labels",
        nargs="+",
        required=True,
        help="a COCO JSON with boxes, or instance label images (files or folders; same stem as "
        "each image, 0 = background)",
    )
    p.add_argument(
        "--model", required=True, help="export folder, version folder, run folder or .keras file"
    )
    p.add_argument(
        "--out_model",
        "--out-model",
        dest="out_model",
        default=None,
        help="write a calibrated copy here (version folder, or .keras file + sidecar) instead "
        "of updating the model in place",
    )
    add_detection_arguments(p)
    p.set_defaults(func=_run_calibrate)


def _read_label_image(path: Path) -> np.ndarray:
    import cv2
    import tifffile

    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            label = tifffile.imread(path)
        else:
            label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except (OSError, ValueError) as err:
        raise CalibrateError(f"{path}: cannot be read as a label image ({err})") from None
    if label is None:
        raise CalibrateError(f"{path}: cannot be read as a label image")
    label = np.squeeze(np.asarray(label))
    if label.ndim == 3 and all(np.array_equal(label[..., 0], label[..., c]) for c in (1, 2)):
        label = label[..., 0]  # an id image saved as grey RGB
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise CalibrateError(
            f"{path}: not an instance label image (expected one channel of integer ids, got "
            f"{label.dtype} {label.shape})"
        )
    return label


def _mask_labels(images: list[Path], shapes: list[tuple], labels: list[str]) -> list[np.ndarray]:
    """True boxes per image from label images with the image's stem (+ a `_masks` suffix)."""
    from cellkeras.evaluate.detection import masks_to_boxes
    from cellkeras.inference.loading import expand_image_paths

    files = expand_image_paths(labels)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CalibrateError(f"{missing[0]}: label file does not exist")
    by_stem = {f.stem: f for f in files}
    image_set = {p.resolve() for p in images}
    found = []
    for path, shape in zip(images, shapes, strict=True):
        candidates = [by_stem.get(path.stem + suffix) for suffix in LABEL_SUFFIXES]
        match = next(
            (c for c in candidates if c is not None and c.resolve() not in image_set), None
        )
        if match is None:
            raise CalibrateError(
                f"{path}: no label image named {path.stem}[_masks].png/.tif in " + ", ".join(labels)
            )
        label = _read_label_image(match)
        if label.shape != tuple(shape[:2]):
            raise CalibrateError(
                f"{match}: {label.shape[1]}x{label.shape[0]} labels for the "
                f"{shape[1]}x{shape[0]} image {path}"
            )
        found.append(masks_to_boxes(label))
    return found


def _coco_labels(images: list[Path], shapes: list[tuple], coco_path: Path) -> list[np.ndarray]:
    """True boxes per image from a COCO JSON's `images` and `annotations` (`bbox` x, y, w, h)."""
    from cellkeras.detect.coco import xywh_to_xyxy

    try:
        document = json.loads(coco_path.read_text(encoding="utf-8"))
        entries = document["images"]
        annotations = document.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CalibrateError(f"{coco_path}: not a readable COCO JSON ({err})") from None
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "file_name" not in entry or "id" not in entry:
            raise CalibrateError(f"{coco_path}: images[{index}] needs a `file_name` and an `id`")
    by_name = {Path(e["file_name"]).name: e for e in entries}
    by_stem = {Path(e["file_name"]).stem: e for e in entries}
    boxes: dict = {}
    for index, ann in enumerate(annotations):
        ann = ann if isinstance(ann, dict) else {}
        bbox = ann.get("bbox")
        if bbox is None or "image_id" not in ann or np.size(bbox) != 4:
            raise CalibrateError(
                f"{coco_path}: annotations[{index}] (id {ann.get('id', '?')}) needs an "
                "`image_id` and a `bbox` of 4 numbers [x, y, width, height]"
            )
        boxes.setdefault(ann["image_id"], []).append(bbox)
    found = []
    for path, shape in zip(images, shapes, strict=True):
        entry = by_name.get(path.name) or by_stem.get(path.stem)
        if entry is None:
            raise CalibrateError(f"{path}: no entry for it in the COCO labels {coco_path}")
        size = (entry.get("height"), entry.get("width"))
        if None not in size and tuple(size) != tuple(shape[:2]):
            raise CalibrateError(
                f"{coco_path}: {path.name} is {size[1]}x{size[0]} there but the image is "
                f"{shape[1]}x{shape[0]}"
            )
        xywh = np.asarray(boxes.get(entry["id"], []), np.float32).reshape(-1, 4)
        found.append(xywh_to_xyxy(xywh))
    return found


def read_labels(images: list[Path], shapes: list[tuple], labels: list[str]) -> list[np.ndarray]:
    """True boxes (K, 4) `[x_min, y_min, x_max, y_max]` per image, from either kind of LABELS.

    Raises:
        CalibrateError: naming the file, for a missing or unreadable label, an image without
            labels or labels of another size.
    """
    if len(labels) == 1 and labels[0].lower().endswith(".json"):
        path = Path(labels[0])
        if not path.is_file():
            raise CalibrateError(f"{path}: COCO labels file does not exist")
        return _coco_labels(images, shapes, path)
    return _mask_labels(images, shapes, labels)


def _table(result: dict) -> str:
    from cellkeras.evaluate.detection import precision_recall_f1

    rows = result["sweep"]
    best = next(i for i, r in enumerate(rows) if r["threshold"] == result["threshold"])
    lines = [f"{'threshold':>9} {'precision':>9} {'recall':>7} {'F1':>6} {'n':>5}"]
    for i in range(max(0, best - TABLE_ROWS), min(len(rows), best + TABLE_ROWS + 1)):
        r = rows[i]
        scores = precision_recall_f1(r["tp"], r["num_pred"], r["num_true"])
        mark = "  <- chosen" if i == best else ""
        lines.append(
            f"{r['threshold']:>9.3f} {scores['precision']:>9.3f} {scores['recall']:>7.3f} "
            f"{scores['f1']:>6.3f} {r['num_pred']:>5d}{mark}"
        )
    return "\n".join(lines)


def _target(args: argparse.Namespace, info) -> tuple[str, Path]:
    """("card", version folder) or ("sidecar", .keras file) to write, copying for --out_model."""
    from cellkeras.serving.export import CARD_FILE

    model_file = Path(info.model_file)
    exported = Path(args.model).is_dir() and (model_file.parent / CARD_FILE).is_file()
    if args.out_model is None:
        return ("card", model_file.parent) if exported else ("sidecar", model_file)
    out = Path(args.out_model)
    if out.exists():
        raise CalibrateError(f"{out}: --out_model already exists; pick a new path")
    if exported:
        shutil.copytree(model_file.parent, out)
        return "card", out
    if out.suffix != ".keras":
        raise CalibrateError(f"{out}: --out_model for a .keras model must end in .keras")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_file, out)
    return "sidecar", out


def _fail(err: Exception | str) -> int:
    return fail("calibrate", err)


def _heatmaps(model, info, config, pixels, truths):
    """Heatmaps, true boxes and images at the scale detection thresholds them (gate applied)."""
    from cellkeras.detect.pipeline import axis_scales, scaled_heatmap

    heats, boxes, scaled_images = [], [], []
    for image, truth in zip(pixels, truths, strict=True):
        heat, scaled, _, probability = scaled_heatmap(
            model, image, config, info.channels, info.classes
        )
        # `detect` gives a gated image no boxes; a zero map gives none at any threshold > 0.
        heats.append(heat if probability >= config.gate else np.zeros_like(heat))
        scale_x, scale_y = axis_scales(image.shape, scaled.shape)
        factors = np.array([scale_x, scale_y] * 2, np.float32)
        boxes.append(np.asarray(truth, np.float32).reshape(-1, 4) * factors)
        scaled_images.append(scaled)
    return heats, boxes, scaled_images


def sweep_params(config, pixels, scaled_images):
    """The box parameters the sweep applies to every image: the area limits converted at the
    images' median area scale (one microscope's images share it; the sweep takes one set)."""
    from cellkeras.detect.pipeline import axis_scales

    area_scales = [
        np.prod(axis_scales(image.shape, scaled.shape))
        for image, scaled in zip(pixels, scaled_images, strict=True)
    ]
    return config.boxes_at(float(np.median(area_scales)) if area_scales else 1.0)


def _run_calibrate(args: argparse.Namespace) -> int:
    import cellkeras.models.registry  # noqa: F401  registers the model classes for loading
    from cellkeras.cli.detect import GENERIC, build_config
    from cellkeras.detect.pipeline import DetectError, check_model
    from cellkeras.evaluate.calibrate import sweep_threshold
    from cellkeras.inference.loading import expand_image_paths, load_model_for_inference
    from cellkeras.io.images import ImageError, decode_raw
    from cellkeras.serving.export import update_card, write_json_atomic

    paths = expand_image_paths(args.images)
    if not paths:
        return _fail("no images found in " + ", ".join(args.images))
    try:
        pixels = [decode_raw(Path(p).read_bytes(), source=str(p)) for p in paths]
        truths = read_labels(paths, [p.shape for p in pixels], args.labels)
        model, info = load_model_for_inference(args.model)
        check_model(model)
        args.threshold = None  # the sweep sets it; a card's old value must not leak in
        workflow, config = build_config(args, info)
        heats, boxes, scaled = _heatmaps(model, info, config, pixels, truths)
    except ImageError as err:
        return _fail(err)
    except OSError as err:
        return _fail(f"{err.filename}: cannot be read ({err.strerror})")
    except (CalibrateError, DetectError, ValueError) as err:
        return _fail(err)
    extent = scaled if config.boxes.extent == "image" else None
    result = sweep_threshold(heats, boxes, sweep_params(config, pixels, scaled), images=extent)
    print(_table(result))
    cells = int(sum(len(b) for b in boxes))
    grid = result["grid"]
    note = " (refined past the grid's edge)" if result["refined"] else ""
    if result["at_edge"]:
        note += "; still on the edge: the heatmaps may not separate cells at any threshold"
    print(
        f"threshold {result['threshold']:.3f}: F1@0.5 {result['f1']:.3f} on {len(paths)} "
        f"image(s), {cells} cell(s); grid {grid['start']}..{grid['stop']} step {grid['step']}"
        + note
    )
    section = {
        "workflow": workflow or GENERIC,
        "threshold": result["threshold"],
        "calibrated_on": {
            "images": len(paths),
            "cells": cells,
            "f1": round(result["f1"], 4),
            "precision": round(result["precision"], 4),
            "recall": round(result["recall"], 4),
            "iou": 0.5,
            "grid": grid,
            "refined": result["refined"],
            "at_edge": result["at_edge"],
            "labels": [str(label) for label in args.labels],
            "cell_diameter": args.cell_diameter,
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    }
    try:
        kind, where = _target(args, info)
        if kind == "card":
            update_card(where, detection=section)
            written = where / "model_card.json"
        else:
            from cellkeras.serving.export import detection_sidecar

            written = detection_sidecar(where)
            write_json_atomic(written, {"detection": section})
    except (CalibrateError, OSError, ValueError) as err:
        return _fail(err)
    print(f"detection section -> {written}")
    return 0
