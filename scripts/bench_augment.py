"""Throughput of the fluidity distortion in tf.data against its peers, same images, same cores.

Command (the numbers in docs/BENCHMARKS.md, "## Augmentation"):

    python scripts/bench_augment.py --sizes 64 128 256 --seconds 4

Machine: the project's 2-core CPU VM (no GPU), TensorFlow 2.21 CPU build, Python 3.11.
Peers are benchmark-only (`pip install -e .[bench]`): albumentations 2.0.8 (OpenCV `remap`),
Augmentor 0.2.12 (PIL mesh transform), and Keras 3's `RandomElasticTransform`.

What is timed (images per second, after a warm-up that includes XLA compilation):
  - cellkeras: `FluidDistortion` mesh 4x4 + flips + rotation 15 deg, in
    `tf.data` (batch 64, parallel map) on float32 [0, 1] images, both cores.
  - cellkeras, same chain with the `fluid` preset's crop instead of the rotation.
  - tf.data with no augmentation: the pipeline's own ceiling.
  - albumentations GridDistortion and ElasticTransform, alone and in the matching chain
    (flips + rotate + GridDistortion), on uint8 images (their fastest path), one thread
    (`cv2.setNumThreads(1)`), one image at a time as a DataLoader worker runs them.
  - Augmentor `Distort(grid 4x4, magnitude 8)` on PIL images, one thread.
  - Keras 3 `RandomElasticTransform` in the same tf.data pipeline as ours.
Ratios are ours over each peer. The issue's target is ours >= 2x albumentations' fastest
single-threaded distortion at 128 px: what two perfectly scaled albumentations workers would do.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
from collections.abc import Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth blob images (cells on background) so no method hits a degenerate fast path."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.zeros((n, size, size, 3), np.float32)
    for i in range(n):
        for _ in range(6):
            cx, cy, r = rng.random(3) * [1, 1, 0.15] + [0, 0, 0.05]
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            out[i] += blob[..., None] * rng.random(3)
    out += rng.normal(0, 0.03, out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rate(step: Callable[[], int], seconds: float, warmup: int = 3) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process, all threads)."""
    for _ in range(warmup):
        step()
    n, t0, c0 = 0, time.perf_counter(), _cpu_seconds()
    while time.perf_counter() - t0 < seconds:
        n += step()
    return n / (time.perf_counter() - t0), n / max(_cpu_seconds() - c0, 1e-9)


def bench_tf_data(images: np.ndarray, layer, batch: int, seconds: float) -> tuple[float, float]:
    import tensorflow as tf

    # Batches are cut once and cached so the loop times the augmentation, not slicing.
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch, drop_remainder=True)
    ds = ds.cache().repeat()
    if layer is not None:
        ds = ds.map(layer, num_parallel_calls=tf.data.AUTOTUNE)
    it = iter(ds.prefetch(2))

    def step() -> int:
        return int(next(it).shape[0])

    try:
        return _rate(step, seconds, warmup=6)
    finally:
        # A live iterator keeps prefetching in the background and would steal the next
        # method's cores.
        it = None
        gc.collect()


def bench_per_image(images: list, fn: Callable, seconds: float) -> tuple[float, float]:
    i = 0

    def step() -> int:
        nonlocal i
        fn(images[i % len(images)])
        i += 1
        return 1

    return _rate(step, seconds)


def run(sizes: list[int], seconds: float, batch: int, n_images: int) -> list[dict]:
    import albumentations as A
    import Augmentor
    import cv2
    import keras
    from PIL import Image

    from cellkeras.augment import FluidDistortion

    cv2.setNumThreads(1)
    rows = []
    for size in sizes:
        imgs = _images(n_images, size)
        u8 = [(im * 255).round().astype(np.uint8) for im in imgs]
        pil = [Image.fromarray(im) for im in u8]
        magnitude_px = max(1, round(0.03 * size))  # our default magnitude in Augmentor's pixels
        r: dict = {"size": size}
        r["tf.data, no augmentation"] = bench_tf_data(imgs, None, batch, seconds)
        ours = FluidDistortion(
            mode="mesh", flip_horizontal=True, flip_vertical=True, rotation=15.0, seed=1
        )
        r["cellkeras mesh+flip+rotate"] = bench_tf_data(imgs, ours, batch, seconds)
        crop = FluidDistortion(
            mode="mesh", flip_horizontal=True, flip_vertical=True, crop_area=0.9, seed=1
        )
        r["cellkeras fluid preset"] = bench_tf_data(imgs, crop, batch, seconds)
        elastic = FluidDistortion(
            mode="elastic", flip_horizontal=True, flip_vertical=True, rotation=15.0, seed=1
        )
        r["cellkeras elastic+flip+rotate"] = bench_tf_data(imgs, elastic, batch, seconds)
        grid = A.GridDistortion(num_steps=4, distort_limit=0.3, p=1.0)
        r["albumentations GridDistortion"] = bench_per_image(
            u8, lambda im, t=grid: t(image=im), seconds
        )
        el = A.ElasticTransform(p=1.0)
        r["albumentations ElasticTransform"] = bench_per_image(
            u8, lambda im, t=el: t(image=im), seconds
        )
        chain = A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
                A.Rotate(limit=15, border_mode=cv2.BORDER_REFLECT_101, p=1.0),
                A.GridDistortion(num_steps=4, distort_limit=0.3, p=1.0),
            ]
        )
        r["albumentations flip+rotate+Grid"] = bench_per_image(
            u8, lambda im, t=chain: t(image=im), seconds
        )
        distort = Augmentor.Operations.Distort(1.0, 4, 4, magnitude_px)
        r["Augmentor random_distortion"] = bench_per_image(
            pil, lambda im, t=distort: t.perform_operation([im]), seconds
        )
        kel = keras.layers.RandomElasticTransform(factor=1.0, scale=0.1, value_range=(0, 1), seed=1)
        r["keras RandomElasticTransform"] = bench_tf_data(imgs, kel, batch, seconds)
        rows.append(r)
        _print_row(r)
    return rows


def _print_row(r: dict) -> None:
    size = r["size"]
    ours, ours_cpu = r["cellkeras mesh+flip+rotate"]
    print(f"\n== {size} x {size} px (ratio = cellkeras mesh+flip+rotate / method)")
    print(f"  {'method':36s} {'img/s':>9s} {'ratio':>7s} {'img/CPU-s':>10s} {'ratio':>7s}")
    for name, value in r.items():
        if name == "size":
            continue
        wall, cpu = value
        print(f"  {name:36s} {wall:9.0f} {ours / wall:7.2f} {cpu:10.0f} {ours_cpu / cpu:7.2f}")
    fastest = max(r["albumentations GridDistortion"], r["albumentations ElasticTransform"])
    print(
        f"  vs albumentations' fastest distortion, single-threaded: {ours / fastest[0]:.2f}x "
        f"wall (target >= 2), {ours_cpu / fastest[1]:.2f}x per CPU-second"
    )
    print(f"  load average during the run: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n_images", type=int, default=256)
    args = parser.parse_args()
    print(f"CPU cores: {os.cpu_count()}")
    run(args.sizes, args.seconds, args.batch, args.n_images)


if __name__ == "__main__":
    main()
