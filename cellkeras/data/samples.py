"""Real samples shipped inside installable packages, read by path (nothing is downloaded).

Install the packages without their dependencies (their heavy imports are never needed; the
files are only read)::

    pip install --no-deps devolearn==0.3.0 ndev-sampledata==0.0.3

C. elegans embryo stages (devolearn)
------------------------------------
`devolearn/tests/sample_data/videos/embryo_timelapse.mov` is a 389-frame, 7 fps, 752x512 RGB
time-lapse of one C. elegans embryo: nuclei in green (histone marker, one focal plane), a red
marker that lights up in gut cells from about frame 200. `embryo_stages` cuts it into eight stages
chosen by looking at the frames (every 10th, then every 2nd-4th around each transition). Frames
between stages, where the transition is gradual, are left out as guard gaps.

================  ===========  ==========================================================
stage             frames       what the frames show
================  ===========  ==========================================================
cleavage_1_4      0-13         1-4 large, well separated nuclei (the 1-cell nucleus, its
                               division at frame 2, then 2-4 cells)
cleavage_8_16     24-44        about 6-15 separated nuclei; the embryo's outline is not
                               filled yet
early_gastrula    52-90        about 20-40 smaller separated nuclei spreading over the
                               ellipse, black space between them
gastrula          108-180      the ellipse packed with large round nuclei, no red signal
late_gastrula     200-236      more, smaller nuclei; faint red gut cells appear (ventral
                               enclosure)
bean              252-296      a bright row of red gut cells in an oval outline, no notch
comma             312-369      a ventral notch on the right that deepens into a
                               comma/1.5-fold shape
fold              374-387      the folded, twitching worm (2-fold and later): outline and
                               nuclei blur and turn from frame to frame
================  ===========  ==========================================================

Left out as transitions (gradual changes, or divisions in progress): frames 14-23 (4 -> 8
divisions), 45-51 (a division wave), 91-107 (filling of the ellipse), 181-199, 237-251,
297-311 (the notch starting) and 370-373 (the body turning); frame 388 is blank.
Frame ranges are inclusive here; at 7 fps frame ``i`` is at ``i / 7`` seconds.

ndev scratch-assay nuclei
-------------------------
`ndev_sampledata/samples/scratch-assay-labeled-10T-2Ch.tiff` holds axes CTYX = (4, 10, 210, 576)
uint16: channel 0 a nuclear stain, channel 2 an instance label image of the nuclei (59-83 per
frame), 0.619 um per pixel. `nuclei_sample` returns the stain and labels, `instance_boxes` turns a
label image into boxes, and `nuclei_patches` cuts weakly labelled nucleus/background patches.

laptrack nuclei time-lapse
--------------------------
The laptrack 0.17.1 source distribution's
`docs/examples/napari_interactive_fix_data/example_images.tif` and `example_label.tif`: 6 frames
of 200x200 uint16 fluorescence nuclei with instance labels (39-50 per frame, median equivalent
diameter about 21 px; pixel size not recorded). No installed package ships them, so `make`
(the `$(VENV)/.installed` step) extracts them into ``sys.prefix/share/cellkeras/laptrack/`` and
`laptrack_sample` reads them from there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellkeras.data.imageset import ImageSet
from cellkeras.io.display import to_display_rgb

# Import name -> the pinned requirement the samples were checked against.
SAMPLE_PACKAGES: dict[str, str] = {
    "devolearn": "devolearn==0.3.0",
    "ndev_sampledata": "ndev-sampledata==0.0.3",
}

EMBRYO_VIDEO = ("devolearn", "tests/sample_data/videos/embryo_timelapse.mov")
EMBRYO_FPS = 7.0
# (stage, first frame, last frame inclusive); see the module docstring and docs/DATA.md for why.
EMBRYO_STAGES: tuple[tuple[str, int, int], ...] = (
    ("cleavage_1_4", 0, 13),
    ("cleavage_8_16", 24, 44),
    ("early_gastrula", 52, 90),
    ("gastrula", 108, 180),
    ("late_gastrula", 200, 236),
    ("bean", 252, 296),
    ("comma", 312, 369),
    ("fold", 374, 387),
)

NUCLEI_TIFF = ("ndev_sampledata", "samples/scratch-assay-labeled-10T-2Ch.tiff")
NUCLEI_PIXEL_SIZE_UM = 0.619
NUCLEI_CLASSES = ["background", "nucleus"]

LAPTRACK_REQUIREMENT = "laptrack==0.17.1"
LAPTRACK_FILES = ("example_images.tif", "example_label.tif")


class MissingSampleError(RuntimeError):
    """A packaged sample is not installed; the message gives the command that installs it."""


def install_command(package: str) -> str:
    """The pip command that installs the package providing `package` (an import name)."""
    requirement = SAMPLE_PACKAGES.get(package, package.replace("_", "-"))
    return f"pip install --no-deps {requirement}"


def sample_path(package: str, relative: str) -> Path:
    """The path of a file shipped inside an installed package, without importing the package.

    Args:
        package: the top-level import name, e.g. "devolearn" (its `__init__` is never run, so
            packages whose imports need torch still work).
        relative: the file's path inside the package.

    Returns:
        The existing file's path.

    Raises:
        MissingSampleError: the package is not installed or lacks the file; the message shows the
            exact `pip install --no-deps ...` command.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise MissingSampleError(
            f"the sample {package}/{relative} needs the package {package!r}, which is not "
            f"installed. Install it with:\n    {install_command(package)}"
        )
    for location in locations:
        path = Path(location) / relative
        if path.is_file():
            return path
    raise MissingSampleError(
        f"the installed package {package!r} (at {locations[0]}) has no {relative}; install the "
        f"version the samples were made from:\n    {install_command(package)}"
    )


