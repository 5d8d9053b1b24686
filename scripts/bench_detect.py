"""Detection speed: the window heat against the dense heat, and a 4096x4096 image in tiles.

Part 1, in interleaved rounds on the same 512x512 images and the same model: `detect` with
`heat="window"` (every window of the stride-4 grid through the classifier), `heat="dense"`
(the conv trunk once per image, `cellkeras.detect.dense`) and the default `heat="auto"` (what
`cellkeras detect` does: dense when a check crop shows it equals the window heat), the nuclei
workflow's configuration (32 px windows, stride 4, the image's size estimated and rescaled to
12 px nuclei, the workflow's normalization, boxes included). The model is the
`--preset=nuclei` architecture at its real size (1 channel, 2 classes; `--arch` for another)
with random weights (time does not depend on the weights), or a trained one with `--model`
(normalized as its card says). Prints best-of-rounds and median seconds per image, the window /
dense ratio, and the two heats' largest difference.

Part 2, each in a fresh subprocess: the dense heat of one N x N image (N = 1024, 4096) in
overlapping 1024 px tiles, its time, and the growth of the process's peak resident memory
(VmHWM in /proc/self/status) over that of a warmed-up model; the image and its float32 heat
themselves take 6 bytes per pixel of that.

Command (the numbers in docs/BENCHMARKS.md):
    python scripts/bench_detect.py --rounds 5

Machine: 2-core x86-64 CPU VM, no GPU, shared with other jobs (timings are noisy: read the
best-of-rounds), TensorFlow 2.21 / Keras 3.15, float32.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def nuclei_like(size: int, seed: int) -> np.ndarray:
    """A uint16 fluorescence-like field: noisy background, blurred nuclei of 8-16 px."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.float32)
    for _ in range(size * size // 2500):
        x, y = (int(v) for v in rng.integers(0, size, 2))
        cv2.circle(image, (x, y), int(rng.integers(4, 9)), float(rng.uniform(600, 2500)), -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.5) + rng.normal(400, 40, image.shape)
    return np.clip(image, 0, 65535).astype(np.uint16)[..., None]


def load(model_path: str | None, arch: str | None = None):
    """(model, normalization): a trained model and its card's, or the preset's architecture
    (or `arch`) with random weights and the preset's normalization."""
    from trainer.config import build_config

    preset = build_config("nuclei")
    if model_path:
        from cellkeras.inference.loading import load_model_for_inference

        model, info = load_model_for_inference(model_path)
        return model, info.normalization
    import keras

    from cellkeras.models import create_model

    keras.utils.set_random_seed(0)
    return create_model(arch or preset.train.model, 2, channels=1), preset.data.normalization


def peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def large_image_child(size: int, model_path: str | None, arch: str | None) -> None:
    """Part 2 inside the subprocess: prints one JSON row."""
    from cellkeras.detect.dense import classifier_heatmap

    model, normalization = load(model_path, arch)
    args = dict(window=32, stride=4, class_indices=[1], normalization=normalization)
    classifier_heatmap(model, nuclei_like(256, 1), heat="dense", **args)  # warm-up, traces
    image = nuclei_like(size, 2)
    base = peak_rss_kib()
    start = time.perf_counter()
    heat = classifier_heatmap(model, image, heat="dense", tile=1024, **args)
    seconds = time.perf_counter() - start
    grown = (peak_rss_kib() - base) / 1024
    print(json.dumps({"size": size, "seconds": round(seconds, 2), "peak_growth_mib": round(grown),
                      "heat_shape": list(heat.shape)}))  # fmt: skip


def interleaved(model, normalization: str, images: list[np.ndarray], rounds: int) -> dict:
    from cellkeras.detect import DetectConfig, detect

    configs = {
        heat: DetectConfig.for_workflow("nuclei", gate=0.0, heat=heat, normalization=normalization)
        for heat in ("window", "dense", "auto")
    }
    for config in configs.values():  # warm-up: traces the predict functions
        detect(model, images[0][:96, :96], config)
    times: dict[str, list[float]] = {heat: [] for heat in configs}
    heats: dict[str, list[np.ndarray]] = {heat: [] for heat in configs}
    for r in range(rounds):
        order = list(configs) if r % 2 == 0 else list(configs)[::-1]
        for heat in order:
            start = time.perf_counter()
            found = [detect(model, image, configs[heat]) for image in images]
            times[heat].append((time.perf_counter() - start) / len(images))
            if r == 0:
                heats[heat] = [f.heatmap for f in found]
        print(
            json.dumps({"round": r, **{k: round(v[-1], 3) for k, v in times.items()}}), flush=True
        )
    diff = [np.abs(a - b) for a, b in zip(heats["window"], heats["dense"], strict=True)]
    corr = [
        np.corrcoef(a.ravel(), b.ravel())[0, 1]
        for a, b in zip(heats["window"], heats["dense"], strict=True)
    ]
    return {
        "best": {k: min(v) for k, v in times.items()},
        "median": {k: statistics.median(v) for k, v in times.items()},
        "max_abs_diff": float(max(d.max() for d in diff)),
        "mean_abs_diff": float(np.mean([d.mean() for d in diff])),
        "correlation": float(min(corr)),
    }


def real_frames(model, normalization: str, frames: list[int]) -> None:
    """F1@IoU0.5 and heat differences of both paths on labelled ndev frames (`--model`)."""
    from cellkeras.data.samples import instance_boxes, nuclei_sample
    from cellkeras.detect import DetectConfig, detect
    from cellkeras.evaluate.detection import image_f1

    sample = nuclei_sample()
    for frame in frames:
        image, truth = sample.images[frame], instance_boxes(sample.labels[frame])[1]
        found = {
            heat: detect(
                model,
                image,
                DetectConfig.for_workflow("nuclei", heat=heat, normalization=normalization),
            )
            for heat in ("window", "dense")
        }
        diff = np.abs(found["window"].heatmap - found["dense"].heatmap)
        corr = np.corrcoef(found["window"].heatmap.ravel(), found["dense"].heatmap.ravel())[0, 1]
        f1 = {heat: round(image_f1(f.boxes, truth), 3) for heat, f in found.items()}
        print(json.dumps({"frame": frame, "f1": f1, "boxes": {k: len(v.boxes) for k, v in
                          found.items()}, "max_abs_diff": round(float(diff.max()), 3),
                          "mean_abs_diff": round(float(diff.mean()), 3),
                          "correlation": round(float(corr), 3)}), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=2, help="512x512 images per round")
    parser.add_argument("--model", default=None, help="a trained model (default: random weights)")
    parser.add_argument(
        "--arch", default=None, help="random-weight architecture (default: preset's)"
    )
    parser.add_argument("--sizes", default="1024,4096", help="large image sides, comma-separated")
    parser.add_argument("--frames", default="", help="with --model: ndev frames to score, 7,8,9")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        large_image_child(args.child, args.model, args.arch)
        return
    model, normalization = load(args.model, args.arch)
    print(f"model {model.name} · normalization {normalization}", flush=True)
    if args.frames:
        real_frames(model, normalization, [int(f) for f in args.frames.split(",")])
    images = [nuclei_like(512, seed) for seed in range(args.images)]
    result = interleaved(model, normalization, images, args.rounds)
    best, median = result["best"], result["median"]
    print("| path | best s / 512x512 image | median | rounds |\n|---|---|---|---|")
    for heat in ("window", "dense", "auto"):
        print(f"| {heat} | {best[heat]:.3f} | {median[heat]:.3f} | {args.rounds} |")
    print(
        f"ratio window / dense: best {best['window'] / best['dense']:.1f}x, median "
        f"{median['window'] / median['dense']:.1f}x; heat |window - dense| max "
        f"{result['max_abs_diff']:.3f}, mean {result['mean_abs_diff']:.4f}, correlation "
        f"{result['correlation']:.3f}"
    )
    print("| image | dense s | peak RSS growth MiB |\n|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",") if s):
        command = [sys.executable, __file__, "--child", str(size)]
        command += ["--model", args.model] if args.model else []
        command += ["--arch", args.arch] if args.arch else []
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"| {size}x{size} | {row['seconds']:.2f} | {row['peak_growth_mib']} |", flush=True)


if __name__ == "__main__":
    main()
