"""Two trained nuclei detectors side by side: F1@0.5 and heat of both heat paths, and time.

For each model (`--models` RUN,RUN: trainer run folders or .keras files) and each heat path
("window": every window through the classifier; "dense": the trunk once per image,
`cellkeras.detect.dense`), `detect` with the nuclei workflow's frozen configuration on
  - ndev frames 7-9 (`cellkeras.data.samples.nuclei_sample`, the preset's test frames) and
  - the 6 laptrack frames (`--laptrack`: example_images.tif / example_label.tif, 200x200),
scored by one-to-one F1 at IoU 0.5 (`cellkeras.evaluate.detection.image_f1`), with the
largest |window - dense| heat per frame. Then seconds per 512x512 image (the nuclei-like
fields of scripts/bench_detect.py), in interleaved rounds over every (model, path) pair.

Command (the numbers in docs/BENCHMARKS.md):
    python scripts/compare_detect_models.py --models runs/nuclei_small,runs/nuclei_valid
    python scripts/compare_detect_models.py --models runs/nuclei_old,runs/nuclei_frame
(the second: the previous preset, `--preset=nuclei --model=parallel_small
--normalization=percentile`, against the current `--preset=nuclei`; each model is normalized
as its card says.)

Machine: 2-core x86-64 CPU VM, no GPU, shared with other jobs, TensorFlow 2.21 / Keras 3.15.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detect import nuclei_like  # noqa: E402

LAPTRACK = Path(sys.prefix) / "share" / "cellkeras" / "laptrack"
PATHS = ("window", "dense")


def frames(laptrack: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, true boxes) of the labelled test frames."""
    import tifffile

    from cellkeras.data.samples import instance_boxes, nuclei_sample

    sample = nuclei_sample()
    out = [(f"ndev{f}", sample.images[f], instance_boxes(sample.labels[f])[1]) for f in (7, 8, 9)]
    images = tifffile.imread(laptrack / "example_images.tif")
    labels = tifffile.imread(laptrack / "example_label.tif")
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        out.append((f"laptrack{i}", image[..., None], instance_boxes(label)[1]))
    return out


def config(normalization: str, heat: str, **overrides):
    """The nuclei workflow's configuration with the model's own normalization (its card's)."""
    from cellkeras.detect import DetectConfig

    return DetectConfig.for_workflow("nuclei", heat=heat, normalization=normalization, **overrides)


def score(models: dict, test: list) -> None:
    from cellkeras.detect import detect
    from cellkeras.evaluate.detection import image_f1

    for name, (model, normalization) in models.items():
        for frame, image, truth in test:
            found = {path: detect(model, image, config(normalization, path)) for path in PATHS}
            diff = np.abs(found["window"].heatmap - found["dense"].heatmap)
            row = {"model": name, "frame": frame, "true": len(truth)}
            row |= {f"f1_{p}": round(image_f1(f.boxes, truth), 3) for p, f in found.items()}
            row |= {"max_abs_diff": round(float(diff.max()), 4)}
            print(json.dumps(row), flush=True)


def timing(models: dict, rounds: int, count: int) -> None:
    """Seconds per image of every (model, path), "auto" (what `detect` does by default) too."""
    from cellkeras.detect import detect

    images = [nuclei_like(512, seed) for seed in range(count)]
    pairs = [(name, path) for name in models for path in (*PATHS, "auto")]
    configs = {(n, p): config(models[n][1], p, gate=0.0) for n, p in pairs}
    for name, path in pairs:  # warm-up: traces the predict functions, "auto" checks its crop
        detect(models[name][0], images[0][:96, :96], configs[name, path])
    times: dict = {pair: [] for pair in pairs}
    for r in range(rounds):
        for name, path in pairs if r % 2 == 0 else pairs[::-1]:
            start = time.perf_counter()
            for image in images:
                detect(models[name][0], image, configs[name, path])
            times[name, path].append((time.perf_counter() - start) / len(images))
        print(json.dumps({"round": r, **{f"{n}/{p}": round(t[-1], 3) for (n, p), t in
                          times.items()}}), flush=True)  # fmt: skip
    print("| model | path | best s / 512x512 image | median |\n|---|---|---|---|")
    for (name, path), t in times.items():
        print(f"| {name} | {path} | {min(t):.3f} | {statistics.median(t):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", required=True, help="comma-separated run folders / files")
    parser.add_argument("--laptrack", type=Path, default=LAPTRACK)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=1, help="512x512 images per round")
    args = parser.parse_args()
    from cellkeras.inference.loading import load_model_for_inference

    loaded = {Path(m).name: load_model_for_inference(m) for m in args.models.split(",")}
    models = {name: (model, info.normalization) for name, (model, info) in loaded.items()}
    score(models, frames(args.laptrack))
    timing(models, args.rounds, args.images)


if __name__ == "__main__":
    main()