# --- C. elegans embryo stages ------------------------------------------------------------------


def embryo_video_path() -> Path:
    """The devolearn embryo time-lapse (389 frames, 752x512 RGB, 7 fps)."""
    return sample_path(*EMBRYO_VIDEO)


def embryo_stages(
    max_side: int | None = 256, channels: int | None = 1, frame_step: int = 1
) -> ImageSet:
    """The devolearn embryo time-lapse as an 8-stage classification set.

    Stages and their frame ranges are `EMBRYO_STAGES` (documented in the module docstring and in
    docs/DATA.md); transition frames between them are left out. Neighbouring frames are nearly
    identical, so split with `cellkeras.data.splits.block_split` on `order`, never at random.

    Args:
        max_side: longer side of the stored frames (the video is 752x512); None keeps full size.
        channels: 1 for grayscale (the default: stage is told by nuclei, not colour), 3 for RGB.
        frame_step: keep every `frame_step`-th frame of each stage.

    Returns:
        An in-memory `ImageSet`: classes in developmental order, `order` = time in seconds,
        name "devolearn embryo stages". With frame_step=1: 301 frames.

    Raises:
        MissingSampleError: devolearn is not installed.
    """
    from cellkeras.data.video import Segment, load_video_segments

    segments = [
        Segment(label=name, start=first, end=last + 1, unit="frames")
        for name, first, last in EMBRYO_STAGES
    ]
    return load_video_segments(
        embryo_video_path(),
        segments,
        max_side=max_side,
        channels=channels,
        frame_step=frame_step,
        fps=EMBRYO_FPS,
        name="devolearn embryo stages",
    )


def embryo_stage_sheet(per_stage: int = 3, tile_side: int = 240) -> np.ndarray:
    """A contact sheet (RGB uint8) of `per_stage` frames of each stage, one row per stage.

    The frames are the first, middle and last of each range (evenly spaced for other counts) and
    are captioned with stage and frame number; docs/images/embryo_stages.png is this sheet.
    """
    from cellkeras.data.video import contact_sheet

    stages = embryo_stages(max_side=tile_side, channels=3)
    frame_of = np.rint(stages.order * EMBRYO_FPS).astype(int)
    picks, captions = [], []
    for k, name in enumerate(stages.classes):
        idx = np.flatnonzero(stages.labels == k)
        for j in np.round(np.linspace(0, len(idx) - 1, per_stage)).astype(int):
            picks.append(stages.images[idx[j]])
            captions.append(f"{name} f{frame_of[idx[j]]}")
    return contact_sheet(picks, captions, ncols=per_stage, tile_side=tile_side)


# --- ndev scratch-assay nuclei -----------------------------------------------------------------


