"""Video time-lapses cut into classes by time ranges.

The seed's C. elegans workflow cut one time-lapse into stage classes by time ranges
(`gastrula` 32-82 s, `comma` 116-126 s, ...), saved every frame as an image and wrote a
`labels.csv`. This module does the same in three steps:

1. `parse_segments` turns a spec such as ``"gastrula=32:82,comma=116:126"`` into `Segment`s;
2. `load_video_segments` reads the video once, front to back, and keeps the frames inside the
   segments as an in-memory `ImageSet` (labels, `order` = frame time in seconds);
3. `write_class_folders` writes the class-folder tree, the seed's `labels.csv` and the frame
   manifest `frames.csv` at once.

The segment syntax is in `cellkeras.data.segments`; writing the frames as a class-folder tree
(with the manifest that keeps their order) is in `cellkeras.data.frames`. Both are re-exported
here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from cellkeras.data.frames import write_class_folders
from cellkeras.data.imageset import ImageSet
from cellkeras.data.segments import UNITS, Segment, parse_segments

__all__ = [
    "UNITS",
    "Segment",
    "VideoInfo",
    "contact_sheet",
    "load_video_segments",
    "parse_segments",
    "probe_video",
    "segment_summary",
    "write_class_folders",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a video's container says about it (frame counts can be estimates).

    Attributes:
        path: the file.
        fps: frames per second (0.0 when the metadata lacks it).
        frame_count: frame count from the metadata (may be off for some codecs).
        width: frame width in pixels.
        height: frame height in pixels.
    """

    path: Path
    fps: float
    frame_count: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else float("nan")


