"""Throughput of the fluidity distortion in tf.data against albumentations, same images, same run.

Command (the numbers in docs/BENCHMARKS.md, "## Augmentation"):

    PYTHONPATH=. python scripts/bench_augment.py --sizes 64 128 256 --rounds 3 --seconds 2

Machine: the project's 2-core CPU VM (no GPU), TensorFlow 2.21 CPU build, Python 3.11.
Peers are benchmark-only (`pip install --no-deps -e .[bench]`): albumentations 2.0.8 (OpenCV
`remap`); Augmentor 0.2.12 and Keras 3's `RandomElasticTransform` with `--all`.

What is timed (images per second, after a warm-up that includes XLA compilation), every method
once per round, the rounds interleaved so that load from other jobs falls on all of them, and
each method's best round kept (wall rate and rate per CPU-second of this process, all threads,
best of the rounds separately):
  - ours, fused: one `FluidDistortion` (mesh 4x4 + flips + rotation 15 deg) in `tf.data`
    (batch 32, parallel map) on float32 [0, 1] images;
  - ours, chained: `FluidDistortion` (mesh only) followed by Keras' `RandomFlip` and
    `RandomRotation` in the same map, and the same list folded into one layer by
    `cellkeras.augment.fold_geometric`;
  - albumentations HorizontalFlip + VerticalFlip + Rotate(15) + GridDistortion(4x4), the
    goal's peer, and GridDistortion alone, on uint8 images (their fastest path), one thread
    (`cv2.setNumThreads(1)`), one image at a time as a DataLoader worker runs them.
The goal (issue 18): ours fused >= 2x the peer chain's wall rate and >= 1.5x its rate per
CPU-second, at every size, in every run. The last table prints the ratios and whether they hold.
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

PEER = "albumentations flip+rotate+Grid"
FUSED = "ours fused"


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


class Method:
    """A timed method: `start()` returns a step function (one call = some images done) and
    `stop()` frees what `start` made, so that nothing runs between its windows."""

    def __init__(self, start: Callable[[], Callable[[], int]], warmup: int) -> None:
        self._start = start
        self.warmup = warmup
        self.step: Callable[[], int] | None = None

    def window(self, seconds: float) -> tuple[float, float]:
        """(images per wall second, images per CPU second) over one window."""
        step = self._start()
        try:
            for _ in range(self.warmup):
                step()
            n, t0, c0 = 0, time.perf_counter(), _cpu_seconds()
            while time.perf_counter() - t0 < seconds:
                n += step()
            wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        finally:
            # A live tf.data iterator keeps prefetching and would steal the next method's cores.
            step = None
            gc.collect()
        return n / wall, n / max(cpu, 1e-9)


def tf_data_method(images: np.ndarray, fn, batch: int) -> Method:
    import tensorflow as tf

    # Batches are cut once and cached so the loop times the augmentation, not slicing.
    ds = tf.data.Dataset.from_tensor_slices(images).batch(batch, drop_remainder=True)
    ds = ds.cache().repeat()
    if fn is not None:
        ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(2)

    def start() -> Callable[[], int]:
        it = iter(ds)
        return lambda: int(next(it).shape[0])

    return Method(start, warmup=6)


def per_image_method(images: list, fn: Callable) -> Method:
    def start() -> Callable[[], int]:
        i = 0

        def step() -> int:
            nonlocal i
            fn(images[i % len(images)])
            i += 1
            return 1

        return step

    return Method(start, warmup=3)


def methods_for(size: int, args) -> dict[str, Method]:
    import albumentations as A
    import cv2
    import keras

    from cellkeras.augment import FluidDistortion, fold_geometric

    cv2.setNumThreads(1)
    imgs = _images(args.n_images, size)
    u8 = [(im * 255).round().astype(np.uint8) for im in imgs]
    geometry = dict(mode="mesh", grid=4, flip_horizontal=True, flip_vertical=True, rotation=15.0)
    out: dict[str, Method] = {
        FUSED: tf_data_method(imgs, FluidDistortion(**geometry, seed=1), args.batch),
    }
    chain = [
        FluidDistortion(mode="mesh", grid=4, seed=1),
        keras.layers.RandomFlip("horizontal_and_vertical", seed=2),
        keras.layers.RandomRotation(15.0 / 360.0, fill_mode="reflect", seed=3),
    ]

    def chained(x):
        for layer in chain:
            x = layer(x, training=True)
        return x

    out["ours chained (Keras flip+rotation)"] = tf_data_method(imgs, chained, args.batch)
    (folded,) = fold_geometric(chain)
    out["ours chained, fold_geometric"] = tf_data_method(imgs, folded, args.batch)
    peer = A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Rotate(limit=15, border_mode=cv2.BORDER_REFLECT_101, p=1.0),
            A.GridDistortion(num_steps=4, distort_limit=0.3, p=1.0),
        ]
    )
    out[PEER] = per_image_method(u8, lambda im: peer(image=im))
    grid = A.GridDistortion(num_steps=4, distort_limit=0.3, p=1.0)
    out["albumentations GridDistortion"] = per_image_method(u8, lambda im: grid(image=im))
    if args.all:
        out.update(_other_peers(imgs, u8, size, args.batch))
    return out


def _other_peers(imgs: np.ndarray, u8: list, size: int, batch: int) -> dict[str, Method]:
    import keras

    out = {"tf.data, no augmentation": tf_data_method(imgs, None, batch)}
    kel = keras.layers.RandomElasticTransform(factor=1.0, scale=0.1, value_range=(0, 1), seed=1)
    out["Keras RandomElasticTransform"] = tf_data_method(imgs, kel, batch)
    try:
        import Augmentor
        from PIL import Image
    except ImportError:
        return out
    pil = [Image.fromarray(im) for im in u8]
    distort = Augmentor.Operations.Distort(1.0, 4, 4, max(1, round(0.03 * size)))
    out["Augmentor random_distortion"] = per_image_method(
        pil, lambda im: distort.perform_operation([im])
    )
    return out


def run_size(size: int, args) -> dict[str, tuple[float, float]]:
    """Best (wall, per-CPU) rate of every method over interleaved rounds at one size."""
    methods = methods_for(size, args)
    best = {name: (0.0, 0.0) for name in methods}
    for r in range(args.rounds):
        for name, method in methods.items():
            wall, cpu = method.window(args.seconds)
            best[name] = (max(best[name][0], wall), max(best[name][1], cpu))
            print(f"  [{size} px round {r + 1}] {name}: {wall:,.0f} img/s, {cpu:,.0f} img/CPU-s")
    return best


def print_table(size: int, best: dict[str, tuple[float, float]]) -> None:
    ours, ours_cpu = best[FUSED]
    print(f"\n== {size} x {size} px, best of rounds (ratio = {FUSED} / method)")
    print(f"  {'method':42s} {'img/s':>9s} {'ratio':>7s} {'img/CPU-s':>10s} {'ratio':>7s}")
    for name, (wall, cpu) in best.items():
        print(f"  {name:42s} {wall:9,.0f} {ours / wall:7.2f} {cpu:10,.0f} {ours_cpu / cpu:7.2f}")


def print_goal(results: dict[int, dict]) -> None:
    print(f"\n== goal: {FUSED} >= 2x wall and >= 1.5x per CPU-second of {PEER}")
    print("| size | wall ratio | per CPU-s ratio | chained / fused | folded / fused | holds |")
    print("|---|---|---|---|---|---|")
    for size, best in results.items():
        wall = best[FUSED][0] / best[PEER][0]
        cpu = best[FUSED][1] / best[PEER][1]
        chained = best["ours chained (Keras flip+rotation)"][0] / best[FUSED][0]
        folded = best["ours chained, fold_geometric"][0] / best[FUSED][0]
        holds = "yes" if wall >= 2.0 and cpu >= 1.5 else "NO"
        print(f"| {size} | {wall:.2f}x | {cpu:.2f}x | {chained:.2f} | {folded:.2f} | {holds} |")
    print(f"load average at the end: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--n_images", type=int, default=256)
    parser.add_argument("--all", action="store_true", help="also Augmentor and Keras' elastic")
    args = parser.parse_args()
    print(f"CPU cores: {os.cpu_count()}, load average at the start: {os.getloadavg()}")
    results = {}
    for size in args.sizes:
        results[size] = run_size(size, args)
        print_table(size, results[size])
    print_goal(results)


if __name__ == "__main__":
    main()
