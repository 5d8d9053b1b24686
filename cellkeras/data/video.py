"""Video time-lapses cut into classes by time ranges.

The seed's C. elegans workflow cut one time-lapse into stage classes by time ranges
(`gastrula` 32-82 s, `comma` 116-126 s, ...), saved every frame as an image and wrote a
`labels.csv`. This module does the same in three steps:

1. `parse_segments` turns a spec such as ``"gastrula=32:82,comma=116:126"`` into `Segment`s;
2. `load_video_segments` reads the video once, front to back, and keeps the frames inside the
   segments as an in-memory `ImageSet` (labels, `order` = frame time in seconds);
3. `write_class_folders` writes the class-folder tree and the seed's `labels.csv` at once.

Segment syntax
--------------
A spec is a comma-separated list of ``CLASS=START:END`` items::

    gastrula=32:82,comma=116:126,fold=140:187        # bare numbers: the `unit` argument
    gastrula=32s:82s,comma=812f:882f                 # per-number suffix: s = seconds, f = frames

* Ranges are half-open, ``START <= t < END``, in both units. In frames, ``0:10`` is frames 0-9;
  in seconds, frame ``i`` sits at ``i / fps`` seconds.
* Frame numbers start at 0 and must be integers; seconds may be fractional.
* A suffix applies to its own number; the two ends of one range must share a unit.
* A class may have several ranges (``comma=116:126,comma=300:310``); classes are numbered in the
  order of their first appearance.
* Ranges may not overlap, and ``START`` must be below ``END``.

A `Mapping` works too: ``{"gastrula": "32:82", "comma": [(116, 126), (300, 310)]}``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from cellkeras.data.imageset import ImageSet
from cellkeras.io.files import replace_folder

logger = logging.getLogger(__name__)

UNITS = ("seconds", "frames")
_SUFFIX_UNITS = {"s": "seconds", "f": "frames"}
_NUMBER = re.compile(r"^\s*(?P<value>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<suffix>[sf]?)\s*$")
# Class names end up as folder names, so keep them to characters every filesystem accepts.
_CLASS_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@dataclasses.dataclass(frozen=True)
class Segment:
    """One labelled, half-open time range of a video.

    Attributes:
        label: class name.
        start: first time (inclusive), in `unit`.
        end: end time (exclusive), in `unit`.
        unit: "seconds" or "frames".
    """

    label: str
    start: float
    end: float
    unit: str

    def frame_range(self, fps: float) -> tuple[int, int]:
        """The half-open frame-index range `[first, stop)` this segment covers at `fps`."""
        if self.unit == "frames":
            return int(self.start), int(self.end)
        # A tiny tolerance keeps "2.0 s at 5 fps" on frame 10 despite 2.0 * 5 = 9.999999...
        first = math.ceil(self.start * fps - 1e-6)
        stop = math.ceil(self.end * fps - 1e-6)
        return first, stop

    def describe(self) -> str:
        suffix = "s" if self.unit == "seconds" else "f"
        return f"{self.label}={self.start:g}{suffix}:{self.end:g}{suffix}"


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


def parse_segments(spec: str | Mapping | Sequence[Segment], unit: str = "seconds") -> list[Segment]:
    """Parses a segment spec into `Segment`s (syntax in the module docstring).

    Args:
        spec: ``"CLASS=START:END,..."``, a mapping ``{class: "START:END" | (start, end) | [those]}``,
            or already-parsed `Segment`s (checked and returned).
        unit: the unit of numbers without an ``s``/``f`` suffix: "seconds" or "frames".

    Returns:
        The segments in spec order, each with its unit resolved.

    Raises:
        ValueError: naming the offending segment, for bad syntax, an unknown unit, mixed units in
            one range, non-integer frame numbers, ``START >= END`` or overlapping ranges.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}.")
    segments: list[Segment] = []
    for label, text, raw in _spec_items(spec):
        segments.append(_parse_one(label, text, raw, unit))
    if not segments:
        raise ValueError(f"no segments in {spec!r}; expected e.g. 'gastrula=32:82,comma=116:126'.")
    # Ranges in different units can only be compared once fps is known (load_video_segments).
    for u in UNITS:
        _check_overlaps([s for s in segments if s.unit == u], key=lambda s: (s.start, s.end))
    return segments


