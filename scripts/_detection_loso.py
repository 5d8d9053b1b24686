"""Leave-one-source-out nuclei detection (`python scripts/experiment_detection.py --parts loso`).

For each real source (ndev, laptrack) held out in turn:
- train the `--preset=nuclei` recipe (its model and normalization unless `--loso_model` /
  `--loso_normalization` say otherwise: valid_narrow, frames stretched by their percentiles
  before the patches are cut; 32 px nucleus-centred vs background patches, patch labels only)
  on the other real source's training frames plus synthetic nuclei, every source resized to
  12 px nuclei by its labels (`multi_source_patches`);
- calibrate threshold, erosion and marker distance (`calibrate_threshold`, extent from the image
  foreground, distance-peak markers) on frames of the training sources the classifier did not
  see (the other real source's last frames and fresh synthetic fields); nothing is chosen on
  the held-out source;
- detect on every held-out frame as `cellkeras detect` does without `--cell_diameter`: the
  cell size measured on the image (`estimate_diameter`), the image rescaled to 12 px nuclei,
  the sliding-window heat (stride 4; dense where it equals the window heat, as by default),
  boxes mapped back to the image's pixels;
- the baseline: Otsu + distance-transform watershed on the held-out frames with the best
  setting of a fixed grid (smoothing sigma x marker min_distance x threshold offset), chosen on
  those same held-out frames (an oracle choice, so a strong baseline);
- also, seed 0 only: the Grad-CAM route (tiles of 48 px, the same image-extent boxes and
  calibration), and the sliding window with the labelled diameter instead of the estimate.
Seeds 0, 1, 2 (`--loso_seeds`) for cellkeras; mean +- sd over seeds; seconds per image.
`--loso_sweep` adds diagnostics that choose nothing: each foreground rule's held-out F1 with its
settings calibrated on the training sources, the same with the heat's gate off, and with the
held-out frames' own best settings.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from cellkeras.data.nuclei_sources import (
    load_source,
    median_diameter,
    multi_source_patches,
)
from cellkeras.detect import BoxParams, heatmap_to_boxes
from cellkeras.detect.baseline import otsu_watershed
from cellkeras.detect.draw import TRUE_COLOUR, draw_boxes, save_rgb
from cellkeras.detect.pipeline import DetectConfig, scaled_heatmap
from cellkeras.detect.size import estimate_diameter
from cellkeras.evaluate import calibrate_threshold
from cellkeras.io.display import to_display_rgb

REAL = ("ndev", "laptrack")
# Frames of each real source kept from training, for calibration when it is a training source.
CALIBRATION_FRAMES = {"ndev": [8, 9], "laptrack": [5]}
# Small grids: every setting re-runs the watershed on every calibration frame, which takes
# about 0.1-0.8 s a frame on the shared 2-core machine.
THRESHOLDS = [0.7, 0.9, 0.95, 0.98]
ERODE = [1, 3, 5]
# A marker distance of 6 and Otsu offsets of -0.1 / -0.05 (the baseline's grid) were tried in
# this grid: calibration on the training sources then chose worse (ndev 0.862 +- 0.016 against
# 0.873; docs/BENCHMARKS.md), so the grid stays small.
MIN_DISTANCE = [4.0, 5.0]
CALIBRATION_SYNTHETIC = 2
FOREGROUNDS = ("otsu", "local", "auto")
BASE_SIGMA = [0.0, 1.0, 2.0, 3.0]
BASE_MIN_DISTANCE = [3, 4, 6, 8, 10, 12]
BASE_OFFSET = [-0.1, -0.05, 0.0, 0.05, 0.1]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def baseline(images, truth, score) -> dict:
    """The grid's best setting on these images (chosen on them: an oracle baseline)."""
    from cellkeras.evaluate.detection import detection_scores

    best = None
    for sigma in BASE_SIGMA:
        for md in BASE_MIN_DISTANCE:
            for offset in BASE_OFFSET:
                pred = [otsu_watershed(im, sigma, md, offset) for im in images]
                f1 = detection_scores([b for b, _ in pred], [s for _, s in pred], truth)
                if best is None or f1["iou0.5"]["f1"] > best[0]:
                    best = (f1["iou0.5"]["f1"], sigma, md, offset)
    _, sigma, md, offset = best
    start = time.perf_counter()
    pred = [otsu_watershed(im, sigma, md, offset) for im in images]
    seconds = (time.perf_counter() - start) / len(images)
    return {
        **score(pred, truth), "sigma": sigma, "min_distance": md, "offset": offset,
        "seconds_per_image": seconds, "grid_size": len(BASE_SIGMA) * len(BASE_MIN_DISTANCE)
        * len(BASE_OFFSET),
    }  # fmt: skip


