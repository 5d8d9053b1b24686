"""Nucleus-vs-background patches from several labelled sources, at one nucleus size.

The nuclei detector (`python -m trainer.task --preset=nuclei`, `data.nuclei_sources`) learns
from patch labels cut out of labelled nuclei images (`nuclei_patches`). One source teaches one
microscope's look; this module pools several:

- "ndev": the ndev-sampledata scratch assay (10 frames of 210x576, nuclei about 12 px);
- "laptrack": the laptrack 0.17.1 example time-lapse (6 frames of 200x200, about 21 px);
- "synthetic": `synthetic_nuclei_sample` fields (varied size, brightness, blur, noise,
  clumping and background; deterministic from the seed).

Every source is first resized so its median labelled nucleus is `train_diameter` pixels across
(the labels give the size, so no estimate is involved), which is what `cellkeras detect` does to
an image before its windows are classified (`--cell_diameter`, or
`cellkeras.detect.size.estimate_diameter`); the patch classifier then only ever sees one scale.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from scipy import ndimage

from cellkeras.data.imageset import ImageSet
from cellkeras.data.samples import (
    NUCLEI_CLASSES,
    NucleiSample,
    laptrack_sample,
    nuclei_patches,
    nuclei_sample,
)

NUCLEI_SOURCES = ("ndev", "laptrack", "synthetic")
TRAIN_DIAMETER = 12.0
# Group ids are source index * this + frame, so splits by group never mix sources' frames.
GROUP_STRIDE = 1000


def parse_sources(sources: str | Sequence[str]) -> list[str]:
    """Source names from "ndev,laptrack" or a list; unknown or repeated names raise."""
    names = [s.strip() for s in sources.split(",")] if isinstance(sources, str) else list(sources)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in NUCLEI_SOURCES]
    if unknown or not names:
        raise ValueError(
            f"unknown nuclei source(s) {unknown or names!r}; known: {', '.join(NUCLEI_SOURCES)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"nuclei sources are repeated: {names}")
    return names


def load_source(
    name: str, seed: int = 0, synthetic_frames: int = 8, synthetic_side: int = 192
) -> NucleiSample:
    """One source's frames and labels at their stored size (`synthetic_*` shape "synthetic")."""
    if name == "ndev":
        return nuclei_sample()
    if name == "laptrack":
        return laptrack_sample()
    if name == "synthetic":
        from cellkeras.data.synthetic_nuclei import synthetic_nuclei_sample

        side = (synthetic_side, synthetic_side)
        return synthetic_nuclei_sample(synthetic_frames, side, TRAIN_DIAMETER, seed=seed)
    raise ValueError(f"unknown nuclei source {name!r}; known: {', '.join(NUCLEI_SOURCES)}")


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter (``2 * sqrt(area / pi)``) of the instances in label images.

    Instances touching the image border are left out (they are cut, so smaller than the nuclei
    they belong to) unless a frame has fewer than 3 others.
    """
    diameters = []
    for frame in np.asarray(labels).reshape(-1, *np.shape(labels)[-2:]):
        ids = np.unique(frame[frame > 0])
        edge = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
        inner = np.setdiff1d(ids, edge)
        ids = inner if len(inner) >= 3 else ids
        areas = ndimage.sum_labels(np.ones(frame.shape), frame, ids)
        diameters.extend(2.0 * np.sqrt(np.asarray(areas) / math.pi))
    if not diameters:
        raise ValueError("the label images hold no instance to measure")
    return float(np.median(diameters))


def rescale_sample(sample: NucleiSample, scale: float) -> NucleiSample:
    """Frames resized by `scale` (area/linear interpolation; labels nearest-neighbour)."""
    if abs(scale - 1.0) < 1e-6:
        return sample
    _, h, w = sample.images.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    images = np.stack([cv2.resize(im, size, interpolation=interp) for im in sample.images])
    labels = np.stack(
        [cv2.resize(lb, size, interpolation=cv2.INTER_NEAREST) for lb in sample.labels]
    )
    pixel = None if sample.pixel_size_um is None else sample.pixel_size_um / scale
    return dataclasses.replace(sample, images=images, labels=labels, pixel_size_um=pixel)


def stretch_frames(sample: NucleiSample) -> NucleiSample:
    """Each frame percentile-stretched (`normalize`'s "frame_percentile"), stored as uint16."""
    from cellkeras.io.images import normalize

    stretched = [normalize(frame[..., None], "frame_percentile")[..., 0] for frame in sample.images]
    images = np.round(np.stack(stretched) * 65535.0).astype(np.uint16)
    return dataclasses.replace(sample, images=images)


def _cap_background(patches: ImageSet, ratio: float, seed: int) -> ImageSet:
    background = np.flatnonzero(patches.labels == 0)
    limit = int(ratio * max(1, int((patches.labels == 1).sum())))
    if len(background) <= limit:
        return patches
    drop = np.random.default_rng(seed).choice(background, len(background) - limit, replace=False)
    return patches.subset(np.setdiff1d(np.arange(len(patches)), drop))


def multi_source_patches(
    sources: str | Sequence[str] = NUCLEI_SOURCES,
    patch_size: int = 32,
    seed: int = 0,
    frames: Mapping[str, Sequence[int]] | None = None,
    train_diameter: float = TRAIN_DIAMETER,
    loaded: Mapping[str, NucleiSample] | None = None,
    max_background_ratio: float | None = 2.0,
    frame_normalize: bool = False,
) -> ImageSet:
    """Nucleus/background patches (`nuclei_patches` rules) pooled over sources at one scale.

    Args:
        sources: names from `NUCLEI_SOURCES` (a list or "ndev,laptrack").
        patch_size: patch side in pixels, after rescaling.
        seed: grid offsets and the synthetic fields.
        frames: per source, the frames to use (default: all); the rest stay unseen, e.g. for
            calibrating detection on the training sources.
        train_diameter: the nucleus diameter every source is resized to.
        loaded: already loaded samples by name (instead of `load_source`).
        max_background_ratio: per source, background patches beyond this many per nucleus
            patch are dropped at random (sparse fields such as the ndev scratch assay give
            five times more background than nuclei; the extra ones teach little and cost
            training time); None keeps all.
        frame_normalize: stretch every rescaled frame by its own percentiles before cutting
            (`stretch_frames`; the "frame_percentile" normalization), so a patch keeps its
            brightness relative to its frame, as a window does in a detected image.

    Returns:
        An `ImageSet` (classes ["background", "nucleus"], uint16 (N, s, s, 1) patches, raw or
        frame-stretched as `frame_normalized` says) whose `groups` are
        ``source index * GROUP_STRIDE + frame``.
    """
    names = parse_sources(sources)
    parts = []
    for name in names:
        sample = (loaded or {}).get(name) or load_source(name, seed)
        scale = train_diameter / median_diameter(sample.labels)
        sample = rescale_sample(sample, scale)
        if frame_normalize:
            sample = stretch_frames(sample)
        # Smaller (downscaled) sources are cut at a finer grid so each still gives patches.
        stride = patch_size // 2 if min(sample.images.shape[1:]) >= 4 * patch_size else None
        stride = stride or max(1, patch_size // 4)
        chosen = None if frames is None or name not in frames else list(frames[name])
        part = nuclei_patches(chosen, patch_size, stride, seed, sample)
        if max_background_ratio is not None:
            part = _cap_background(part, max_background_ratio, seed)
        index = NUCLEI_SOURCES.index(name)
        parts.append(dataclasses.replace(part, groups=part.groups + index * GROUP_STRIDE))
    return ImageSet(
        classes=list(NUCLEI_CLASSES),
        labels=np.concatenate([p.labels for p in parts]),
        images=np.concatenate([p.images for p in parts]),
        groups=np.concatenate([p.groups for p in parts]),
        name=f"nuclei patches {patch_size}px from {'+'.join(names)}",
        frame_normalized=frame_normalize,
    )