def _spec_items(spec) -> Iterable[tuple[str, object, str]]:
    """Yields (label, range, raw text for messages) from any accepted spec form."""
    if isinstance(spec, str):
        for raw in spec.split(","):
            if not raw.strip():
                raise ValueError(f"empty segment in {spec!r} (stray comma?).")
            if raw.count("=") != 1:
                raise ValueError(f"segment {raw.strip()!r}: expected CLASS=START:END.")
            label, rng = raw.split("=")
            yield label.strip(), rng, raw.strip()
    elif isinstance(spec, Mapping):
        for label, value in spec.items():
            ranges = value if isinstance(value, list) else [value]
            for rng in ranges:
                yield str(label).strip(), rng, f"{label}={rng}"
    else:
        for seg in spec:
            if not isinstance(seg, Segment):
                raise ValueError(f"expected a spec string, a mapping or Segments, got {seg!r}.")
            yield seg.label, seg, seg.describe()


def _parse_one(label: str, rng: object, raw: str, default_unit: str) -> Segment:
    if not _CLASS_NAME.match(label):
        raise ValueError(
            f"segment {raw!r}: class name {label!r} must be letters, digits, '_', '.', '+' or '-' "
            "(it becomes a folder name)."
        )
    if isinstance(rng, Segment):
        start, end, unit = rng.start, rng.end, rng.unit
        if unit not in UNITS:
            raise ValueError(f"segment {raw!r}: unit must be one of {UNITS}, got {unit!r}.")
    elif isinstance(rng, str):
        parts = rng.split(":")
        if len(parts) != 2:
            raise ValueError(
                f"segment {raw!r}: expected START:END, e.g. 32:82, 32s:82s, 100f:180f."
            )
        ends = []
        for part in parts:
            m = _NUMBER.match(part)
            if not m:
                raise ValueError(
                    f"segment {raw!r}: {part.strip()!r} is not a number with an optional "
                    "'s' (seconds) or 'f' (frames) suffix."
                )
            ends.append((float(m["value"]), _SUFFIX_UNITS.get(m["suffix"])))
        units = {u for _, u in ends if u is not None}
        if len(units) > 1:
            raise ValueError(f"segment {raw!r}: both ends of a range must use the same unit.")
        unit = units.pop() if units else default_unit
        start, end = ends[0][0], ends[1][0]
    elif isinstance(rng, Sequence) and len(rng) == 2:
        try:
            start, end = float(rng[0]), float(rng[1])
        except (TypeError, ValueError):
            raise ValueError(f"segment {raw!r}: start and end must be numbers.") from None
        unit = default_unit
    else:
        raise ValueError(f"segment {raw!r}: expected 'START:END' or a (start, end) pair.")
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        raise ValueError(f"segment {raw!r}: times must be finite and >= 0.")
    if unit == "frames" and (start != int(start) or end != int(end)):
        raise ValueError(f"segment {raw!r}: frame numbers must be integers.")
    if start >= end:
        raise ValueError(f"segment {raw!r}: start {start:g} must be below end {end:g}.")
    return Segment(label=label, start=start, end=end, unit=unit)


def _check_overlaps(segments: Sequence[Segment], key) -> None:
    ordered = sorted(segments, key=key)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if key(b)[0] < key(a)[1]:
            raise ValueError(f"segments {a.describe()!r} and {b.describe()!r} overlap.")


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
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels}.")
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}.")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side}.")
    segs = parse_segments(segments, unit=unit)
    info = probe_video(path, fps=fps)
    path = info.path
    if info.fps <= 0:
        raise ValueError(
            f"video {path}: its metadata gives no frame rate; pass fps= (--fps on the command line)."
        )
    ranges = [s.frame_range(info.fps) for s in segs]
    pairs = sorted(zip(ranges, segs, strict=True), key=lambda p: p[0])
    for (ra, a), (rb, b) in zip(pairs, pairs[1:], strict=False):
        if rb[0] < ra[1]:
            raise ValueError(
                f"video {path}: segments {a.describe()!r} and {b.describe()!r} overlap "
                f"(frames {ra[0]}-{ra[1] - 1} and {rb[0]}-{rb[1] - 1} at {info.fps:g} fps)."
            )
    for (first, stop), seg in zip(ranges, segs, strict=True):
        if stop <= first:
            raise ValueError(
                f"video {path}: segment {seg.describe()!r} holds no frame at {info.fps:g} fps."
            )

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


