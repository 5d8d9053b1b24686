"""Parameter counts and throughput (images/s) of every registered model.

For each model and image size: the train step (forward + backward + Adam update, one compiled
`train_on_batch`) and inference (`predict_on_batch`) on random batches, after warm-up steps that
absorb tracing. Prints a markdown table (docs/BENCHMARKS.md "## Models" holds the last one).

Command (the numbers in docs/BENCHMARKS.md):
    python scripts/bench_models.py --sizes 64 128 --batch_size 32 \
        --json runs/bench_models.json

Machine: 2-core x86-64 CPU (AVX-512), no GPU, TensorFlow 2.21 / Keras 3.15.1, float32,
shared with other jobs (timings are noisy: take the median of `--steps` steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import keras
import numpy as np

from cellkeras.models import create_model, list_models
from cellkeras.training import compile_classifier


def _median_seconds(step, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(
    name: str, sizes: list[int], batch_size: int, steps: int, warmup: int, num_classes: int = 4
) -> dict:
    """Throughput of one model at each size. Returns a JSON-ready dict."""
    keras.utils.set_random_seed(0)
    model = compile_classifier(create_model(name, num_classes), keras.optimizers.Adam())
    rng = np.random.default_rng(0)
    labels = np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, batch_size)]
    row = {"model": name, "params": int(model.count_params()), "sizes": {}}
    for size in sizes:
        images = rng.random((batch_size, size, size, 3), dtype=np.float32)
        train = _median_seconds(lambda x=images: model.train_on_batch(x, labels), steps, warmup)
        infer = _median_seconds(lambda x=images: model.predict_on_batch(x), steps, warmup)
        row["sizes"][str(size)] = {
            "train_step_s": train,
            "train_images_per_s": batch_size / train,
            "infer_images_per_s": batch_size / infer,
        }
    return row


def markdown_table(rows: list[dict], sizes: list[int], batch_size: int) -> str:
    header = ["model", "params"]
    for s in sizes:
        header += [f"train step {s} px (s)", f"train img/s {s} px", f"infer img/s {s} px"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], f"{row['params']:,}"]
        for s in sizes:
            r = row["sizes"][str(s)]
            cells += [
                f"{r['train_step_s']:.3f}",
                f"{r['train_images_per_s']:.0f}",
                f"{r['infer_images_per_s']:.0f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nbatch {batch_size}, float32, median of timed steps after warm-up.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: every registered")
    parser.add_argument("--sizes", nargs="*", type=int, default=[64, 128])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    for name in args.models or list_models():
        rows.append(bench(name, args.sizes, args.batch_size, args.steps, args.warmup))
        print(f"{name}: {rows[-1]['sizes']}", flush=True)
    print(markdown_table(rows, args.sizes, args.batch_size))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