def baseline_only(held_out, score) -> dict:
    """`baseline` on every frame of each source in `held_out`, logged."""
    rows = {}
    for held in held_out:
        sample = load_source(held)
        test = _frames([(sample, f) for f in range(len(sample))])
        rows[held] = baseline(test[0], test[1], score)
        log(f"{held} baseline: {_brief(rows[held])} sigma {rows[held]['sigma']} "
            f"offset {rows[held]['offset']}")  # fmt: skip
    return rows


def heats_for(model, images, config, diameters=None):
    """Per image: (heat, rescaled image, scale, diameter used, seconds); `diameters` (one per
    image) instead of the estimate."""
    rows = []
    for i, image in enumerate(images):
        start = time.perf_counter()
        diameter = diameters[i] if diameters is not None else estimate_diameter(image)
        cfg = dataclasses.replace(config, cell_diameter=diameter)
        heat, scaled, scale, _ = scaled_heatmap(model, image, cfg, channels=1)
        rows.append((heat, scaled, scale, diameter, time.perf_counter() - start))
    return rows


def frozen_params(
    cal_rows, cal_truth, base: BoxParams, foregrounds=FOREGROUNDS
) -> tuple[BoxParams, dict]:
    """Foreground, threshold, erosion and marker distance calibrated on the training sources'
    frames (the best pooled F1@0.5 there)."""
    best = None
    for foreground in foregrounds:
        cal = calibrate_threshold(
            [r[0] for r in cal_rows],
            [t * r[2] for t, r in zip(cal_truth, cal_rows, strict=True)],
            dataclasses.replace(base, foreground=foreground),
            THRESHOLDS,
            erode=ERODE,
            images=[r[1] for r in cal_rows],
            min_distance=MIN_DISTANCE,
        )
        if best is None or cal["f1"] > best[1]["f1"]:
            best = (foreground, cal)
    foreground, cal = best
    frozen = dataclasses.replace(
        base, threshold="fixed", value=cal["threshold"], min_peak=cal["threshold"],
        erode=cal["erode"], min_distance=cal["min_distance"], foreground=foreground,
    )  # fmt: skip
    cal = {k: v for k, v in cal.items() if k != "sweep"}
    return frozen, cal


def boxes_back(rows, params: BoxParams, shapes):
    out = []
    for (heat, scaled, scale, _, _), (h, w) in zip(rows, shapes, strict=True):
        start = time.perf_counter()
        boxes, scores = heatmap_to_boxes(heat, params, scaled)
        boxes = boxes / np.float32(scale)
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
        out.append(((boxes, scores), time.perf_counter() - start))
    return out


