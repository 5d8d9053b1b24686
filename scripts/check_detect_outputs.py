"""The files `cellkeras detect --out` writes for other tools, on real nuclei with ground truth.

For each image set it runs the `cellkeras detect` command itself, reads back what it wrote and
reports: whether COCO annotations, GeoJSON features, labels in `<stem>_labels.tif` and rows of
`cells.csv` count the same cells; the pixel size the command read; the masks against the
ground-truth instance labels (F1 at mask IoU 0.5, Hungarian matching, beside the box F1@0.5 of
the same detections; mean IoU of the matched masks; median relative area error of matched
cells, in µm² where the pixel size is known); and the seconds per image of `detect()` and of
the output writers (label TIFF, GeoJSON, table rows, COCO RLE) on their own.

Image sets:
* ndev frames 7-9 (210x576, 242 nuclei), written as OME-TIFFs with PhysicalSizeX 0.619 µm as a
  microscope's software would. The `--preset=nuclei` classifier, here with the sources ndev and
  synthetic only, trains on patches of all ten ndev frames (whole frames held out for
  validation only), so these numbers are optimistic.
* the laptrack 0.17.1 example time-lapse (6 frames of 200x200, never seen in training; no
  pixel size in the file), detected at `--cell_diameter` = the median equivalent diameter of
  its labelled nuclei (an oracle: the user would type it).

Command (about 5 min with training on the 2-core VM; --model skips the training):
    python scripts/check_detect_outputs.py [--model EXPORT_DIR] [--out runs/check_detect_outputs]

Machine: 2-core x86-64 CPU VM, no GPU, shared with other jobs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

LAPTRACK = Path(os.sys.prefix) / "share" / "cellkeras" / "laptrack"


def mask_matches(pred: np.ndarray, true: np.ndarray, threshold: float = 0.5):
    """Hungarian matching of instance masks by IoU; returns (pairs, ious) at IoU >= threshold."""
    n_pred, n_true = int(pred.max()), int(true.max())
    if not n_pred or not n_true:
        return [], np.zeros(0)
    joint = np.zeros((n_pred + 1, n_true + 1), np.int64)
    np.add.at(joint, (pred.ravel(), true.ravel()), 1)
    area_p, area_t = joint.sum(axis=1), joint.sum(axis=0)
    inter = joint[1:, 1:].astype(np.float64)
    iou = inter / (area_p[1:, None] + area_t[None, 1:] - inter)
    rows, cols = linear_sum_assignment(-iou)
    keep = iou[rows, cols] >= threshold
    pairs = list(zip(rows[keep] + 1, cols[keep] + 1, strict=True))
    return pairs, iou[rows, cols][keep]


def train_model(out: Path) -> Path:
    from trainer.config import build_config
    from trainer.task import run

    # Without laptrack among the preset's sources, so the laptrack row is a never-seen source.
    overrides = {"output_dir": str(out / "run"), "export_dir": str(out / "export")}
    config = build_config("nuclei", {**overrides, "data.nuclei_sources": "ndev,synthetic"})
    start = time.perf_counter()
    run(config, verbose=0)
    print(f"trained --preset=nuclei in {time.perf_counter() - start:.0f} s")
    return out / "export"


def run_detect(images: list[Path], model: Path, out: Path, diameter: float | None) -> float:
    from cellkeras.cli import main

    argv = ["detect", *map(str, images), "--model", str(model), "--out", str(out)]
    if diameter is not None:
        argv += ["--cell_diameter", f"{diameter:.1f}"]
    start = time.perf_counter()
    assert main(argv) == 0
    return time.perf_counter() - start


def read_outputs(out: Path, images: list[Path]) -> dict:
    document = json.loads((out / "detections.json").read_text())
    with open(out / "cells.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    per_image = []
    for meta in document["images"]:
        stem = Path(meta["file_name"]).stem
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        features = json.loads((out / f"{stem}.geojson").read_text())["features"]
        per_image.append(
            {
                "coco": sum(a["image_id"] == meta["id"] for a in document["annotations"]),
                "geojson": len(features),
                "labels": len(np.unique(labels[labels > 0])),
                "csv": sum(r["image"] == meta["file_name"] for r in rows),
                "pixel_size_um": meta["pixel_size_um"],
                "labels_image": labels,
            }
        )
    return {"document": document, "rows": rows, "images": per_image}


def score_set(name, images, truths, model, out, diameter) -> dict:
    from cellkeras.detect.coco import xywh_to_xyxy
    from cellkeras.evaluate.detection import detection_scores, masks_to_boxes

    seconds = run_detect(images, model, out, diameter)
    outputs = read_outputs(out, images)
    agree = all(
        len({i["coco"], i["geojson"], i["labels"], i["csv"]}) == 1 for i in outputs["images"]
    )
    tp = n_pred = n_true = 0
    ious, area_errors = [], []
    pred_boxes, pred_scores = [], []
    for meta, info, truth in zip(
        outputs["document"]["images"], outputs["images"], truths, strict=True
    ):
        pred = info["labels_image"].astype(np.int64)
        pairs, matched = mask_matches(pred, truth)
        tp, n_pred, n_true = (
            tp + len(pairs),
            n_pred + int(pred.max()),
            n_true + len(np.unique(truth[truth > 0])),
        )
        ious.extend(matched)
        for p, t in pairs:
            a_p, a_t = np.count_nonzero(pred == p), np.count_nonzero(truth == t)
            area_errors.append(abs(a_p - a_t) / a_t)
        anns = [a for a in outputs["document"]["annotations"] if a["image_id"] == meta["id"]]
        pred_boxes.append(xywh_to_xyxy(np.array([a["bbox"] for a in anns]).reshape(-1, 4)))
        pred_scores.append(np.array([a["score"] for a in anns]))
    box = detection_scores(pred_boxes, pred_scores, [masks_to_boxes(t) for t in truths], (0.5,))
    precision, recall = tp / max(n_pred, 1), tp / max(n_true, 1)
    return {
        "set": name,
        "images": len(images),
        "true": n_true,
        "found": n_pred,
        "counts_agree": agree,
        "pixel_size_um": outputs["images"][0]["pixel_size_um"],
        "cell_diameter": diameter,
        "mask_f1_0.5": round(2 * precision * recall / max(precision + recall, 1e-9), 3),
        "box_f1_0.5": round(box["iou0.5"]["f1"], 3),
        "matched_mask_iou_mean": round(float(np.mean(ious)), 3) if ious else None,
        "area_rel_error_median": round(float(np.median(area_errors)), 3) if area_errors else None,
        "command_seconds": round(seconds, 1),
    }


def time_writers(model_dir: Path, image: np.ndarray, out: Path, repeats: int = 3) -> dict:
    """Seconds per image of detect() and of the output writers alone, on one image."""
    from cellkeras.cli.detect import add_detection_arguments, build_config
    from cellkeras.detect.exports import write_geojson, write_label_tiff
    from cellkeras.detect.instances import cell_rows, coco_rles
    from cellkeras.detect.pipeline import detect
    from cellkeras.inference.loading import load_model_for_inference

    model, info = load_model_for_inference(model_dir)
    # The command's own defaults, so every detection flag it has is there.
    parser = argparse.ArgumentParser()
    add_detection_arguments(parser)
    args = parser.parse_args([])
    _, config = build_config(args, info)
    found = detect(model, image, config, channels=info.channels, class_names=info.classes)
    start = time.perf_counter()
    for _ in range(repeats):
        found = detect(model, image, config, channels=info.channels, class_names=info.classes)
    detect_s = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        rows = cell_rows(found.labels, image, found.scores, 0.619, "timing")
        write_label_tiff(out / "timing_labels.tif", found.labels, 0.619)
        write_geojson(out / "timing.geojson", found.labels, rows, "nucleus")
        coco_rles(found.labels, len(found.scores))
    writers_s = (time.perf_counter() - start) / repeats
    return {
        "cells": len(found.scores),
        "detect_s": round(detect_s, 3),
        "writers_s": round(writers_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a nuclei export (default: train one)")
    parser.add_argument("--out", default="runs/check_detect_outputs")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else train_model(out)

    from cellkeras.data.samples import NUCLEI_PIXEL_SIZE_UM, nuclei_sample

    sample = nuclei_sample()
    ndev = []
    for frame in (7, 8, 9):
        path = out / "images" / f"ndev_frame{frame}.ome.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, sample.images[frame], ome=True,
                         metadata={"PhysicalSizeX": NUCLEI_PIXEL_SIZE_UM,
                                   "PhysicalSizeY": NUCLEI_PIXEL_SIZE_UM, "axes": "YX"})  # fmt: skip
        ndev.append(path)
    results = [score_set("ndev frames 7-9 (seen in training)", ndev,
                         [sample.labels[f] for f in (7, 8, 9)], model, out / "ndev", None)]  # fmt: skip

    frames = tifffile.imread(LAPTRACK / "example_images.tif")
    truth = tifffile.imread(LAPTRACK / "example_label.tif").astype(np.int64)
    laptrack = []
    for t, frame in enumerate(frames):
        path = out / "images" / f"laptrack_t{t}.tif"
        tifffile.imwrite(path, frame)
        laptrack.append(path)
    areas = np.concatenate([np.bincount(f.ravel())[1:] for f in truth])
    diameter = float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))
    results.append(score_set("laptrack example (never seen)", laptrack, list(truth), model,
                             out / "laptrack", diameter))  # fmt: skip
    timing = time_writers(model, sample.images[7], out)
    report = {"results": results, "timing_ndev_frame": timing}
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    for row in results:
        print(json.dumps(row))
    print(json.dumps(timing))


if __name__ == "__main__":
    main()
