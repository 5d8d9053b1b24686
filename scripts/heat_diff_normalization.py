"""How far a trained model's dense heat is from its window heat, per normalization.

Separates the two causes of a difference: with "range" normalization only the model's own
padding dependence remains; with "percentile" also the dense path's per-pixel stand-in for
per-window percentiles (`cellkeras.detect.dense.normalize_locally`). One ndev frame, 32 px
windows, stride 4, class 1; also the 96 px check crop that `heat="auto"` compares on.

Command (the numbers in docs/BENCHMARKS.md):
    python scripts/heat_diff_normalization.py --models runs/nuclei_small,runs/nuclei_valid

Machine: 2-core x86-64 CPU VM, no GPU, shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", required=True, help="comma-separated run folders / files")
    parser.add_argument("--frame", type=int, default=7)
    args = parser.parse_args()
    from cellkeras.data.samples import nuclei_sample
    from cellkeras.detect import sliding_window_heatmap
    from cellkeras.detect.dense import _check_crop, dense_classifier, dense_heatmap
    from cellkeras.inference.loading import load_model_for_inference

    image = nuclei_sample().images[args.frame]
    for path in args.models.split(","):
        model = load_model_for_inference(path)[0]
        dense = dense_classifier(model, 32, 4)
        for norm in ("range", "percentile"):
            old = sliding_window_heatmap(model, image, 32, 4, [1], norm)
            new = dense_heatmap(dense, image, 32, 4, [1], norm)
            diff = np.abs(old - new)
            crop = _check_crop(image, 96)
            crop_diff = np.abs(
                sliding_window_heatmap(model, crop, 32, 4, [1], norm)
                - dense_heatmap(dense, crop, 32, 4, [1], norm)
            ).max()
            print(json.dumps({
                "model": path, "frame": args.frame, "normalization": norm,
                "max": float(diff.max()), "mean": float(diff.mean()),
                "over_0.1": float((diff > 0.1).mean()),
                "correlation": float(np.corrcoef(old.ravel(), new.ravel())[0, 1]),
                "check_crop_max": float(crop_diff),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
