"""Diagnostics behind docs/BENCHMARKS.md's leave-one-source-out notes (seed 0; they read the
held-out frames and choose nothing).

Per held-out real source (ndev, laptrack), with the fold's training sources as in
`scripts/_detection_loso.py`:
1. the `--preset=nuclei` classifier (4 epochs, as the LOSO table trains it), its heat on the
   held-out frames, and the F1@0.5 of the workflow's boxes at marker distance 5 with the
   image foreground as `cellkeras.detect` draws it, and with the baseline's own (no
   smoothing, Otsu level -0.05);
2. a sharply centred classifier: "nucleus" only when a centroid lies within `CENTRE` px of the
   window centre, "background" when none lies within `CENTRE + MARGIN` px (nucleus pixels or
   not), windows every 2 px, flips and rotation only (a shift would move the centre); its heat
   peaks as watershed markers (`split="heat"`);
3. how many labelled nuclei that the first route's boxes miss have a centred-heat peak
   (above 0.5) within 4 px of their centre, and how many such peaks fall outside every box.

    python scripts/experiment_centred_nuclei.py          # about 10 minutes on 2 cores
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _detection_loso as loso  # noqa: E402
from experiment_detection import create_model, make_dataset, score, train  # noqa: E402

import cellkeras.detect.boxes as boxes_module  # noqa: E402
from cellkeras.augment import FluidDistortion  # noqa: E402
from cellkeras.data.imageset import ImageSet  # noqa: E402
from cellkeras.data.nuclei_sources import (  # noqa: E402
    load_source,
    median_diameter,
    multi_source_patches,
    rescale_sample,
    stretch_frames,
)
from cellkeras.data.samples import NUCLEI_CLASSES, instance_boxes  # noqa: E402
from cellkeras.detect.pipeline import DetectConfig  # noqa: E402
from cellkeras.evaluate.detection import match_boxes  # noqa: E402

PATCH, CENTRE, MARGIN, STRIDE = 32, 3, 3, 2
FOREGROUND = {"ndev": "otsu", "laptrack": "local"}  # the rule each source's boxes do best with


def centred_patches(sample, frames, rng) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for f in frames:
        image, label = sample.images[f], sample.labels[f]
        ids, _ = instance_boxes(label)
        centres = np.asarray(ndimage.center_of_mass(label > 0, label, ids)).reshape(-1, 2)
        labelled = label > 0
        level = np.percentile(image[labelled], 25) if labelled.any() else np.inf
        # Bright objects the labels skip are left out of the background, as `nuclei_patches` does.
        unlabelled = ndimage.binary_opening(image > level) & ~ndimage.binary_dilation(
            labelled, iterations=2
        )
        oy, ox = (int(v) for v in rng.integers(0, STRIDE, size=2))
        for y in range(oy, image.shape[0] - PATCH + 1, STRIDE):
            for x in range(ox, image.shape[1] - PATCH + 1, STRIDE):
                cy, cx = y + PATCH / 2 - 0.5, x + PATCH / 2 - 0.5
                near = np.abs(centres - [cy, cx]).max(axis=1).min() if len(centres) else np.inf
                reach = CENTRE + MARGIN
                if near <= CENTRE:
                    kind = 1
                elif (
                    near > reach
                    and not unlabelled[
                        int(cy - reach) : int(cy + reach + 2), int(cx - reach) : int(cx + reach + 2)
                    ].any()
                ):
                    kind = 0
                else:
                    continue
                images.append(image[y : y + PATCH, x : x + PATCH])
                labels.append(kind)
    return np.asarray(images), np.asarray(labels)


def centred_set(names, loaded, frames, rng, background_ratio=3.0) -> ImageSet:
    images, labels = [], []
    for name in names:
        sample = loaded[name]
        sample = stretch_frames(rescale_sample(sample, 12.0 / median_diameter(sample.labels)))
        part, kinds = centred_patches(sample, frames.get(name, range(len(sample))), rng)
        nuclei, background = np.flatnonzero(kinds == 1), np.flatnonzero(kinds == 0)
        cap = min(len(background), int(background_ratio * len(nuclei)))
        keep = np.concatenate([nuclei, rng.choice(background, cap, replace=False)])
        images.append(part[keep])
        labels.append(kinds[keep])
    count = sum(len(k) for k in labels)
    return ImageSet(
        classes=list(NUCLEI_CLASSES), labels=np.concatenate(labels),
        images=np.concatenate(images)[..., None], groups=np.zeros(count, np.int64),
        name="centred nuclei", frame_normalized=True,
    )  # fmt: skip


def train_centred(train_set: ImageSet, val_set: ImageSet, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    augmenter = FluidDistortion(
        magnitude=0.0, flip_horizontal=True, flip_vertical=True, rotation=15.0, seed=seed
    )
    norm = "frame_percentile"
    data = make_dataset(train_set, PATCH, True, 64, 1, augmenter, normalization=norm, seed=seed)
    val = make_dataset(val_set, PATCH, False, 128, 1, normalization=norm)
    model = create_model("valid_narrow", 2, channels=1)
    decay = keras.optimizers.schedules.CosineDecay(3e-3, len(data) * 4, alpha=0.05)
    model.compile(keras.optimizers.Adam(decay), "categorical_crossentropy", metrics=["accuracy"])
    model.fit(data, validation_data=val, epochs=4, verbose=2)
    return model


def baseline_foreground(image, sigma=1.0, mode="otsu"):
    """The Otsu baseline's best ndev foreground: no smoothing, level -0.05 (`mode` "otsu")."""
    grey = np.asarray(image, np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    low, high = np.percentile(grey, [0.5, 99.8])
    grey = np.clip((grey - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    level = boxes_module.threshold_heatmap(grey, "otsu")
    mask = grey > level + (-0.05 if mode == "otsu" else 0.0)
    if mode == "local" and mask.any() and not mask.all():
        background = float(np.median(grey[~mask]))
        floor = background + boxes_module.LOCAL_FLOOR * (level - background)
        local = cv2.GaussianBlur(grey, (0, 0), boxes_module.LOCAL_SIGMA)
        mask |= (grey > local) & (grey > floor)
    return mask


def missed_and_peaks(found, truths, centred_rows) -> tuple[int, int, int, int]:
    """(missed labels, of which with a centred peak near, peaks outside every box, of which on
    a label)."""
    missed = near = outside = on_label = 0
    for ((boxes, _), _), truth, (heat, _, scale, _, _) in zip(
        found, truths, centred_rows, strict=True
    ):
        peaks = peak_local_max(heat, min_distance=4, threshold_abs=0.5) / scale  # (y, x)
        matched = set(match_boxes(boxes, truth, 0.5)[0][:, 1].tolist())
        for j in (j for j in range(len(truth)) if j not in matched):
            missed += 1
            cx, cy = (truth[j, 0] + truth[j, 2]) / 2, (truth[j, 1] + truth[j, 3]) / 2
            near += bool(len(peaks)) and np.hypot(*(peaks - [cy, cx]).T).min() < 4 / scale
        for py, px in peaks:

            def inside(b, px=px, py=py):
                return ((b[:, 0] <= px) & (px <= b[:, 2]) & (b[:, 1] <= py) & (py <= b[:, 3])).any()

            if not inside(boxes):
                outside += 1
                on_label += bool(inside(truth))
    return missed, near, outside, on_label


def fold(held: str, seed: int = 0) -> None:
    samples = {s: load_source(s) for s in loso.REAL}
    others = [s for s in loso.REAL if s != held]
    frames = {
        s: [f for f in range(len(samples[s])) if f not in loso.CALIBRATION_FRAMES[s]]
        for s in others
    }
    synthetic = load_source("synthetic", seed=100 + seed, synthetic_frames=8)
    loaded = {**{s: samples[s] for s in others}, "synthetic": synthetic}
    calibration = {s: loso.CALIBRATION_FRAMES[s] for s in others}
    rule = {"loaded": loaded, "frame_normalize": True}
    model, _, _ = train(
        multi_source_patches([*others, "synthetic"], PATCH, seed, frames, **rule),
        multi_source_patches(others, PATCH, seed, calibration, **rule),
        PATCH, 4, "frame_percentile", seed=seed, model_name="valid_narrow",
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    centred = train_centred(
        centred_set([*others, "synthetic"], loaded, frames, rng),
        centred_set(others, loaded, calibration, rng),
        seed,
    )
    test = loso._frames([(samples[held], f) for f in range(len(samples[held]))])
    config = DetectConfig.for_workflow("nuclei", gate=0.0)
    shapes = [im.shape[:2] for im in test[0]]
    rows = loso.heats_for(model, test[0], config)
    params = dataclasses.replace(config.boxes, foreground=FOREGROUND[held], min_distance=5.0)

    def f1(found) -> float:
        return score([f for f, _ in found], test[1])["f1@0.5"]

    found = loso.boxes_back(rows, params, shapes)
    print(f"{held}: window heat, distance markers ({FOREGROUND[held]}): {f1(found):.3f}")
    drawn = boxes_module.image_foreground
    boxes_module.image_foreground = baseline_foreground
    try:
        base_fg = f1(loso.boxes_back(rows, params, shapes))
    finally:
        boxes_module.image_foreground = drawn
    print(f"{held}: the same with the baseline's foreground: {base_fg:.3f}")
    centred_rows = loso.heats_for(centred, test[0], dataclasses.replace(config, stride=2))
    for markers in ("distance", "heat"):
        split = dataclasses.replace(params, split=markers, erode=0, value=0.5, min_peak=0.5)
        print(
            f"{held}: centred heat, {markers} markers: "
            f"{f1(loso.boxes_back(centred_rows, split, shapes)):.3f}"
        )
    missed, near, outside, on_label = missed_and_peaks(found, test[1], centred_rows)
    print(
        f"{held}: {missed} labelled nuclei missed, {near} with a centred peak within 4 px; "
        f"{outside} peaks outside every box, {on_label} of them on a label"
    )


if __name__ == "__main__":
    for held_out in loso.REAL:
        fold(held_out)