def write_class_folders(
    imageset: ImageSet,
    out_dir: str | os.PathLike,
    image_format: str = "png",
    *,
    overwrite: bool = False,
    fps: float | None = None,
    prefix: str | None = None,
) -> Path:
    """Writes `out_dir/<class>/<prefix>_<frame>.<format>` and `out_dir/labels.csv` atomically.

    The tree is written into a temporary folder beside `out_dir` and renamed into place, so a
    crash never leaves a half-written `out_dir`. `labels.csv` has a ``filename,label`` header and
    one row per image; filenames are relative to `out_dir` and use ``/``.

    Args:
        imageset: an in-memory set (uint8 or uint16 pixels). Sets of file paths or encoded bytes
            are written as they are (no re-encoding), keeping each image's own format.
        out_dir: the folder to create.
        image_format: "png", "jpg" or "tif" (what cv2.imwrite can write).
        overwrite: replace an existing non-empty `out_dir`.
        fps: with `imageset.order`, names files by frame number ``round(order * fps)``; otherwise
            files are numbered by their position in the set.
        prefix: the file-name prefix; defaults to `imageset.name` (made filename-safe) or "image".

    Returns:
        `out_dir` as a `Path`.

    Raises:
        FileExistsError: `out_dir` exists, is not empty and `overwrite` is False.
        ValueError: an unsupported `image_format` or pixel type.
    """
    out_dir = Path(out_dir)
    fmt = image_format.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg", "tif", "tiff"):
        raise ValueError(f"image_format must be png, jpg or tif, got {image_format!r}.")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(
            f"{out_dir} exists and is not empty; pass overwrite=True to replace it."
        )
    if imageset.images is not None and imageset.images.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f"write_class_folders writes uint8 or uint16 pixels, got {imageset.images.dtype}."
        )
    for cls in imageset.classes:
        if not _CLASS_NAME.match(cls):
            raise ValueError(f"class name {cls!r} is not usable as a folder name.")
    stem = (
        re.sub(r"[^A-Za-z0-9_.-]+", "_", prefix or imageset.name or "image").strip("_") or "image"
    )
    if imageset.order is not None and fps:
        numbers = np.rint(np.asarray(imageset.order, dtype=np.float64) * fps).astype(np.int64)
    else:
        numbers = np.arange(len(imageset))
    width = max(6, len(str(int(numbers.max())))) if len(numbers) else 6

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        rows = []
        used: set[str] = set()
        for cls in imageset.classes:
            (tmp / cls).mkdir()
        for i in range(len(imageset)):
            cls = imageset.classes[int(imageset.labels[i])]
            if imageset.images is not None:
                ext = fmt
            elif imageset.paths is not None:
                ext = Path(imageset.paths[i]).suffix.lstrip(".") or fmt
            else:
                ext = _sniff_format(imageset.encoded[i]) or fmt
            rel = f"{cls}/{stem}_{int(numbers[i]):0{width}d}.{ext}"
            if rel in used:  # two images mapped to one frame number (e.g. two videos' sets merged)
                rel = f"{cls}/{stem}_{int(numbers[i]):0{width}d}_{i}.{ext}"
            used.add(rel)
            if imageset.images is not None:
                _imwrite(tmp / rel, imageset.images[i])
            elif imageset.paths is not None:
                shutil.copyfile(imageset.paths[i], tmp / rel)
            else:
                (tmp / rel).write_bytes(imageset.encoded[i])
            rows.append((rel, cls))
        with open(tmp / "labels.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            writer.writerows(rows)
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _sniff_format(data: bytes) -> str | None:
    from cellkeras.io.formats import sniff_format

    # The file extension of the bytes' own format, so they are written under the right name.
    kind = sniff_format(data)
    return {"jpeg": "jpg", "tiff": "tif"}.get(kind, kind)


def _imwrite(path: Path, image: np.ndarray) -> None:
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[-1] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[-1] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cv2.imwrite could not write {path}.")


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
