"""What the image alone says about nuclei: the cell-size estimate and the foreground rule.

1. `cellkeras.detect.size.estimate_diameter` against the labelled median equivalent diameter
   (`median_diameter`, nuclei cut by the border left out) on every frame of the ndev and
   laptrack samples and on synthetic nuclei fields (160x160) drawn at 6-24 px; ratio
   estimate / labelled, mean (min-max) over frames.
2. The image-foreground rule behind `extent="image"`: global Otsu against "local" (also pixels
   above their neighbourhood's mean, `BoxParams.foreground`), each followed by the same
   distance watershed (`cellkeras.detect.baseline.otsu_watershed`: min_distance 5, area >= 12
   px), every source resized to 12 px nuclei by
   its labels; F1@0.5 over all frames. No heat involved: this isolates the foreground.
3. What the labels leave out: the Otsu rule's false positives at IoU 0.5 that overlap no
   labelled nucleus at all (box IoU < 0.1 with every one), per source, and a gallery of them
   (`--audit_png`, the first 72). On ndev these are mostly nuclei the annotation skipped, which caps the
   precision that any detector that finds every nucleus can score there.
4. `--grid_choice`: can the image alone pick the baseline's setting? The leave-one-source-out
   baseline (`scripts/_detection_loso.py`) takes the best of its 120-point Otsu + watershed grid
   by the held-out labels. Here each image picks a setting with no label, by a size criterion
   scored on its boxes against the estimated diameter (`estimate_diameter`): "sized" (boxes
   with 0.5-2x the area of a diameter square), "net" (sized minus the rest: fragments and
   merges count against) or "frac" (the sized share). The criterion is chosen on synthetic
   fields (8-24 px) only, then scored per image and as one vote per source (the setting with
   the highest criterion summed over the source's frames) on ndev and laptrack, beside the
   label-chosen oracle.

Command (about a minute on the shared 2-core machine; `--grid_choice` adds about 5):
    python scripts/experiment_nuclei_image.py [--grid_choice]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from cellkeras.data.nuclei_sources import load_source, median_diameter, rescale_sample
from cellkeras.data.synthetic_nuclei import synthetic_nuclei_sample
from cellkeras.detect.baseline import otsu_watershed
from cellkeras.detect.boxes import AUTO_AREA_RANGE
from cellkeras.detect.draw import TRUE_COLOUR, draw_boxes, save_rgb
from cellkeras.detect.size import estimate_diameter
from cellkeras.evaluate.detection import box_iou, detection_scores, match_boxes
from cellkeras.io.display import to_display_rgb

# A prediction whose box overlaps every labelled nucleus by less than this is not a split,
# merge or loose box of one: it lies where the labels have nothing.
NO_OVERLAP_IOU = 0.1
AUDIT_CROP = 32
REPO = Path(__file__).resolve().parents[1]
GRID_CRITERIA = ("sized", "net", "frac")


def size_rows(samples: dict) -> dict:
    rows = {}
    for name, sample in samples.items():
        ratios = []
        start = time.perf_counter()
        for image, label in zip(sample.images, sample.labels, strict=True):
            ratios.append((estimate_diameter(image) or 0.0) / median_diameter(label))
        seconds = (time.perf_counter() - start) / len(sample)
        rows[name] = {
            "labelled_diameter": median_diameter(sample.labels),
            "ratio_mean": float(np.mean(ratios)), "ratio_min": float(np.min(ratios)),
            "ratio_max": float(np.max(ratios)), "frames": len(ratios),
            "seconds_per_image": seconds,
        }  # fmt: skip
        print(name, json.dumps({k: round(v, 3) for k, v in rows[name].items()}), flush=True)
    return rows


def foreground_rows(samples: dict) -> dict:
    rows = {}
    for name, sample in samples.items():
        scaled = rescale_sample(sample, 12.0 / median_diameter(sample.labels))
        truth = [scaled.boxes(f) for f in range(len(scaled))]
        for mode in ("otsu", "local"):
            pred = [otsu_watershed(im, mode=mode) for im in scaled.images]
            result = detection_scores([b for b, _ in pred], [s for _, s in pred], truth)
            rows[f"{name} {mode}"] = {k: result["iou0.5"][k] for k in ("f1", "precision", "recall")}
            print(
                name, mode, json.dumps({k: round(v, 3) for k, v in rows[f"{name} {mode}"].items()})
            )
    return rows


def unlabelled_rows(samples: dict, gallery: Path | None) -> dict:
    """The Otsu rule's unmatched predictions (IoU 0.5), split by whether they touch a label."""
    rows, crops = {}, []
    for name, sample in samples.items():
        scaled = rescale_sample(sample, 12.0 / median_diameter(sample.labels))
        counts = {"predicted": 0, "matched": 0, "unmatched_touching_a_label": 0,
                  "unmatched_on_no_label": 0}  # fmt: skip
        for f, image in enumerate(scaled.images):
            truth = scaled.boxes(f)
            boxes, _ = otsu_watershed(image)
            matched = set(match_boxes(boxes, truth, 0.5)[0][:, 0].tolist())
            overlap = box_iou(boxes, truth).max(axis=1) if len(truth) else np.zeros(len(boxes))
            lonely = [
                i for i in range(len(boxes)) if i not in matched and overlap[i] < NO_OVERLAP_IOU
            ]
            counts["predicted"] += len(boxes)
            counts["matched"] += len(matched)
            counts["unmatched_on_no_label"] += len(lonely)
            counts["unmatched_touching_a_label"] += len(boxes) - len(matched) - len(lonely)
            if name == "ndev" and gallery is not None:
                shown = to_display_rgb(image)
                crops += [_crop(shown, truth, boxes[i]) for i in lonely]
        rows[name] = counts
        print(name, json.dumps(counts))
    if crops:
        columns = 12
        crops += [np.full_like(crops[0], 255)] * (-len(crops) % columns)
        grid = [np.concatenate(crops[i : i + columns], 1) for i in range(0, len(crops), columns)]
        save_rgb(gallery, np.concatenate(grid[:6], 0))
    return rows