def evaluate_route(model, config, cal, test, score, labelled=False) -> dict:
    """Calibrate on `cal` (images, truth, labelled diameters), freeze, score on `test` (the
    same); `labelled`: rescale by the labelled diameters instead of the estimates."""
    cal_rows = heats_for(model, cal[0], config, cal[2] if labelled else None)
    frozen, calibration = frozen_params(cal_rows, cal[1], config.boxes)
    test_rows = heats_for(model, test[0], config, test[2] if labelled else None)
    found = boxes_back(test_rows, frozen, [im.shape[:2] for im in test[0]])
    result = score([f for f, _ in found], test[1])
    # What `cellkeras detect` does with this classifier without calibrating it: the
    # workflow's frozen settings.
    as_shipped = boxes_back(test_rows, config.boxes, [im.shape[:2] for im in test[0]])
    result["workflow_settings_f1@0.5"] = score([f for f, _ in as_shipped], test[1])["f1@0.5"]
    seconds = [r[4] + s for r, (_, s) in zip(test_rows, found, strict=True)]
    return {
        **result,
        "threshold": frozen.value, "erode": frozen.erode, "min_distance": frozen.min_distance,
        "foreground": frozen.foreground,
        "calibration_f1@0.5": calibration["f1"],
        "seconds_per_image": float(np.mean(seconds)),
        "diameters": [float(r[3]) if r[3] else None for r in test_rows],
        "_pred": [f for f, _ in found],
    }  # fmt: skip


def foreground_sweep(model, config, cal, test, score) -> dict:
    """Diagnostics, not a choice: per foreground rule, the held-out F1@0.5 with that rule's
    settings calibrated on the training sources, the same without the heat's gate (every
    foreground part a marker: what the classifier adds), and with the best settings for the
    held-out frames themselves (an oracle, as the baseline's grid is)."""
    cal_rows, test_rows = heats_for(model, cal[0], config), heats_for(model, test[0], config)
    shapes = [im.shape[:2] for im in test[0]]

    def held_out_f1(params: BoxParams) -> float:
        return score([f for f, _ in boxes_back(test_rows, params, shapes)], test[1])["f1@0.5"]

    rows = {}
    for foreground in FOREGROUNDS:
        frozen, calibration = frozen_params(cal_rows, cal[1], config.boxes, (foreground,))
        oracle, _ = frozen_params(test_rows, test[1], config.boxes, (foreground,))
        rows[foreground] = {
            "calibration_f1@0.5": calibration["f1"],
            "held_out_f1@0.5": held_out_f1(frozen),
            "held_out_f1@0.5_no_gate": held_out_f1(
                dataclasses.replace(frozen, value=0.0, min_peak=0.0)
            ),
            "held_out_oracle_f1@0.5": held_out_f1(oracle),
            "calibrated": [frozen.value, frozen.erode, frozen.min_distance],
            "oracle": [oracle.value, oracle.erode, oracle.min_distance],
        }
    return rows


def _frames(picks) -> tuple[list, list, list]:
    """(images (H, W, 1), true boxes, labelled diameters) of (sample, frame) pairs."""
    return (
        [sample.images[f][..., None] for sample, f in picks],
        [sample.boxes(f) for sample, f in picks],
        [median_diameter(sample.labels[f]) for sample, f in picks],
    )


