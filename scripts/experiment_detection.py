"""Detection from weak labels: nuclei (real, ndev sample) and white cells (synthetic smears).

Nuclei (`ndev-sampledata` scratch assay, 10 frames of 210x576, 59-83 labelled nuclei each):
- the first `--preset=nuclei` classifier (parallel_small, 32 px nucleus-vs-background patches
  with patch labels only, per-patch percentile normalization, `PRESETS["nuclei"]` schedule) trained
  on frames 0-5; frame 6 calibrates every method's free parameters (threshold, erosion, baseline
  smoothing and marker distance), frames 7-9 are the test set and are never seen before;
- heatmap: the sliding-window probability map (`sliding_window_heatmap`, stride 2 and 4);
- methods: "heat" (calibrated fixed threshold + erosion + distance watershed: boxes from the
  heatmap alone), "heat + image extent" (the image foreground's distance-transform peaks inside
  the hot regions as markers, box extent from the image's Otsu foreground; the marker distance
  calibrated too), the same with one marker per hot region (the previous default, which merges
  touching nuclei) and the classical baseline "Otsu + watershed" on the image, computed here.

Synthetic white cells (`generate_scene`, 512x512 fields of 16 white cells among red cells):
- "centred-patch classifier + sliding window": parallel_small on 64 px windows of other
  scenes, labelled "white cell centred" (a cell centre in the middle 32x32) or "background" (no
  white-cell box touches the middle) — the nuclei recipe, patch labels from cell centres only;
- "Grad-CAM, image labels": parallel_small on 96 px `generate_cells` images (4 classes) plus
  red-cells-only background images, Grad-CAM (merged branches) of the predicted cell class on
  96 px tiles, times the tile's cell probability;
- 4 calibration scenes, 5 test scenes, plus `cell_diameter` on scenes drawn at half scale and
  red-cells-only scenes for false positives.

Scores (`cellkeras.evaluate.detection`): Hungarian one-to-one F1 at IoU 0.3/0.5/0.7, VOC
all-point AP@0.5 (greedy by score), COCO AP@[.5:.95] (pycocotools), count error, MaxBoxAccV2 of the heatmaps; the frozen
threshold's F1 and, labelled, the per-image optimum (each image its own best threshold).

Command (the numbers in docs/BENCHMARKS.md, about 15 min):
    python scripts/experiment_detection.py

Leave-one-source-out nuclei detection (ndev, laptrack; synthetic nuclei always in training;
`scripts/_detection_loso.py` says how), results in `--out`/results.json ("loso") and
loso_table.md, figures `--out`/loso_<source>.png:
    python scripts/experiment_detection.py --parts loso
or one held-out source per process (the two at once), then their table together:
    python scripts/experiment_detection.py --parts loso --loso_held_out ndev --out runs/loso_ndev
    python scripts/experiment_detection.py --parts loso --loso_held_out laptrack \
        --out runs/loso_laptrack
    python scripts/experiment_detection.py --parts loso_table --loso_from runs/loso_ndev \
        runs/loso_laptrack --out runs/experiment_detection

Machine: 2-core x86-64 CPU, no GPU, TensorFlow 2.21 / Keras 3.15.1, float32, shared with other
jobs. Outputs: `--out` (default runs/experiment_detection)/results.json and table.md, and the
figures docs/images/detect_nuclei.png and docs/images/detect_synthetic.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from cellkeras.data import make_dataset  # noqa: E402
from cellkeras.data.imageset import ImageSet  # noqa: E402
from cellkeras.detect import (  # noqa: E402
    BoxParams,
    gradcam_heatmap,
    heatmap_to_boxes,
    sliding_window_heatmap,
)
from cellkeras.detect.baseline import otsu_watershed  # noqa: E402
from cellkeras.detect.draw import (  # noqa: E402
    TRUE_COLOUR,
    colour_heatmap,
    draw_boxes,
    overlay_heatmap,
    save_rgb,
)
from cellkeras.evaluate import calibrate_threshold  # noqa: E402
from cellkeras.evaluate.detection import coco_ap, detection_scores, max_box_acc_v2  # noqa: E402
from cellkeras.io.display import to_display_rgb  # noqa: E402
from cellkeras.models import create_model  # noqa: E402
from cellkeras.training.schedule import parse_schedule  # noqa: E402
from trainer.config import PRESETS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train(
    train_set: ImageSet,
    val_set: ImageSet,
    size: int,
    epochs: int,
    normalization: str,
    seed: int = 0,
    model_name: str = "parallel_small",
    batch_size: int = 32,
    learning_rate: float = 3e-3,
) -> tuple[keras.Model, float, float]:
    """The trainer's recipe (Adam, cosine decay, "basic" augmentation) on given sets.

    Returns (model, validation accuracy, seconds).
    """
    from cellkeras.augment import build_augmenter

    keras.utils.set_random_seed(seed)
    channels = train_set.images.shape[-1]
    augmenter = build_augmenter(
        "basic", image_size=(size, size), strength=1.0, seed=seed, num_classes=train_set.num_classes
    )
    train_ds = make_dataset(
        train_set,
        size,
        True,
        batch_size,
        channels,
        augmenter,
        normalization=normalization,
        seed=seed,
    )
    val_ds = make_dataset(val_set, size, False, 128, channels, normalization=normalization)
    model = create_model(model_name, train_set.num_classes, channels=channels)
    decay = keras.optimizers.schedules.CosineDecay(
        learning_rate, len(train_ds) * epochs, alpha=0.05
    )
    model.compile(keras.optimizers.Adam(decay), "categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=2)
    return model, float(history.history["val_accuracy"][-1]), time.perf_counter() - start


def score(pred: list[tuple[np.ndarray, np.ndarray]], truth: list[np.ndarray]) -> dict:
    result = detection_scores([b for b, _ in pred], [s for _, s in pred], truth)
    return {
        "f1@0.3": result["iou0.3"]["f1"],
        "f1@0.5": result["iou0.5"]["f1"],
        "f1@0.7": result["iou0.7"]["f1"],
        "precision@0.5": result["iou0.5"]["precision"],
        "recall@0.5": result["iou0.5"]["recall"],
        "ap@0.5": result["iou0.5"]["ap"],
        "coco_ap@[.5:.95]": coco_ap(truth, pred)["AP"],
        "count_mae": result["count_mae"],
        "num_pred": result["num_pred"],
        "num_true": result["num_true"],
    }


def calibrated_method(
    name: str,
    params: BoxParams,
    cal_heats: list[np.ndarray],
    cal_truth: list[np.ndarray],
    test_heats: list[np.ndarray],
    test_truth: list[np.ndarray],
    erode: list[int],
    cal_images: list[np.ndarray] | None = None,
    test_images: list[np.ndarray] | None = None,
    min_distance: list[float] | None = None,
) -> tuple[dict, BoxParams]:
    """Calibrate threshold, erosion (and marker distance) on the calibration images, freeze,
    score the test images."""
    cal = calibrate_threshold(
        cal_heats,
        cal_truth,
        params,
        THRESHOLDS,
        erode=erode,
        images=cal_images,
        min_distance=min_distance,
    )
    frozen = dataclasses.replace(
        params,
        threshold="fixed",
        value=cal["threshold"],
        min_peak=cal["threshold"],
        erode=cal["erode"],
        min_distance=cal["min_distance"],
    )
    images = test_images if test_images is not None else [None] * len(test_heats)
    pred = [heatmap_to_boxes(h, frozen, im) for h, im in zip(test_heats, images, strict=True)]
    oracle = calibrate_threshold(
        test_heats, test_truth, frozen, THRESHOLDS, erode=[cal["erode"]], images=test_images
    )
    result = {
        "method": name,
        "threshold": cal["threshold"],
        "erode": cal["erode"],
        "min_distance": cal["min_distance"],
        "calibration_f1@0.5": cal["f1"],
        **score(pred, test_truth),
        "per_image_optimum_f1@0.5 (oracle)": oracle["per_image_optimum_f1"],
    }
    log(
        f"{name}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})}"
    )
    return result, frozen


# --- nuclei -------------------------------------------------------------------------------------


def nuclei_experiment(args: argparse.Namespace, out: Path) -> dict:
    from cellkeras.data.samples import nuclei_patches, nuclei_sample

    sample = nuclei_sample()
    train_frames, cal_frames, test_frames = list(range(6)), [6], [7, 8, 9]
    preset = PRESETS["nuclei"]
    (stage,) = parse_schedule(preset["train.schedule"])
    epochs = args.epochs or stage.epochs
    train_set = nuclei_patches(train_frames, seed=0, sample=sample)
    val_set = nuclei_patches(test_frames, seed=0, sample=sample)
    log(f"nuclei: {len(train_set)} training patches ({np.bincount(train_set.labels)}), training")
    # The first nuclei preset's recipe (parallel_small, per-patch percentile), which the frozen
    # ndev numbers in docs/BENCHMARKS.md ("Detection") come from; the current preset is
    # measured leave-one-source-out (`--parts loso`).
    model, val_acc, seconds = train(
        train_set, val_set, stage.size[0], epochs, "percentile",
        batch_size=preset["train.batch_size"],
    )  # fmt: skip
    log(f"nuclei classifier: patch val_accuracy {val_acc:.4f} on frames 7-9, {seconds:.0f} s")
    frames = cal_frames + test_frames
    images = {f: sample.images[f][..., None] for f in frames}
    truth = {f: sample.boxes(f) for f in frames}
    results: dict = {
        "train_frames": train_frames,
        "calibration_frames": cal_frames,
        "test_frames": test_frames,
        "patch_val_accuracy": val_acc,
        "train_seconds": seconds,
        "methods": [],
    }
    heats_by_stride = {}
    for stride in args.nuclei_strides:
        start = time.perf_counter()
        heats = {
            f: sliding_window_heatmap(model, images[f], 32, stride, [1], "percentile")
            for f in frames
        }
        per_frame = (time.perf_counter() - start) / len(frames)
        heats_by_stride[stride] = heats
        log(f"nuclei heatmaps, stride {stride}: {per_frame:.1f} s per 210x576 frame")
        cal_h, test_h = [heats[f] for f in cal_frames], [heats[f] for f in test_frames]
        cal_t, test_t = [truth[f] for f in cal_frames], [truth[f] for f in test_frames]
        base = BoxParams(split="distance", min_distance=4, min_area=12, score="max", nms_iou=0.3)
        for name, params, erode, with_image, distances in (
            ("heat", base, [1, 3, 5, 7, 9, 11, 13], False, None),
            (
                "heat + image extent, one marker per hot region",
                dataclasses.replace(base, extent="image", split=None),
                [1, 3, 5, 7, 9],
                True,
                None,
            ),
            (
                "heat + image extent",
                dataclasses.replace(base, extent="image"),
                [1, 3, 5, 7, 9],
                True,
                [3, 4, 5, 6, 8],
            ),
        ):
            result, frozen = calibrated_method(
                f"{name} (stride {stride})", params, cal_h, cal_t, test_h, test_t, erode,
                [images[f] for f in cal_frames] if with_image else None,
                [images[f] for f in test_frames] if with_image else None,
                min_distance=distances,
            )  # fmt: skip
            result["split"] = params.split
            result["seconds_per_frame_heatmap"] = per_frame
            results["methods"].append(result)
        results.setdefault("max_box_acc_v2", {})[f"stride {stride}"] = max_box_acc_v2(
            test_h, test_t
        )
    baseline = calibrated_baseline(images, truth, cal_frames, test_frames)
    log(f"baseline: {json.dumps(baseline)}")
    results["methods"].append(baseline)

    # A negative image: background-level noise with no nucleus anywhere.
    rng = np.random.default_rng(0)
    background = sample.images[7][sample.labels[7] == 0]
    blank = rng.choice(background, size=(210, 576)).astype(np.uint16)[..., None]
    blank_heat = sliding_window_heatmap(model, blank, 32, 4, [1], "percentile")
    results["blank_image"] = {
        "max_heat": float(blank_heat.max()),
        "boxes": len(heatmap_to_boxes(blank_heat, BoxParams(threshold="otsu", min_peak=0.5))[0]),
    }
    log(f"blank frame: {results['blank_image']}")
    model.save(out / "nuclei_model.keras")
    stride = 4 if 4 in args.nuclei_strides else args.nuclei_strides[0]  # the default
    nuclei_figure(images[7], heats_by_stride[stride][7], truth[7], model, stride, results)
    return results


def calibrated_baseline(images: dict, truth: dict, cal_frames: list, test_frames: list) -> dict:
    """Otsu + watershed, its two parameters calibrated on the calibration frames."""
    best = None
    for sigma in (0.0, 1.0, 2.0):
        for min_distance in (3, 4, 5, 6, 8):
            pred = [otsu_watershed(images[f], sigma, min_distance) for f in cal_frames]
            f1 = score(pred, [truth[f] for f in cal_frames])["f1@0.5"]
            if best is None or f1 > best[0]:
                best = (f1, sigma, min_distance)
    _, sigma, min_distance = best
    pred = [otsu_watershed(images[f], sigma, min_distance) for f in test_frames]
    return {
        "method": "Otsu + watershed (baseline)",
        "sigma": sigma,
        "min_distance": min_distance,
        "calibration_f1@0.5": best[0],
        **score(pred, [truth[f] for f in test_frames]),
    }


def nuclei_figure(image, heat, truth, model, stride, results) -> None:
    """docs/images/detect_nuclei.png: image | heatmap | overlay | boxes (frame 7, a crop)."""
    # The default design (chosen on the calibration frame, not by its test score).
    (best,) = (
        m for m in results["methods"] if m["method"] == f"heat + image extent (stride {stride})"
    )
    params = BoxParams(
        threshold="fixed", value=best["threshold"], min_peak=best["threshold"],
        erode=best["erode"], split="distance", min_distance=best["min_distance"], min_area=12,
        score="max", nms_iou=0.3, extent="image",
    )  # fmt: skip
    boxes, _ = heatmap_to_boxes(heat, params, image)
    crop = (slice(0, 210), slice(0, 256))
    scale = 2

    def up(rgb):
        return np.kron(rgb[crop], np.ones((scale, scale, 1), np.uint8))

    def in_crop(b):
        return b[(b[:, 2] <= 256)]

    shown = draw_boxes(up(to_display_rgb(image)), in_crop(truth) * scale, colour=TRUE_COLOUR)
    shown = draw_boxes(shown, in_crop(boxes) * scale, thickness=1)
    panels = [
        up(to_display_rgb(image)),
        up(colour_heatmap(heat)),
        up(overlay_heatmap(image, heat)),
        shown,
    ]
    titles = [
        "frame 7 (held out)",
        f"P(nucleus), stride {stride}",
        "overlay",
        "boxes (green: labels)",
    ]
    save_rgb(REPO / "docs/images/detect_nuclei.png", _grid(panels, titles, columns=2))


def _grid(panels, titles, columns=2) -> np.ndarray:
    """Panels with a caption bar each, in a grid, separated by white lines."""
    h, w = panels[0].shape[:2]
    captioned = []
    for panel, title in zip(panels, titles, strict=True):
        bar = np.full((22, w, 3), 255, np.uint8)
        cv2.putText(bar, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        captioned.append(np.concatenate([bar, panel], axis=0))
    rows = []
    for r in range(0, len(captioned), columns):
        row = captioned[r : r + columns]
        spacer = np.full((row[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for p in row for x in (p, spacer)][:-1], axis=1))
    spacer = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([x for r in rows for x in (r, spacer)][:-1], axis=0)


# --- synthetic ----------------------------------------------------------------------------------


def centred_windows(
    scenes: list[dict], patch: int, stride: int, seed: int, negatives_per_positive: float
) -> ImageSet:
    """64 px windows of scenes labelled like `nuclei_patches`: a white-cell centre in the middle
    half -> "white_cell"; no white-cell box touching the middle half -> "background"."""
    rng = np.random.default_rng(seed)
    c0, c1 = patch // 4, patch // 4 + patch // 2
    images, labels = [], []
    for scene in scenes:
        image = scene["image"]
        boxes = scene["boxes"][scene["box_labels"] >= 0]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        h, w = image.shape[:2]
        oy, ox = rng.integers(0, stride, 2)
        for y in range(oy, h - patch + 1, stride):
            for x in range(ox, w - patch + 1, stride):
                cx, cy = centres[:, 0] - x, centres[:, 1] - y
                centred = np.any((cx >= c0) & (cx < c1) & (cy >= c0) & (cy < c1))
                touches = np.any(
                    (boxes[:, 0] - x < c1) & (boxes[:, 2] - x > c0)
                    & (boxes[:, 1] - y < c1) & (boxes[:, 3] - y > c0)
                )  # fmt: skip
                if centred:
                    labels.append(1)
                elif not touches:
                    labels.append(0)
                else:
                    continue
                images.append(image[y : y + patch, x : x + patch])
    labels = np.asarray(labels)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    keep_neg = rng.choice(
        negatives, min(len(negatives), int(negatives_per_positive * len(positives))), replace=False
    )
    keep = np.sort(np.concatenate([positives, keep_neg]))
    return ImageSet(
        classes=["background", "white_cell"],
        labels=labels[keep],
        images=np.stack(images)[keep],
        name="synthetic centred windows",
    )


def synthetic_experiment(args: argparse.Namespace, out: Path) -> dict:
    from cellkeras.data.splits import split_imageset
    from cellkeras.data.synthetic import SYNTHETIC_CLASSES, generate_cells, generate_scene
    from cellkeras.io.images import normalize

    def scene(seed, **kw):
        return generate_scene(512, 16, seed=seed, **kw)

    cal_scenes = [scene(s) for s in range(100, 100 + args.calibration_scenes)]
    test_scenes = [scene(s) for s in range(200, 200 + args.test_scenes)]

    def white(sc):
        return sc["boxes"][sc["box_labels"] >= 0]

    cal_t, test_t = [white(s) for s in cal_scenes], [white(s) for s in test_scenes]
    results: dict = {"methods": []}

    # A. centred-patch classifier + sliding window.
    train_scenes = [generate_scene(384, 9, seed=1000 + i) for i in range(args.train_scenes)]
    windows = centred_windows(train_scenes, 64, 12, seed=0, negatives_per_positive=3.0)
    train_set, val_set = split_imageset(windows, 0.15, seed=0)
    log(f"synthetic A: {len(windows)} windows ({np.bincount(windows.labels)}), training")
    model_a, val_acc, seconds = train(train_set, val_set, 64, args.synthetic_epochs, "range")
    log(f"synthetic A: val_accuracy {val_acc:.4f}, {seconds:.0f} s")
    start = time.perf_counter()
    cal_h = [sliding_window_heatmap(model_a, s["image"], 64, 8, [1]) for s in cal_scenes]
    test_h = [sliding_window_heatmap(model_a, s["image"], 64, 8, [1]) for s in test_scenes]
    per_image = (time.perf_counter() - start) / (len(cal_h) + len(test_h))
    params = BoxParams(split="distance", min_distance=12, min_area=100, score="max", nms_iou=0.3)
    result_a, frozen_a = calibrated_method(
        "centred-patch classifier + sliding window (64 px, stride 8)", params,
        cal_h, cal_t, test_h, test_t, erode=[1, 5, 9, 13, 17], min_distance=[12, 18, 24],
    )  # fmt: skip
    result_a.update(
        patch_val_accuracy=val_acc, train_seconds=seconds, seconds_per_512px_image=per_image,
        max_box_acc_v2=max_box_acc_v2(test_h, test_t),
    )  # fmt: skip
    results["methods"].append(result_a)

    # cell_diameter: the same fields drawn at half scale, rescaled back by detect's rule.
    from cellkeras.detect.heatmaps import rescale_for_diameter

    small = [generate_scene(256, 16, seed=s, cell_diameter=17.0) for s in range(200, 203)]
    pred = []
    for sc in small:
        scaled, factor = rescale_for_diameter(sc["image"], 17.0, 34.0)
        heat = sliding_window_heatmap(model_a, scaled, 64, 8, [1])
        boxes, scores = heatmap_to_boxes(heat, frozen_a)
        pred.append((boxes / factor, scores))
    results["cell_diameter_half_scale"] = score(pred, [white(s) for s in small])
    log(f"cell_diameter=17 on half-scale scenes: {results['cell_diameter_half_scale']}")
    empty = [generate_scene(512, 0, seed=s) for s in (300, 301, 302)]
    empty_boxes = [
        len(heatmap_to_boxes(sliding_window_heatmap(model_a, s["image"], 64, 8, [1]), frozen_a)[0])
        for s in empty
    ]
    results["red_cells_only_boxes"] = empty_boxes
    log(f"red-cells-only scenes: {empty_boxes} boxes")
    synthetic_figure(test_scenes[0], test_h[0], frozen_a, test_t[0])

    # B. Grad-CAM of a whole-image-label classifier on 96 px tiles.
    if args.gradcam:
        n = args.gradcam_per_class
        cells = generate_cells(4 * n, 96, seed=0)
        background = np.stack(
            [generate_scene(96, 0, seed=10_000 + i)["image"] for i in range(n)]
        )  # fmt: skip
        data = ImageSet(
            classes=["background", *SYNTHETIC_CLASSES],
            labels=np.concatenate([cells.labels + 1, np.zeros(n, np.int64)]),
            images=np.concatenate([cells.images, background]),
            name="synthetic cells + background",
        )
        train_set, val_set = split_imageset(data, 0.15, seed=0)
        model_b, val_acc_b, seconds_b = train(
            train_set, val_set, 96, args.synthetic_epochs, "range"
        )
        log(f"synthetic B: val_accuracy {val_acc_b:.4f}, {seconds_b:.0f} s")

        def cam_map(sc: dict) -> np.ndarray:
            return gradcam_heatmap(
                model_b, normalize(sc["image"]), [1, 2, 3, 4], tile=96, overlap=48, branch="merged"
            )

        start = time.perf_counter()
        cal_hb = [cam_map(s) for s in cal_scenes]
        test_hb = [cam_map(s) for s in test_scenes]
        per_image_b = (time.perf_counter() - start) / (len(cal_hb) + len(test_hb))
        result_b, _ = calibrated_method(
            "Grad-CAM, image labels (96 px tiles)", params, cal_hb, cal_t, test_hb, test_t,
            erode=[1, 5, 9],
        )  # fmt: skip
        result_b.update(
            val_accuracy=val_acc_b, train_seconds=seconds_b, seconds_per_512px_image=per_image_b,
            max_box_acc_v2=max_box_acc_v2(test_hb, test_t),
        )  # fmt: skip
        results["methods"].append(result_b)
    model_a.save(out / "synthetic_model.keras")
    return results


def synthetic_figure(scene: dict, heat: np.ndarray, params: BoxParams, truth: np.ndarray) -> None:
    """docs/images/detect_synthetic.png: image | heatmap | overlay | boxes on a test scene."""
    image = scene["image"]
    boxes, _ = heatmap_to_boxes(heat, params)
    shown = draw_boxes(image, truth, colour=TRUE_COLOUR, thickness=2)
    shown = draw_boxes(shown, boxes, thickness=2, colour=(255, 255, 0))
    panels = [image, colour_heatmap(heat), overlay_heatmap(image, heat), shown]
    panels = [cv2.resize(p, (384, 384), interpolation=cv2.INTER_AREA) for p in panels]
    titles = ["test scene", "P(white cell centred)", "overlay", "boxes (green: truth)"]
    save_rgb(REPO / "docs/images/detect_synthetic.png", _grid(panels, titles, columns=4))


# --- report -------------------------------------------------------------------------------------


def table(results: dict) -> str:
    lines = [
        "| data | method | F1@0.3 | F1@0.5 | F1@0.7 | AP@0.5 | COCO AP@[.5:.95] | count MAE | "
        "frozen thr. / erode / dist. | per-image optimum F1@0.5 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for data in ("nuclei", "synthetic"):
        for m in results.get(data, {}).get("methods", []):
            if "threshold" in m:
                frozen = f"{m['threshold']} / {m['erode']} / {m.get('min_distance', '–')}"
            else:
                frozen = f"sigma {m['sigma']}, min_distance {m['min_distance']}"
            oracle = m.get("per_image_optimum_f1@0.5 (oracle)")
            # Results saved before the COCO column have none.
            coco = m.get("coco_ap@[.5:.95]")
            coco = f"{coco:.3f}" if coco is not None else "–"
            lines.append(
                f"| {data} | {m['method']} | {m['f1@0.3']:.3f} | {m['f1@0.5']:.3f} | "
                f"{m['f1@0.7']:.3f} | {m['ap@0.5']:.3f} | {coco} | {m['count_mae']:.1f} | {frozen} | "
                + (f"{oracle:.3f} |" if oracle is not None else "– |")
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "runs/experiment_detection"))
    parser.add_argument("--parts", nargs="+", default=["nuclei", "synthetic"])
    parser.add_argument("--epochs", type=int, default=None, help="nuclei epochs (preset's)")
    parser.add_argument("--nuclei_strides", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--synthetic_epochs", type=int, default=6)
    parser.add_argument("--train_scenes", type=int, default=40)
    parser.add_argument("--calibration_scenes", type=int, default=4)
    parser.add_argument("--test_scenes", type=int, default=5)
    parser.add_argument("--gradcam", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--gradcam_per_class", type=int, default=300)
    parser.add_argument("--loso_held_out", nargs="+", default=["ndev", "laptrack"])
    parser.add_argument("--loso_seeds", type=int, nargs="+", default=[0, 1, 2])
    # Fewer than the preset's 10 epochs, so 6 trainings fit in an hour on a shared 2-core machine.
    parser.add_argument("--loso_epochs", type=int, default=4, help="0: the preset's")
    parser.add_argument("--loso_synthetic", type=int, default=8, help="synthetic fields")
    parser.add_argument("--loso_from", nargs="+", default=[], help="loso_table: result folders")
    parser.add_argument(
        "--loso_sweep", action="store_true",
        help="diagnostics: each foreground rule's held-out F1, calibrated and oracle",
    )  # fmt: skip
    parser.add_argument("--loso_model", default="", help="classifier (default: the preset's)")
    parser.add_argument(
        "--loso_normalization", default="", help="range, percentile or frame_percentile "
        "(default: the preset's)",
    )  # fmt: skip
    parser.add_argument(
        "--loso_extra", action=argparse.BooleanOptionalAction, default=True,
        help="the first seed also runs the labelled-diameter and Grad-CAM routes",
    )  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Parts not run this time keep their previous results.
    saved = out / "results.json"
    results: dict = json.loads(saved.read_text()) if saved.is_file() else {}
    results[f"args_{'_'.join(args.parts)}"] = vars(args)
    if "nuclei" in args.parts:
        results["nuclei"] = nuclei_experiment(args, out)
    if "synthetic" in args.parts:
        results["synthetic"] = synthetic_experiment(args, out)
    if "loso_baseline" in args.parts:  # the baseline alone, for a fold cut short
        from _detection_loso import baseline_only

        results["loso_baseline"] = baseline_only(args.loso_held_out, score)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return
    if "loso_table" in args.parts:
        from _detection_loso import load_source, loso_table, summarize

        # Folders of finished runs (results.json), of runs cut short (loso_partial.json) and
        # of `--parts loso_baseline` runs; summaries are recomputed from the pooled folds.
        merged: dict = {"folds": [], "baseline": {}, "summary": {}}
        for folder in map(Path, args.loso_from):
            saved = json.loads((folder / "results.json").read_text()) if (
                folder / "results.json").is_file() else {}  # fmt: skip
            if (folder / "loso_partial.json").is_file():
                merged["folds"] += json.loads((folder / "loso_partial.json").read_text())
            merged["baseline"].update(saved.get("loso", {}).get("baseline", {}))
            merged["baseline"].update(saved.get("loso_baseline", {}))
        for held in dict.fromkeys(f["held_out"] for f in merged["folds"]):
            folds = [f for f in merged["folds"] if f["held_out"] == held]
            merged["summary"][held] = summarize(folds, load_source(held))
        results["loso"] = merged
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / "loso_table.md").write_text(loso_table(merged) + "\n")
        print(loso_table(merged))
        return
    if "loso" in args.parts:
        from _detection_loso import loso_experiment, loso_table

        results["loso"] = loso_experiment(args, out, train, score)
        (out / "loso_table.md").write_text(loso_table(results["loso"]) + "\n")
        print(loso_table(results["loso"]))
        if args.parts == ["loso"]:
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            return
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
