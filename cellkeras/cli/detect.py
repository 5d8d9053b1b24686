"""`cellkeras detect IMAGE... --model M --out DIR`: cells as COCO JSON, masks, outlines, tables.

Writes `DIR/detections.json` (COCO style: `images`, `annotations` with `bbox` = [x, y, w, h],
`score`, `category_id`, `image_id`, `segmentation` (the mask as RLE) and `area` (mask pixels);
`categories`) and `DIR/<image stem>_detections.png` with the boxes drawn (plus
`<stem>_heatmap.png` with `--save_heatmaps`); for other tools (`cellkeras.detect.exports`)
`<stem>_labels.tif` (label image: napari, Fiji), `<stem>.geojson` (QuPath detections) and one
`cells.csv` of measurements for the run. The pixel size, for µm² areas, is read from OME-TIFF or
ImageJ metadata (`cellkeras.io.metadata`); `--pixel_size` overrides it.

The workflow (heatmap method, window, thresholds: `cellkeras.detect.WORKFLOWS`) is chosen from
the model's classes unless `--workflow` names one: ["background", "nucleus"] is the nuclei
preset's model, ["background", "white_cell"] the synthetic centred-cell model; any other model
with a "background" class gets the sliding window over its training size, and a classifier
without one gets Grad-CAM (every class but "background" is a target).

Thresholds travel with the model: when `cellkeras calibrate` has frozen a `detection` section
into the model's card (or the `<stem>.detection.json` sidecar of a `.keras` file), its
threshold and workflow are used; explicit flags still win. `detections.json`'s `info` says
which: `threshold_source` is "--threshold", "model card" or "workflow default".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from cellkeras.cli.common import fail


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Registers `detect` on the `cellkeras` command's sub-parsers."""
    p = subparsers.add_parser(
        "detect",
        help="find cells in images with a trained classifier (heatmap -> boxes), COCO JSON out",
        description=(
            "Turns a classifier's heatmap over each image into boxes and writes "
            "OUT/detections.json (COCO) and an annotated PNG per image."
        ),
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of them")
    p.add_argument(
        "--model", required=True, help="export folder, version folder, run folder or .keras file"
    )
    p.add_argument("--out", required=True, help="output folder")
    add_detection_arguments(p)
    p.add_argument("--save_heatmaps", action="store_true", help="also write <stem>_heatmap.png")
    p.set_defaults(func=_run_detect)


def add_detection_arguments(p: argparse.ArgumentParser) -> None:
    """The options `build_config` reads; shared by `cellkeras detect` and `cellkeras batch`."""
    p.add_argument(
        "--cell_diameter",
        type=float,
        default=None,
        help="typical cell diameter in these images, pixels: the image is rescaled so cells "
        "match the training scale (as Cellpose's diameter); default: the nuclei workflow "
        "measures it on each image",
    )
    p.add_argument(
        "--train_diameter",
        type=float,
        default=None,
        help="cell diameter the model was trained on, pixels (default: the workflow's)",
    )
    p.add_argument(
        "--workflow",
        default="auto",
        help="auto, or a named configuration: " + ", ".join(_workflow_names()),
    )
    p.add_argument("--method", choices=("sliding_window", "gradcam"), default=None)
    p.add_argument("--stride", type=int, default=None, help="sliding-window step in pixels")
    p.add_argument(
        "--heat",
        choices=("auto", "dense", "window"),
        default=None,
        help="sliding-window heat: dense (the conv trunk once per image), window (every window "
        "through the model), auto (default: dense when the model converts and matches the "
        "window heat on a check crop, else window with a warning)",
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="fixed heat threshold in [0, 1] for boxes"
    )
    p.add_argument("--gate", type=float, default=None, help="min class probability per image")
    p.add_argument(
        "--min_area",
        type=float,
        default=None,
        help="smallest cell: um^2 where the image's pixel size is known, else px of the image",
    )
    p.add_argument("--max_area", type=float, default=None, help="largest cell, as --min_area")
    p.add_argument(
        "--pixel_size",
        type=float,
        default=None,
        help="um per pixel, overriding the pixel size read from OME-TIFF/ImageJ metadata: "
        "--min_area/--max_area are then um^2, and cells.csv gets um columns",
    )
    p.add_argument("--border", choices=("keep", "drop"), default=None, help="cells cut by the edge")


def _workflow_names() -> list[str]:
    from cellkeras.detect.pipeline import WORKFLOWS

    return list(WORKFLOWS)


def build_config(args: argparse.Namespace, info):
    """The `DetectConfig` for the parsed arguments and the loaded model's `ModelInfo`."""
    from cellkeras.detect.pipeline import DetectConfig, choose_workflow, has_background

    card = getattr(info, "detection", None) or {}
    name = choose_workflow(info.classes) if args.workflow == "auto" else args.workflow
    if args.workflow == "auto" and "workflow" in card:
        name = None if card["workflow"] == GENERIC else card["workflow"]
    overrides: dict = {"normalization": info.normalization, "cell_diameter": args.cell_diameter}
    if info.image_size is not None:
        overrides["window"] = int(min(info.image_size))
    if name is None:
        overrides["method"] = "sliding_window" if has_background(info.classes) else "gradcam"
        if info.image_size is not None:
            # Grad-CAM tiles of the training size see cells at the context they were taught in.
            overrides.update(tile=int(min(info.image_size)), overlap=int(min(info.image_size)) // 2)
    for key in ("method", "stride", "heat", "gate", "border", "train_diameter"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.min_area is not None or args.max_area is not None:
        overrides["input_area_limits"] = area_limits(args, args.pixel_size)
    threshold = args.threshold if args.threshold is not None else card.get("threshold")
    if threshold is not None:
        overrides.update(threshold="fixed", value=float(threshold), min_peak=float(threshold))
    if name is None:
        return None, DetectConfig.from_flat(**overrides)
    return name, DetectConfig.for_workflow(name, **overrides)


def area_limits(args: argparse.Namespace, pixel_size: float | None) -> tuple:
    """`--min_area` / `--max_area` in an image's pixels (either None when not given): µm²
    when its pixel size is known, else pixels of the image as given."""
    from cellkeras.detect.boxes import area_limits_px

    low, high = area_limits_px(args.min_area, args.max_area, pixel_size)
    return (low if args.min_area is not None else None, high)


def with_area_limits(config, args: argparse.Namespace, pixel_size: float | None):
    """`config` with the area limits for one image whose pixel size (the flag's, or read from
    its metadata) is `pixel_size`."""
    if args.min_area is None and args.max_area is None:
        return config
    return dataclasses.replace(config, input_area_limits=area_limits(args, pixel_size))


GENERIC = "generic"  # the workflow name written when no named workflow fits the classes


def threshold_source(args: argparse.Namespace, info) -> str:
    """Where `build_config`'s threshold came from, for the output and the COCO `info`."""
    if args.threshold is not None:
        return "--threshold"
    if (getattr(info, "detection", None) or {}).get("threshold") is not None:
        return "model card"
    return "workflow default"


NO_BACKGROUND_WARNING = (
    "cellkeras detect: warning: the model's classes ({classes}) have no 'background' class, so "
    "it cannot tell a cell from what surrounds it: boxes come from Grad-CAM of the predicted "
    "class and will include background and other cells. Train a detection model instead: "
    "`python -m trainer.task --preset=nuclei` for fluorescence nuclei, or --data_dir with a "
    "'background' class folder of empty patches beside one folder of cell patches (see the "
    "README's Detection section)."
)


def _fail(err: Exception | str) -> int:
    return fail("detect", err)


def _run_detect(args: argparse.Namespace) -> int:
    # Registers ParallelCNN and the custom layers, so their `.keras` files deserialize.
    import cellkeras.models.registry  # noqa: F401  registers the model classes for loading
    from cellkeras.detect.coco import category_name, to_coco
    from cellkeras.detect.draw import colour_heatmap, draw_boxes, save_rgb
    from cellkeras.detect.exports import write_cells_csv
    from cellkeras.detect.pipeline import DetectError, check_model, detect, has_background
    from cellkeras.inference.loading import expand_image_paths, load_model_for_inference
    from cellkeras.io.images import ImageError, decode_raw

    try:
        model, info = load_model_for_inference(args.model)
        check_model(model)
        workflow, config = build_config(args, info)
    except (OSError, ValueError) as err:
        return _fail(err)
    if workflow is None and not has_background(info.classes):
        print(NO_BACKGROUND_WARNING.format(classes=", ".join(info.classes or ["unknown"])),
              file=sys.stderr)  # fmt: skip
    source = threshold_source(args, info)
    boxes = config.boxes
    level = boxes.value if boxes.threshold == "fixed" else f"{boxes.threshold} {boxes.value}"
    print(f"threshold {level} ({source})")
    paths = expand_image_paths(args.images)
    if not paths:
        return _fail("no images found in " + ", ".join(args.images))
    # Read every image before running the model, so a bad file fails fast and nothing is written.
    try:
        pixels = [decode_raw(Path(p).read_bytes(), source=str(p)) for p in paths]
        sizes = [_pixel_size(args.pixel_size, p) for p in paths]
    except (ImageError, ValueError) as err:
        return _fail(err)
    except OSError as err:
        return _fail(f"{err.filename}: cannot be read ({err.strerror})")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    category = category_name(info.classes)
    metas, all_boxes, all_scores, all_labels, cells = [], [], [], [], []
    for path, image, (pixel_size, size_source) in zip(paths, pixels, sizes, strict=True):
        image_config = with_area_limits(config, args, pixel_size)
        try:
            found = detect(
                model, image, image_config, channels=info.channels, class_names=info.classes
            )
        except (DetectError, ValueError) as err:
            return _fail(f"{path}: {err}")
        stem = Path(path).stem
        png = save_rgb(out / f"{stem}_detections.png", draw_boxes(image, found.boxes, found.scores))
        if args.save_heatmaps:
            save_rgb(out / f"{stem}_heatmap.png", colour_heatmap(found.heatmap))
        metas.append(
            {
                "file_name": str(path),
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "annotated": png.name,
                "probability": round(found.probability, 4),
                "pixel_size_um": pixel_size,
                "pixel_size_source": size_source,
                "cell_diameter": found.cell_diameter,
            }
        )
        all_boxes.append(found.boxes)
        all_scores.append(found.scores)
        all_labels.append(found.labels)
        try:
            cells.extend(_write_instances(out, path, image, found, pixel_size, category))
        except OSError as err:
            return _fail(f"{out}: cannot write the outputs of {path} ({err})")
        size = ""
        if found.cell_diameter is not None:
            how = "estimated" if found.diameter_estimated else "given"
            size = f" (cell diameter {found.cell_diameter:.1f} px, {how})"
        elif config.estimate_diameter and config.train_diameter is not None:
            size = " (no cell size measurable on it, not rescaled: give --cell_diameter)"
        print(f"{path}: {len(found.boxes)} {category}(s){size} -> {png}")
    document = to_coco(metas, all_boxes, all_scores, category=category, labels=all_labels)
    document["info"] = {
        "model": str(info.source),
        "workflow": workflow or GENERIC,
        "method": config.method,
        "cell_diameter": args.cell_diameter,
        "cell_diameter_estimated": args.cell_diameter is None and config.estimate_diameter,
        "threshold": level,
        "threshold_source": source,
    }
    target = out / "detections.json"
    target.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    table = write_cells_csv(out / "cells.csv", cells)
    print(
        f"{len(document['annotations'])} detections in {len(paths)} image(s) -> {target}, {table}"
    )
    return 0


def _pixel_size(flag: float | None, path: Path) -> tuple[float | None, str | None]:
    """(µm per pixel, where it came from): the flag, else the file's metadata, else unknown."""
    from cellkeras.io.metadata import MetadataError, pixel_size

    if flag is not None:
        if not flag > 0:
            raise ValueError(f"--pixel_size must be > 0, got {flag}")
        return float(flag), "--pixel_size"
    try:
        found = pixel_size(path)
    except MetadataError as err:
        raise ValueError(f"{err} (--pixel_size MICRONS overrides the file's)") from None
    return (None, None) if found is None else (found.um, found.source)


def _write_instances(out: Path, path: Path, image, found, pixel_size, category) -> list[dict]:
    """`<stem>_labels.tif` and `<stem>.geojson` for one image; returns its `cells.csv` rows."""
    from cellkeras.detect.exports import write_geojson, write_label_tiff
    from cellkeras.detect.instances import cell_rows

    stem = Path(path).stem
    rows = cell_rows(found.labels, image, found.scores, pixel_size, image_name=str(path))
    write_label_tiff(out / f"{stem}_labels.tif", found.labels, pixel_size)
    write_geojson(out / f"{stem}.geojson", found.labels, rows, category=category)
    return rows