def one_fold(held: str, seed: int, args, samples, train, score, preset) -> tuple[dict, tuple]:
    """Train on everything but `held`, calibrate on the training sources, test on `held`."""
    others = [s for s in REAL if s != held]
    frames = {
        s: [f for f in range(len(samples[s])) if f not in CALIBRATION_FRAMES[s]] for s in others
    }
    synthetic = load_source("synthetic", seed=100 + seed, synthetic_frames=args.loso_synthetic)
    loaded = {**{s: samples[s] for s in others}, "synthetic": synthetic}
    rule = {"loaded": loaded, "frame_normalize": preset["normalization"] == "frame_percentile"}
    train_set = multi_source_patches([*others, "synthetic"], 32, seed, frames, **rule)
    val_set = multi_source_patches(
        others, 32, seed, {s: CALIBRATION_FRAMES[s] for s in others}, **rule
    )
    log(f"{held} held out, seed {seed}: {len(train_set)} patches {np.bincount(train_set.labels)}")
    model, val_acc, seconds = train(
        train_set, val_set, 32, args.loso_epochs or preset["epochs"],
        preset["normalization"], seed=seed, batch_size=preset["batch_size"],
        model_name=preset["model"],
    )  # fmt: skip
    fresh = load_source("synthetic", seed=900 + seed, synthetic_frames=CALIBRATION_SYNTHETIC)
    picks = [(samples[s], f) for s in others for f in CALIBRATION_FRAMES[s]]
    picks += [(fresh, f) for f in range(len(fresh))]
    cal = _frames(picks)
    test = _frames([(samples[held], f) for f in range(len(samples[held]))])
    config = DetectConfig.for_workflow("nuclei", gate=0.0, normalization=preset["normalization"])
    fold = {
        "held_out": held, "seed": seed, "patches": len(train_set),
        "patch_val_accuracy": val_acc, "train_seconds": seconds,
    }  # fmt: skip
    fold["window"] = evaluate_route(model, config, cal, test, score)
    log(f"  window: {_brief(fold['window'])}")
    if getattr(args, "loso_sweep", False):
        fold["foreground_sweep"] = foreground_sweep(model, config, cal, test, score)
        log(f"  foreground sweep: {json.dumps(fold['foreground_sweep'])}")
    if seed == args.loso_seeds[0] and args.loso_extra:
        route = "window, labelled diameter"
        fold[route] = evaluate_route(model, config, cal, test, score, labelled=True)
        log(f"  {route}: {_brief(fold[route])}")
        if args.gradcam:
            cam = dataclasses.replace(config, method="gradcam", tile=48, overlap=16)
            fold["gradcam"] = evaluate_route(model, cam, cal, test, score)
            log(f"  gradcam: {_brief(fold['gradcam'])}")
    return fold, test


def _brief(r: dict) -> str:
    keys = ("f1@0.5", "workflow_settings_f1@0.5", "coco_ap@[.5:.95]", "precision@0.5",
            "recall@0.5", "threshold", "erode",
            "min_distance", "foreground", "seconds_per_image")  # fmt: skip
    return json.dumps(
        {k: round(r[k], 3) if isinstance(r[k], float) else r[k] for k in keys if k in r}
    )