def instance_boxes(label_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes of every instance in a 2-D label image.

    Convention: boxes are ``[x_min, y_min, x_max, y_max]`` in pixels, inclusive-exclusive:
    ``x_min``/``y_min`` are the first column/row the instance covers and ``x_max``/``y_max`` one
    past the last (``x_max = last column + 1``), so ``x_max - x_min`` is the width in pixels and
    ``label_image[y_min:y_max, x_min:x_max]`` crops the instance.

    Args:
        label_image: (H, W) non-negative integer array; 0 is background, each other value one
            instance.

    Returns:
        `(ids, boxes)`: int64 (K,) instance ids in increasing order and float32 (K, 4) boxes.
    """
    label_image = np.asarray(label_image)
    if label_image.ndim != 2:
        raise ValueError(f"instance_boxes takes a 2-D label image, got shape {label_image.shape}.")
    if not np.issubdtype(label_image.dtype, np.integer):
        raise ValueError(f"label image must be integers, got {label_image.dtype}.")
    if label_image.size and label_image.min() < 0:
        raise ValueError("label image has negative values.")
    slices = ndimage.find_objects(label_image.astype(np.int64, copy=False))
    ids, boxes = [], []
    for i, sl in enumerate(slices):
        if sl is None:  # ids are not always consecutive
            continue
        ys, xs = sl
        ids.append(i + 1)
        boxes.append((xs.start, ys.start, xs.stop, ys.stop))
    return (
        np.asarray(ids, dtype=np.int64),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
    )


@dataclasses.dataclass
class NucleiSample:
    """A nuclear-stain time-lapse with instance labels of the nuclei.

    Attributes:
        images: (T, H, W) uint16 nuclear stain.
        labels: (T, H, W) int32 instance labels (0 = background).
        pixel_size_um: micrometres per pixel (None: not recorded).
    """

    images: np.ndarray
    labels: np.ndarray
    pixel_size_um: float | None = NUCLEI_PIXEL_SIZE_UM

    def __len__(self) -> int:
        return len(self.images)

    def boxes(self, frame: int) -> np.ndarray:
        """(K, 4) float32 ``[x_min, y_min, x_max, y_max]`` boxes of frame `frame`'s nuclei.

        Inclusive-exclusive, as `instance_boxes` documents; ordered by instance id.
        """
        return instance_boxes(self.labels[frame])[1]


def nuclei_sample() -> NucleiSample:
    """The ndev scratch-assay nuclei: 10 frames of 210x576 pixels, 0.619 um per pixel.

    Raises:
        MissingSampleError: ndev-sampledata is not installed.
        ValueError: the file does not have the expected layout.
    """
    import tifffile

    path = sample_path(*NUCLEI_TIFF)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, data = series.axes, series.asarray()
    # The file is an OME/ImageJ-less multi-page TIFF whose series says CTYX; check rather than trust.
    if axes != "CTYX" or data.ndim != 4 or data.shape[0] < 3:
        raise ValueError(f"{path}: expected axes CTYX with >= 3 channels, got {axes} {data.shape}.")
    return NucleiSample(
        images=np.ascontiguousarray(data[0]).astype(np.uint16, copy=False),
        labels=np.ascontiguousarray(data[2]).astype(np.int32),
    )


def laptrack_dir() -> Path:
    """Where `make` puts the laptrack sample: ``sys.prefix/share/cellkeras/laptrack``."""
    return Path(sys.prefix) / "share" / "cellkeras" / "laptrack"


def laptrack_sample(folder: str | Path | None = None) -> NucleiSample:
    """The laptrack 0.17.1 example nuclei: 6 frames of 200x200 uint16 with instance labels.

    Args:
        folder: the folder holding `LAPTRACK_FILES` (default: `laptrack_dir()`).

    Raises:
        MissingSampleError: a file is missing; the message names the path and the make step.
        ValueError: the files do not hold matching (T, H, W) stacks.
    """
    import tifffile

    folder = Path(folder) if folder is not None else laptrack_dir()
    paths = [folder / name for name in LAPTRACK_FILES]
    for path in paths:
        if not path.is_file():
            raise MissingSampleError(
                f"the laptrack sample file {path} is missing. `make .venv/.installed` (part of "
                f"`make test`) extracts it from the {LAPTRACK_REQUIREMENT} source distribution "
                "into sys.prefix/share/cellkeras/laptrack/."
            )
    images, labels = (tifffile.imread(path) for path in paths)
    if images.ndim != 3 or images.shape != labels.shape:
        raise ValueError(
            f"{folder}: expected two (T, H, W) stacks of one shape, got images {images.shape} "
            f"and labels {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{paths[1]}: labels must be integers, got {labels.dtype}.")
    return NucleiSample(
        images=images.astype(np.uint16, copy=False),
        labels=labels.astype(np.int32),
        pixel_size_um=None,
    )


def nuclei_patches(
    frames: Sequence[int] | None = None,
    patch_size: int = 32,
    stride: int | None = None,
    seed: int = 0,
    sample: NucleiSample | None = None,
    drop_unlabelled: bool = True,
) -> ImageSet:
    """Nucleus-vs-background patches from the scratch-assay sample, with patch-level labels.

    A grid of `patch_size` patches is laid over each frame (with a random offset per frame drawn
    from `seed`, so different seeds give differently placed patches). Each patch's central region
    is its middle ``patch_size // 2`` square:

    * "nucleus": a nucleus centroid lies inside the central region;
    * "background": no nucleus pixel touches the central region;
    * anything else (nucleus pixels in the centre but no centroid) is ambiguous and dropped.

    The labels miss about one bright object in ten (mostly small, very bright rounded nuclei,
    likely dividing cells). With `drop_unlabelled`, a would-be background patch whose central
    region holds bright unlabelled pixels (brighter than the frame's 25th percentile of labelled
    pixels, after a 3x3 opening against noise) counts as ambiguous too, so such nuclei are not
    taught as background.

    Only patch labels are kept (weak supervision for the heatmap detector); `groups` holds the
    frame index so splits keep patches of one frame together.

    Args:
        frames: frame indices to use (default: all 10).
        patch_size: patch side in pixels.
        stride: grid step; defaults to `patch_size // 2`.
        seed: draws each frame's grid offset.
        sample: a loaded `NucleiSample` (default: `nuclei_sample()`).
        drop_unlabelled: drop background patches with bright unlabelled objects in their centre.

    Returns:
        An `ImageSet` with classes ["background", "nucleus"], `images` (N, patch_size,
        patch_size, 1) uint16 raw stain values, `groups` = frame index.
    """
    sample = sample if sample is not None else nuclei_sample()
    if patch_size < 4:
        raise ValueError(f"patch_size must be >= 4, got {patch_size}.")
    stride = stride if stride is not None else max(1, patch_size // 2)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}.")
    frames = list(range(len(sample))) if frames is None else [int(f) for f in frames]
    rng = np.random.default_rng(seed)
    c0 = (patch_size - patch_size // 2) // 2  # central region [c0, c1) in patch coordinates
    c1 = c0 + patch_size // 2
    patches, labels, groups = [], [], []
    for f in frames:
        image, label = sample.images[f], sample.labels[f]
        h, w = image.shape
        if h < patch_size or w < patch_size:
            raise ValueError(f"frame {f} ({h}x{w}) is smaller than patch_size {patch_size}.")
        ids, _ = instance_boxes(label)
        centroids = np.asarray(ndimage.center_of_mass(label > 0, label, ids)).reshape(-1, 2)
        # Centroid counts per pixel, summed so any square's count is four lookups.
        hits = np.zeros((h + 1, w + 1), np.int64)
        cy = np.clip(np.floor(centroids[:, 0]).astype(int), 0, h - 1)
        cx = np.clip(np.floor(centroids[:, 1]).astype(int), 0, w - 1)
        np.add.at(hits, (cy + 1, cx + 1), 1)
        hits = hits.cumsum(0).cumsum(1)
        occupied = label > 0
        if drop_unlabelled and occupied.any():
            threshold = np.percentile(image[occupied], 25)
            occupied = occupied | ndimage.binary_opening(image > threshold)
        fg = np.pad(occupied.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        oy, ox = (int(v) for v in rng.integers(0, stride, size=2))
        for y in range(oy, h - patch_size + 1, stride):
            for x in range(ox, w - patch_size + 1, stride):
                y0, y1, x0, x1 = y + c0, y + c1, x + c0, x + c1
                n_centroids = hits[y1, x1] - hits[y0, x1] - hits[y1, x0] + hits[y0, x0]
                n_fg = fg[y1, x1] - fg[y0, x1] - fg[y1, x0] + fg[y0, x0]
                if n_centroids > 0:
                    cls = 1
                elif n_fg == 0:
                    cls = 0
                else:
                    continue
                patches.append(image[y : y + patch_size, x : x + patch_size])
                labels.append(cls)
                groups.append(f)
    if not patches:
        raise ValueError("no patches: frames is empty or every patch was ambiguous.")
    return ImageSet(
        classes=list(NUCLEI_CLASSES),
        labels=np.asarray(labels, dtype=np.int64),
        images=np.stack(patches)[..., None],
        groups=np.asarray(groups, dtype=np.int64),
        name=f"ndev scratch-assay nuclei patches {patch_size}px",
    )


def nuclei_overlay(
    frame: int = 0, sample: NucleiSample | None = None, scale: int = 1
) -> np.ndarray:
    """The nuclear stain of `frame` (contrast-stretched, RGB uint8) with its label boxes drawn.

    Args:
        frame: the frame index.
        sample: a loaded `NucleiSample` (default: `nuclei_sample()`).
        scale: integer upscaling (nearest neighbour) before drawing, so thin boxes stay visible.

    docs/images/nuclei_sample.png is ``nuclei_overlay(0, scale=2)``.
    """
    import cv2

    sample = sample if sample is not None else nuclei_sample()
    rgb = to_display_rgb(sample.images[frame])
    rgb = np.ascontiguousarray(np.kron(rgb, np.ones((scale, scale, 1), np.uint8)))
    for x0, y0, x1, y1 in (sample.boxes(frame) * scale).astype(int):
        # cv2.rectangle's corners are inclusive, so the exclusive max is pulled in by one.
        cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), (255, 200, 0), 1)
    return rgb