def _crop(shown: np.ndarray, truth: np.ndarray, box: np.ndarray) -> np.ndarray:
    """A 32 px crop of the frame's display RGB around `box` (red), labelled nuclei green, 3x."""
    half = AUDIT_CROP // 2
    cx, cy = (int(v) for v in (box[:2] + box[2:]) / 2)
    pad = np.pad(shown, ((half, half), (half, half), (0, 0)))
    rgb = np.ascontiguousarray(pad[cy : cy + 2 * half, cx : cx + 2 * half])
    shift = np.array([cx - half, cy - half] * 2, np.float32)
    rgb = draw_boxes(rgb, truth - shift, colour=TRUE_COLOUR)
    rgb = draw_boxes(rgb, (box - shift)[None], colour=(255, 0, 0))
    return np.kron(rgb, np.ones((3, 3, 1), np.uint8))


def size_criteria(boxes: np.ndarray, diameter: float) -> dict:
    """Label-free scores of one segmentation: how many boxes have a nucleus' size."""
    if len(boxes) == 0:
        return dict.fromkeys(GRID_CRITERIA, 0.0)
    boxes = np.asarray(boxes, np.float64)
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 1) * np.maximum(boxes[:, 3] - boxes[:, 1], 1)
    # The "auto" foreground's nucleus-size range; a disc's bounding box has area diameter**2.
    low, high = AUTO_AREA_RANGE
    sized = (area >= low * diameter**2) & (area <= high * diameter**2)
    return {"sized": float(sized.sum()), "net": float(2 * sized.sum() - len(boxes)),
            "frac": float(sized.mean())}  # fmt: skip


def grid_choice_rows(samples: dict) -> dict:
    """Per source: the oracle's F1@0.5 and each criterion's, per image and as one vote."""
    sys.path.insert(0, str(REPO / "scripts"))
    from _detection_loso import BASE_MIN_DISTANCE, BASE_OFFSET, BASE_SIGMA

    grid = list(itertools.product(BASE_SIGMA, BASE_MIN_DISTANCE, BASE_OFFSET))
    rows = {}
    for name, sample in samples.items():
        truth = [sample.boxes(f) for f in range(len(sample))]
        # per[i][g]: frame i segmented with setting g, and its criteria
        per = []
        for image in sample.images:
            diameter = estimate_diameter(image)
            segmented = [otsu_watershed(image[..., None], *setting) for setting in grid]
            per.append([(pred, size_criteria(pred[0], diameter)) for pred in segmented])

        def f1(picks, per=per, truth=truth):
            pred = [per[i][g][0] for i, g in enumerate(picks)]
            result = detection_scores([b for b, _ in pred], [s for _, s in pred], truth)
            return result["iou0.5"]["f1"]

        frames = range(len(per))
        by_setting = [f1([g] * len(per)) for g in range(len(grid))]
        row = {"oracle": max(by_setting), "oracle_setting": grid[int(np.argmax(by_setting))]}
        for c in GRID_CRITERIA:
            row[f"{c} per image"] = f1([max(range(len(grid)), key=lambda g, i=i: per[i][g][1][c])
                                        for i in frames])  # fmt: skip
            votes = [sum(per[i][g][1][c] for i in frames) for g in range(len(grid))]
            row[f"{c} per source"] = by_setting[int(np.argmax(votes))]
        rows[name] = row
        print(name, json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                for k, v in row.items()}), flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audit_png", type=Path, default=REPO / "docs/images/ndev_unlabelled.png")
    parser.add_argument("--grid_choice", action="store_true", help="also part 4 (~5 min)")
    args = parser.parse_args()
    real = {name: load_source(name) for name in ("ndev", "laptrack")}
    synthetic = {
        f"synthetic {d:g} px": synthetic_nuclei_sample(6, (160, 160), d, seed=int(d))
        for d in (6.0, 8.0, 12.0, 18.0, 24.0)
    }
    print("cell size: estimate / labelled")
    size = size_rows({**real, **synthetic})
    print("foreground: Otsu vs local, distance watershed, F1@0.5")
    mixed = {**real, "synthetic": load_source("synthetic", seed=5, synthetic_frames=4)}
    foreground = foreground_rows(mixed)
    print("unmatched Otsu boxes: on a labelled nucleus or where the labels have none")
    unlabelled = unlabelled_rows(real, args.audit_png)
    rows = {"size": size, "foreground": foreground, "unlabelled": unlabelled}
    if args.grid_choice:
        print("the baseline's grid chosen without labels, F1@0.5 (criterion chosen on synthetic)")
        development = {
            f"synthetic {d} px": synthetic_nuclei_sample(4, (192, 192), d, seed=100 + d)
            for d in (8, 12, 18, 24)
        }
        rows["grid_choice"] = grid_choice_rows({**development, **real})
        chosen = max(
            GRID_CRITERIA,
            key=lambda c: np.mean([rows["grid_choice"][n][f"{c} per image"] for n in development]),
        )
        print(f"criterion chosen on the synthetic fields: {chosen}")
        rows["grid_choice_criterion"] = chosen
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
