"""Does the input pipeline keep the model busy? Train-step time with the real `make_dataset`
pipeline against the same batches already in memory.

Three inputs, same model (`parallel_small`), same batch size and image size, same compiled train
step (`model.fit` on each for the same number of steps, after a warm-up that traces it):

- cached: a few batches materialized once as tensors and repeated (no input work at all);
- arrays: the synthetic cells from memory through `make_dataset(..., augment=basic)`;
- files: the same images as PNG files on disk, decoded by the pipeline every epoch
  (`cache_bytes=0`), through the same augmentation.

The ratio pipeline / cached says how much the input costs on top of the model step (target:
at most 1.1x).

    python scripts/bench_pipeline.py --size 64 --batch_size 32 --steps 40 --rounds 3

Machine for docs/BENCHMARKS.md: the project's 2-core x86-64 CPU VM, no GPU.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from cellkeras.augment import build_augmenter  # noqa: E402
from cellkeras.data import check_images, load_class_folders, make_dataset  # noqa: E402
from cellkeras.data.synthetic import generate_cells  # noqa: E402
from cellkeras.models import create_model  # noqa: E402


def seconds_per_step(model: keras.Model, dataset: tf.data.Dataset, steps: int) -> float:
    repeated = dataset.repeat()
    model.fit(repeated, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    start = time.perf_counter()
    model.fit(repeated, steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps


def best_seconds_per_step(
    model: keras.Model, inputs: dict[str, tf.data.Dataset], steps: int, rounds: int
) -> dict[str, float]:
    """The inputs take turns for `rounds` rounds and each keeps its fastest: on a shared
    machine, load that comes and goes then falls on all of them alike."""
    best = dict.fromkeys(inputs, float("inf"))
    for _ in range(rounds):
        for name, dataset in inputs.items():
            best[name] = min(best[name], seconds_per_step(model, dataset, steps))
    return best


def write_pngs(images, folder: Path) -> None:
    for i, (pixels, label) in enumerate(zip(images.images, images.labels, strict=True)):
        path = folder / images.classes[label] / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    cells = generate_cells(args.images, 96, seed=0)
    augment = build_augmenter("basic", seed=0, num_classes=cells.num_classes)
    model = create_model("parallel_small", cells.num_classes, channels=3)
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])

    arrays = make_dataset(
        cells, args.size, training=True, batch_size=args.batch_size, augment=augment
    )
    cached = tf.data.Dataset.from_tensor_slices(
        tuple(tf.stack(t) for t in zip(*list(arrays.take(8)), strict=True))
    ).cache()
    with tempfile.TemporaryDirectory() as folder:
        write_pngs(cells, Path(folder))
        on_disk, channels = check_images(load_class_folders(folder), verbose=False)
        files = make_dataset(
            on_disk,
            args.size,
            training=True,
            batch_size=args.batch_size,
            channels=channels,
            augment=augment,
            cache_bytes=0,
        )
        inputs = {
            "cached tensors": cached,
            "arrays + make_dataset + basic augment": arrays,
            "PNG files decoded every epoch + basic augment": files,
        }
        timings = best_seconds_per_step(model, inputs, args.steps, args.rounds)
    base = timings["cached tensors"]
    print(
        f"\n{args.size} px, batch {args.batch_size}, best of {args.rounds} rounds of "
        f"{args.steps} steps, parallel_small"
    )
    print("| input | s / step | images/s | vs cached |")
    print("|---|---:|---:|---:|")
    for name, seconds in timings.items():
        print(
            f"| {name} | {seconds:.4f} | {args.batch_size / seconds:.0f} | {seconds / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
