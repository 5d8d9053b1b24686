"""What the image alone says about nuclei: the cell-size estimate and the foreground rule.

1. `cellkeras.detect.size.estimate_diameter` against the labelled median equivalent diameter
   (`median_diameter`, nuclei cut by the border left out) on every frame of the ndev and
   laptrack samples and on synthetic nuclei fields (160x160) drawn at 6-24 px; ratio
   estimate / labelled, mean (min-max) over frames.
2. The image-foreground rule behind `extent="image"`: global Otsu against "local" (also pixels
   above their neighbourhood's mean, `BoxParams.foreground`), each followed by the same
   distance watershed (min_distance 5, area >= 12 px), every source resized to 12 px nuclei by
   its labels; F1@0.5 over all frames. No heat involved: this isolates the foreground.

Command (about a minute on the shared 2-core machine):
    python scripts/experiment_nuclei_image.py
"""

from __future__ import annotations

import json
import time

import numpy as np

from cellkeras.data.nuclei_sources import load_source, median_diameter, rescale_sample
from cellkeras.data.synthetic_nuclei import synthetic_nuclei_sample
from cellkeras.detect import BoxParams, heatmap_to_boxes
from cellkeras.detect.boxes import image_foreground
from cellkeras.detect.size import estimate_diameter
from cellkeras.evaluate.detection import detection_scores


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
    params = BoxParams(
        threshold="fixed", value=0.5, min_peak=0.5, split="distance", min_distance=5,
        min_area=12, score="mean", nms_iou=0.3,
    )  # fmt: skip
    for name, sample in samples.items():
        scaled = rescale_sample(sample, 12.0 / median_diameter(sample.labels))
        truth = [scaled.boxes(f) for f in range(len(scaled))]
        for mode in ("otsu", "local"):
            pred = [
                heatmap_to_boxes(image_foreground(im, mode=mode).astype(np.float32), params)
                for im in scaled.images
            ]
            result = detection_scores([b for b, _ in pred], [s for _, s in pred], truth)
            rows[f"{name} {mode}"] = {k: result["iou0.5"][k] for k in ("f1", "precision", "recall")}
            print(
                name, mode, json.dumps({k: round(v, 3) for k, v in rows[f"{name} {mode}"].items()})
            )
    return rows


def main() -> None:
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
    print(json.dumps({"size": size, "foreground": foreground}, indent=1))


if __name__ == "__main__":
    main()