def figure(held: str, test, pred, base_pred, path: Path) -> None:
    """Two held-out frames: truth (green) with cellkeras' boxes | with the baseline's."""
    panels = []
    for i in (0, len(test[0]) - 1):
        rgb = to_display_rgb(test[0][i])
        scale = 2 if rgb.shape[0] < 256 else 1
        rgb = np.ascontiguousarray(np.kron(rgb, np.ones((scale, scale, 1), np.uint8)))
        truth = draw_boxes(rgb, test[1][i] * scale, colour=TRUE_COLOUR)
        ours = draw_boxes(truth, pred[i][0] * scale, thickness=1)
        theirs = draw_boxes(truth, base_pred[i][0] * scale, thickness=1, colour=(255, 0, 255))
        panels.append(
            np.concatenate([ours, np.full((ours.shape[0], 4, 3), 255, np.uint8), theirs], 1)
        )
    width = max(p.shape[1] for p in panels)
    panels = [
        np.pad(p, ((0, 4), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels
    ]
    save_rgb(path, np.concatenate(panels, 0))


def loso_experiment(args, out: Path, train, score) -> dict:
    from cellkeras.training.schedule import parse_schedule
    from trainer.config import PRESETS

    spec = PRESETS["nuclei"]
    (stage,) = parse_schedule(spec["train.schedule"])
    preset = {
        "epochs": stage.epochs,
        "normalization": args.loso_normalization or spec["data.normalization"],
        "batch_size": spec["train.batch_size"],
        "model": args.loso_model or spec.get("train.model", "parallel_small"),
    }  # fmt: skip
    samples = {s: load_source(s) for s in REAL}
    results: dict = {"folds": [], "baseline": {}, "summary": {}}
    for held in args.loso_held_out:
        held_results = []
        for seed in args.loso_seeds:
            fold, test = one_fold(held, seed, args, samples, train, score, preset)
            held_results.append(fold)
            # Saved as it goes: a run this long should leave its folds behind if stopped.
            done = results["folds"] + held_results
            (out / "loso_partial.json").write_text(json.dumps(_without_pred(done), indent=1))
        base = baseline(test[0], test[1], score)
        log(
            f"{held} baseline: {_brief({**base, 'threshold': base['offset'], 'erode': base['sigma']})}"
        )
        base_pred = [
            otsu_watershed(im, base["sigma"], base["min_distance"], base["offset"])
            for im in test[0]
        ]
        figure(held, test, held_results[0]["window"]["_pred"], base_pred,
               out / f"loso_{held}.png")  # fmt: skip
        results["baseline"][held] = base
        summary = summarize(held_results, samples[held])
        results["summary"][held] = summary
        for fold in held_results:
            for route in ("window", "window, labelled diameter", "gradcam"):
                fold.get(route, {}).pop("_pred", None)
        results["folds"].extend(held_results)
        log(f"{held} summary: {json.dumps(summary['window'])}")
    return results


def summarize(held_results: list[dict], sample) -> dict:
    """Mean and sd over seeds of each route's scores, and the size estimates of the first."""
    summary = {}
    for route in ("window", "window, labelled diameter", "gradcam"):
        rows = [f[route] for f in held_results if route in f]
        if not rows:
            continue
        keys = ("f1@0.5", "coco_ap@[.5:.95]", "precision@0.5", "recall@0.5", "seconds_per_image")
        keys += ("workflow_settings_f1@0.5",) * all("workflow_settings_f1@0.5" in r for r in rows)
        summary[route] = {
            key: [float(np.mean([r[key] for r in rows])), float(np.std([r[key] for r in rows]))]
            for key in keys
        } | {"seeds": len(rows)}
    summary["true_diameter"] = median_diameter(sample.labels)
    summary["estimated_diameters"] = held_results[0]["window"]["diameters"]
    return summary


def _without_pred(folds: list[dict]) -> list[dict]:
    return [
        {k: ({kk: vv for kk, vv in v.items() if kk != "_pred"} if isinstance(v, dict) else v)
         for k, v in fold.items()}
        for fold in folds
    ]  # fmt: skip


def loso_table(results: dict) -> str:
    lines = [
        "| held-out source | method | F1@0.5 | F1@0.5, workflow settings | COCO AP@[.5:.95] | "
        "precision | recall | s/image |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(row: dict, key: str, seeds: int) -> str:
        if key not in row:
            return "-"
        return f"{row[key][0]:.3f} ± {row[key][1]:.3f}" if seeds > 1 else f"{row[key][0]:.3f}"

    for held, summary in results["summary"].items():
        for route, row in summary.items():
            if not isinstance(row, dict):
                continue
            seeds = row["seeds"]
            keys = ("f1@0.5", "workflow_settings_f1@0.5", "coco_ap@[.5:.95]", "precision@0.5",
                    "recall@0.5")  # fmt: skip
            cells = " | ".join(cell(row, k, seeds) for k in keys)
            lines.append(f"| {held} | cellkeras, {route} ({seeds} seed(s)) | {cells} | "
                         f"{row['seconds_per_image'][0]:.2f} |")  # fmt: skip
        b = results["baseline"][held]
        lines.append(
            f"| {held} | Otsu + watershed, best of grid on these images (sigma {b['sigma']}, "
            f"min_distance {b['min_distance']}, offset {b['offset']}) | {b['f1@0.5']:.3f} | - | "
            f"{b['coco_ap@[.5:.95]']:.3f} | {b['precision@0.5']:.3f} | {b['recall@0.5']:.3f} | "
            f"{b['seconds_per_image']:.2f} |"
        )
    return "\n".join(lines)
