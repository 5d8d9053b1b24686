"""Detection throughput: 512x512 images per second through `cellkeras.detect.detect`.

Times the whole call (heatmap, gate, boxes) for each workflow's configuration and the sliding
window at several strides, on random-weight `parallel_small` models of the workflow's input
(throughput does not depend on the weights), after a warm-up call on a crop. `gate=0`, so the
box stage runs whatever the random model says.

Command (the numbers in docs/BENCHMARKS.md, about 3 min):
    python scripts/bench_detect.py

Machine: 2-core x86-64 CPU, no GPU, TensorFlow 2.21 / Keras 3.15.1, float32, shared with other
jobs (so treat the numbers as lower bounds).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from cellkeras.detect import DetectConfig, detect  # noqa: E402
from cellkeras.models import create_model  # noqa: E402


def bench(name: str, model, image: np.ndarray, config: DetectConfig, repeats: int) -> dict:
    detect(model, image[:128, :128], config)  # warm-up: traces the predict function
    start = time.perf_counter()
    for _ in range(repeats):
        found = detect(model, image, config)
    seconds = (time.perf_counter() - start) / repeats
    windows = (
        (image.shape[0] // config.stride + 2) * (image.shape[1] // config.stride + 2)
        if config.method == "sliding_window"
        else None
    )
    row = {
        "config": name,
        "seconds_per_image": round(seconds, 3),
        "images_per_second": round(1.0 / seconds, 3),
        "windows_per_second": round(windows / seconds) if windows else None,
        "boxes": len(found.boxes),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    grey = rng.integers(400, 2000, (512, 512, 1)).astype(np.uint16)
    rgb = rng.integers(0, 255, (512, 512, 3)).astype(np.uint8)
    nuclei_model = create_model("parallel_small", 2, channels=1)
    synthetic_model = create_model("parallel_small", 2, channels=3)
    rows = []
    for stride in (2, 4, 8):
        config = DetectConfig.for_workflow("nuclei", stride=stride, gate=0.0)
        rows.append(
            bench(
                f"nuclei, 32 px windows, stride {stride}", nuclei_model, grey, config, args.repeats
            )
        )
    for stride in (8, 16):
        config = DetectConfig.for_workflow("synthetic", stride=stride, gate=0.0)
        rows.append(
            bench(
                f"synthetic, 64 px windows, stride {stride}",
                synthetic_model,
                rgb,
                config,
                args.repeats,
            )
        )
    print("| configuration | s / 512x512 image | images / s | windows / s |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['config']} | {row['seconds_per_image']:.2f} | {row['images_per_second']:.2f} "
            f"| {row['windows_per_second'] or '–'} |"
        )


if __name__ == "__main__":
    main()