def probe_video(path: str | os.PathLike, fps: float | None = None) -> VideoInfo:
    """Reads a video's metadata (fps, frame count, size) without decoding frames.

    Args:
        path: the video file.
        fps: overrides the container's frame rate (for files whose metadata lacks or misstates it).

    Raises:
        ValueError: when the file is missing or OpenCV cannot open it.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video {path} does not exist.")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError(f"video {path}: OpenCV cannot open it (unknown or damaged format).")
        meta_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return VideoInfo(
            path=path,
            fps=float(fps) if fps else (meta_fps if math.isfinite(meta_fps) else 0.0),
            frame_count=max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0),
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        )
    finally:
        cap.release()


def _check_reading_options(channels: int | None, frame_step: int, max_side: int | None) -> None:
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels}.")
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}.")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side}.")


def load_video_segments(
    path: str | os.PathLike,
    segments: str | Mapping | Sequence[Segment],
    unit: str = "seconds",
    max_side: int | None = 256,
    channels: int | None = None,
    frame_step: int = 1,
    fps: float | None = None,
    name: str | None = None,
) -> ImageSet:
    """Reads the frames inside labelled time ranges of a video into an in-memory `ImageSet`.

    The video is decoded once, front to back (seeking frame by frame is slow and inexact with many
    codecs), and reading stops after the last frame any segment needs.

    Args:
        path: the video file (anything OpenCV's `cv2.VideoCapture` reads).
        segments: a spec string, mapping or `Segment`s (see `parse_segments`).
        unit: the unit of bare numbers in `segments`: "seconds" or "frames".
        max_side: frames are downscaled (cv2.INTER_AREA) so their longer side is at most this;
            None keeps the full size.
        channels: 1 for grayscale, 3 or None for RGB.
        frame_step: keep every `frame_step`-th frame of each segment, starting with its first.
        fps: the frame rate to use instead of the container's; required when the metadata says 0.
        name: the set's name; defaults to the file's stem.

    Returns:
        An `ImageSet` with `images` (N, H, W, C) uint8, `labels` in class order of first appearance,
        `order` = each frame's time in seconds (``frame / fps``), `groups` None, frames in time order.

    Raises:
        ValueError: naming the file, when it is missing or unreadable (opens but yields no frame),
            fps is unknown, a segment reaches past the video's end (the message gives the video's
            length in seconds and frames), segments overlap, or a segment holds no frame.
    """
    _check_reading_options(channels, frame_step, max_side)
    segs = parse_segments(segments, unit=unit)
    info = probe_video(path, fps=fps)
    path = info.path
    if info.fps <= 0:
        raise ValueError(
            f"video {path}: its metadata gives no frame rate; pass fps= (--fps on the command line)."
        )
    ranges = _frame_ranges(segs, info)

    classes = list(dict.fromkeys(s.label for s in segs))
    # frame index -> class index, for the frames we keep.
    wanted: dict[int, int] = {}
    for (first, stop), seg in zip(ranges, segs, strict=True):
        for i in range(first, stop, frame_step):
            wanted[i] = classes.index(seg.label)
    last_needed = max(stop for _, stop in ranges)

    logger.info(
        "video %s: %g fps, %d frames (metadata), %dx%d",
        path,
        info.fps,
        info.frame_count,
        info.width,
        info.height,
    )
    frames, labels, indices = [], [], []
    n_read = 0
    cap = cv2.VideoCapture(str(path))
    try:
        while n_read < last_needed:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if n_read in wanted:
                frames.append(_convert_frame(frame, max_side, channels))
                labels.append(wanted[n_read])
                indices.append(n_read)
            n_read += 1
    finally:
        cap.release()

    if n_read == 0:
        raise ValueError(f"video {path}: OpenCV opened it but could not decode a single frame.")
    if n_read < last_needed:
        # We read to the real end, so n_read is the true length (metadata counts can be wrong).
        length = f"{n_read / info.fps:.2f} s ({n_read} frames at {info.fps:g} fps)"
        beyond = [s for (_, stop), s in zip(ranges, segs, strict=True) if stop > n_read]
        raise ValueError(
            f"video {path}: segment {beyond[0].describe()!r} reaches beyond the video's end; "
            f"the video is {length}."
        )
    order = np.asarray(indices, dtype=np.float64) / info.fps
    return ImageSet(
        classes=classes,
        labels=np.asarray(labels, dtype=np.int64),
        images=np.stack(frames),
        order=order,
        groups=None,
        name=name if name is not None else path.stem,
    )


def _frame_ranges(segs: list[Segment], info: VideoInfo) -> list[tuple[int, int]]:
    """Each segment's half-open frame range at the video's fps, checked for overlaps (which
    segments in different units can only show now) and for holding a frame."""
    ranges = [s.frame_range(info.fps) for s in segs]
    pairs = sorted(zip(ranges, segs, strict=True), key=lambda p: p[0])
    for (ra, a), (rb, b) in zip(pairs, pairs[1:], strict=False):
        if rb[0] < ra[1]:
            raise ValueError(
                f"video {info.path}: segments {a.describe()!r} and {b.describe()!r} overlap "
                f"(frames {ra[0]}-{ra[1] - 1} and {rb[0]}-{rb[1] - 1} at {info.fps:g} fps)."
            )
    for (first, stop), seg in zip(ranges, segs, strict=True):
        if stop <= first:
            at = f"{info.fps:g} fps"
            raise ValueError(
                f"video {info.path}: segment {seg.describe()!r} holds no frame at {at}."
            )
    return ranges


def _convert_frame(bgr: np.ndarray, max_side: int | None, channels: int | None) -> np.ndarray:
    h, w = bgr.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    if channels == 1:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)[..., None]
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def segment_summary(
    imageset: ImageSet, segments: Sequence[Segment], fps: float
) -> list[tuple[str, int, str]]:
    """One `(class, frames kept, time ranges)` row per class, for printing after a load.

    Args:
        imageset: what `load_video_segments` returned for `segments`.
        segments: the parsed segments.
        fps: the frame rate used to read the video.
    """
    counts = imageset.class_counts()
    rows = []
    for k, cls in enumerate(imageset.classes):
        spans = []
        for seg in segments:
            if seg.label == cls:
                first, stop = seg.frame_range(fps)
                spans.append(f"{first / fps:.2f}-{stop / fps:.2f} s (frames {first}-{stop - 1})")
        rows.append((cls, int(counts[k]), ", ".join(spans)))
    return rows


def contact_sheet(
    images: Sequence[np.ndarray] | np.ndarray,
    captions: Sequence[str] | None = None,
    ncols: int = 8,
    tile_side: int | None = 200,
    caption_color: tuple[int, int, int] = (255, 255, 0),
) -> np.ndarray:
    """Tiles images into one RGB uint8 sheet, each with an optional caption in its corner.

    Useful to look at a video's frames (e.g. every 10th, captioned with its frame number) before
    choosing segment boundaries.

    Args:
        images: arrays (H, W), (H, W, 1) or (H, W, 3) RGB, uint8 or uint16 (uint16 and single-channel
            images are stretched to their own 0.5-99.8 percentile range).
        captions: one string per image.
        ncols: tiles per row.
        tile_side: each image is scaled so its longer side is this; None keeps sizes (they must
            then agree).
        caption_color: RGB of the caption text.

    Returns:
        An (rows * H, ncols * W, 3) uint8 RGB array.
    """
    if len(images) == 0:
        raise ValueError("contact_sheet needs at least one image.")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images.")
    tiles = []
    for k, img in enumerate(images):
        tile = _to_rgb8(np.asarray(img))
        if tile_side is not None:
            h, w = tile.shape[:2]
            scale = tile_side / max(h, w)
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            tile = cv2.resize(
                tile, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp
            )
        if captions is not None:
            tile = np.ascontiguousarray(tile)
            font_scale = max(0.35, tile.shape[0] / 300)
            thickness = max(1, round(font_scale * 2))
            origin = (4, 4 + round(18 * font_scale))
            # A dark outline keeps the caption readable on bright and dark frames alike.
            for color, extra in (((0, 0, 0), 2), (caption_color, 0)):
                cv2.putText(
                    tile,
                    captions[k],
                    origin,
                    cv2.FONT_HERSHEY_SIMPLEX,
                    font_scale,
                    color,
                    thickness + extra,
                    cv2.LINE_AA,
                )
        tiles.append(tile)
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    ncols = max(1, min(ncols, len(tiles)))
    nrows = math.ceil(len(tiles) / ncols)
    sheet = np.zeros((nrows * th, ncols * tw, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, ncols)
        sheet[r * th : r * th + tile.shape[0], c * tw : c * tw + tile.shape[1]] = tile
    return sheet


def _to_rgb8(img: np.ndarray) -> np.ndarray:
    from cellkeras.io.display import to_display_rgb

    if img.ndim == 3 and img.shape[-1] not in (1, 3):
        raise ValueError(f"contact_sheet takes gray or RGB images, got shape {img.shape}.")
    return to_display_rgb(img)
