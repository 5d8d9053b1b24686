"""Video frames written as a class-folder tree, with `labels.csv` and the frame manifest.

The frame manifest
------------------
A class-folder tree of ordered images (video frames) carries `frames.csv` (`MANIFEST_NAME`) at
its top, which `cellkeras.data.sources.load_class_folders` reads so that splits keep the time
order (`cellkeras.data.splits.time_block_split`):

* a header row naming at least the columns ``filename``, ``sequence`` and ``frame`` (in any
  order; other columns are ignored), then one row per image;
* ``filename``: the image's path relative to the tree's top, with ``/``;
* ``sequence``: the name of the video (or other series) the image comes from; frames of
  different sequences are never neighbours;
* ``frame``: the image's position in its sequence, a number (the frame index as written by
  `write_class_folders`); only the order of the positions matters to a split.

The image's class is its folder, as in any class-folder tree (moving a file to another class
folder relabels it). Every image of the tree must have a row; rows for files that are gone
(frames deleted by hand) are ignored. `write_class_folders` writes the same two columns into
`labels.csv` (``filename,label,frame,sequence``), so the CSV route keeps the order too.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from cellkeras.data.imageset import ImageSet
from cellkeras.data.segments import CLASS_NAME
from cellkeras.io.errors import BadInputError
from cellkeras.io.files import replace_folder
from cellkeras.io.formats import sniff_format

MANIFEST_NAME = "frames.csv"
MANIFEST_COLUMNS = ("filename", "sequence", "frame")


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
    one row per image; filenames are relative to `out_dir` and use ``/``. For an ordered set
    (`imageset.order`, video frames) files are named by frame index, `labels.csv` gains
    ``frame,sequence`` columns and the frame manifest `frames.csv` is written (module
    docstring), so training from the tree splits by time blocks, not at random.

    Args:
        imageset: an in-memory set (uint8 or uint16 pixels). Sets of file paths or encoded bytes
            are written as they are (no re-encoding), keeping each image's own format.
        out_dir: the folder to create.
        image_format: "png", "jpg" or "tif" (what cv2.imwrite can write).
        overwrite: replace an existing non-empty `out_dir`.
        fps: with `imageset.order`, frame numbers are ``round(order * fps)``; without it they
            are the frames' ranks in time within their sequence. Unordered sets are numbered by
            position in the set.
        prefix: the file-name prefix and the manifest's sequence name; defaults to each image's
            `imageset.sequence`, else `imageset.name` (made filename-safe), else "image".

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
        if not CLASS_NAME.match(cls):
            raise ValueError(f"class name {cls!r} is not usable as a folder name.")
    stems = _stems(imageset, prefix)
    numbers = _frame_numbers(imageset, stems, fps)
    ordered = imageset.order is not None
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
            rel = f"{cls}/{stems[i]}_{int(numbers[i]):0{width}d}.{ext}"
            if rel in used:  # two images mapped to one frame number (e.g. two videos' sets merged)
                rel = f"{cls}/{stems[i]}_{int(numbers[i]):0{width}d}_{i}.{ext}"
            used.add(rel)
            if imageset.images is not None:
                _imwrite(tmp / rel, imageset.images[i])
            elif imageset.paths is not None:
                shutil.copyfile(imageset.paths[i], tmp / rel)
            else:
                (tmp / rel).write_bytes(imageset.encoded[i])
            rows.append((rel, cls, int(numbers[i]), stems[i]))
        _write_csv(
            tmp / "labels.csv",
            ["filename", "label", "frame", "sequence"][: 4 if ordered else 2],
            rows,
        )
        if ordered:
            _write_csv(tmp / MANIFEST_NAME, MANIFEST_COLUMNS, [(r, q, n) for r, _, n, q in rows])
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _stems(imageset: ImageSet, prefix: str | None) -> list[str]:
    """Each image's file-name prefix, which is also its sequence name in the manifest."""

    def safe(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "image"

    if prefix is None and imageset.sequence is not None:
        return [safe(str(name)) for name in imageset.sequence]
    return [safe(prefix or imageset.name or "image")] * len(imageset)


def _frame_numbers(imageset: ImageSet, stems: list[str], fps: float | None) -> np.ndarray:
    if imageset.order is None:
        return np.arange(len(imageset))
    order = np.asarray(imageset.order, dtype=np.float64)
    if fps:
        return np.rint(order * fps).astype(np.int64)
    numbers = np.zeros(len(order), np.int64)
    names = np.asarray(stems)
    for name in np.unique(names):
        here = np.flatnonzero(names == name)
        numbers[here] = np.unique(order[here], return_inverse=True)[1].reshape(-1)
    return numbers


def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(row[: len(header)] for row in rows)


def read_frame_manifest(root: str | os.PathLike) -> dict[str, tuple[str, float]] | None:
    """`{filename: (sequence, frame)}` from a tree's `frames.csv`, or None when it has none.

    Raises:
        BadInputError: naming `frames.csv` and the line of every bad row (missing columns,
            an empty filename or sequence, a frame that is no finite number, a repeated file).
    """
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise BadInputError(
            [(f"{path}:1", f"the header must name the columns {', '.join(MANIFEST_COLUMNS)}")],
            f"missing: {', '.join(missing)}; see cellkeras.data.frames for the manifest format",
        )
    at = [header.index(c) for c in MANIFEST_COLUMNS]
    entries: dict[str, tuple[str, float]] = {}
    problems = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        cells = [row[i].strip() if i < len(row) else "" for i in at]
        name, sequence, frame = cells[0].replace("\\", "/"), cells[1], cells[2]
        try:
            position = float(frame)
        except ValueError:
            position = float("nan")
        if not name or not sequence:
            problems.append((f"{path}:{number}", f"empty filename or sequence in {row!r}"))
        elif not np.isfinite(position):
            problems.append((f"{path}:{number}", f"frame {frame!r} is not a number"))
        elif name in entries:
            problems.append((f"{path}:{number}", f"{name!r} is listed twice"))
        else:
            entries[name] = (sequence, position)
    if problems:
        raise BadInputError(problems)
    return entries


def _sniff_format(data: bytes) -> str | None:
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


def time_ranks(imageset: ImageSet) -> list[int] | None:
    """Each class's place in time (class index -> rank) when the frames order the classes;
    None when they do not (`time_order` says why)."""
    return time_order(imageset)[0]


def time_order(imageset: ImageSet) -> tuple[list[int] | None, str]:
    """The classes' ranks in time, or None and the reason they have none.

    The classes are stages when, in every sequence, each class's frames span one stretch of
    time that no other class's frames enter, and every sequence that holds two classes puts
    them in the same order (so together the sequences give one order of all the classes).
    """
    import graphlib

    classes = imageset.classes
    if imageset.order is None:
        return None, "no frame order (no frame manifest or frame column)"
    labels, order = imageset.labels, np.asarray(imageset.order, np.float64)
    if not np.isfinite(order).all():
        return None, "frame positions that are not finite numbers"
    missing = sorted(set(range(len(classes))) - set(labels.tolist()))
    if missing:
        return None, f"no images of {', '.join(classes[c] for c in missing)}"
    sequences = imageset.sequence if imageset.sequence is not None else np.zeros(len(labels))
    sorter = graphlib.TopologicalSorter({c: set() for c in range(len(classes))})
    for name in np.unique(sequences):
        here = np.asarray(sequences == name)
        spans = sorted(
            (order[here & (labels == c)].min(), order[here & (labels == c)].max(), int(c))
            for c in np.unique(labels[here])
        )
        for (_, last, before), (first, _, after) in itertools.pairwise(spans):
            if last >= first:
                where = f" in sequence {name}" if imageset.sequence is not None else ""
                return None, f"{classes[before]} and {classes[after]} sharing time{where}"
            sorter.add(after, before)
    try:
        sorter.prepare()
    except graphlib.CycleError as error:
        cycle = " -> ".join(classes[c] for c in error.args[1])
        return None, f"sequences that order the classes differently ({cycle})"
    ranks = [0] * len(classes)
    rank = 0
    while sorter.is_active():
        ready = sorter.get_ready()
        if len(ready) != 1:
            names = ", ".join(sorted(classes[c] for c in ready))
            return None, f"no sequence that says which of {names} comes first"
        ranks[ready[0]] = rank
        rank += 1
        sorter.done(*ready)
    return ranks, ""
