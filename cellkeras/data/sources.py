"""File-based sources: class-folder trees and CSV label files, and the check that every image
they name can be used before training starts."""

from __future__ import annotations

import csv
import dataclasses
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cellkeras.data.dim_images import range_used, warn_if_dim
from cellkeras.data.frames import MANIFEST_NAME, read_frame_manifest
from cellkeras.data.imageset import ImageSet
from cellkeras.io.errors import BadInputError
from cellkeras.io.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    IMAGE_EXTENSIONS,
    Channels,
    ImageError,
    decode_raw,
    normalize,
    parse_channels,
    select_channels,
)

# Folder names that mark a pre-made split (the blood-cell layout uses TRAIN and TEST).
SPLIT_FOLDER_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_class_folders(
    root: str | Path,
    classes: Sequence[str] | None = None,
    skip_bad_images: bool = False,
) -> ImageSet:
    """Reads a tree `root/<class>/<image>`, or `root/<split>/<class>/<image>`.

    The blood-cell layout `images/{TRAIN,TEST}/{CLASS}/*.jpeg` is the second form: when every
    sub-folder of `root` is named like a split (train, val, validation, test; any case), the
    images keep that split in `ImageSet.split`.

    A tree with a frame manifest (`frames.csv`, as `cellkeras video-to-folders` writes; format
    in `cellkeras.data.frames`) is ordered: `ImageSet.order` and `ImageSet.sequence` come from
    it, and `split_imageset` then cuts time blocks with guard gaps instead of sampling at random.

    Args:
        root: the tree's top folder.
        classes: class names in label order; default: the sorted folder names.
        skip_bad_images: leave out empty class folders instead of raising. A class left out
            this way moves the label index of every class after it down by one: it is named in
            a warning, in `ImageSet.dropped_classes` and in `skipped` (the trainer's
            skipped.json).

    Raises:
        BadInputError: a missing root, no class folders, an empty class folder, a class
            folder missing from `classes`, a bad manifest row, or an image the manifest lacks.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInputError([(str(root), "not a folder")])
    top = _class_folders(root)
    split_folders = {p: SPLIT_FOLDER_NAMES.get(p.name.lower()) for p in top}
    if top and all(split_folders.values()):
        layout = [(split_folders[p], p) for p in top]
    else:
        layout = [(None, root)]

    found: dict[str, list[tuple[Path, str | None]]] = {}
    problems: list[tuple[str, str]] = []
    for split, folder in layout:
        for class_dir in _class_folders(folder):
            files = _image_files(class_dir)
            if not files:
                problems.append((str(class_dir), "class folder holds no image files"))
            found.setdefault(class_dir.name, []).extend((f, split) for f in files)
    if not found:
        raise BadInputError([(str(root), "no class folders (expected root/<class>/<images>)")])

    names = list(classes) if classes is not None else sorted(found)
    unknown = sorted(set(found) - set(names))
    problems += [(str(root / n), "class folder not among the given classes") for n in unknown]
    empty = [n for n in names if not found.get(n)]
    problems += [(str(root / n), "class has no images at all") for n in empty if n not in found]
    if problems and not skip_bad_images:
        raise BadInputError(problems, "Pass skip_bad_images (--skip_bad_images) to leave them out.")

    skipped = list(problems)
    if empty:
        names = [n for n in names if n not in empty]
        # One entry per dropped class, saying what dropping it did, instead of the folder's.
        skipped = [(w, why) for w, why in skipped if Path(w).name not in empty]
        skipped += _drop_classes(root, empty, names)
    paths, labels, splits = [], [], []
    for label, name in enumerate(names):
        for path, split in found.get(name, []):
            paths.append(str(path))
            labels.append(label)
            splits.append(split)
    order, sequence = _manifest_positions(root, paths)
    return ImageSet(
        classes=names,
        labels=np.array(labels),
        paths=paths,
        order=order,
        sequence=sequence,
        split=np.array(splits, dtype=object) if layout[0][0] is not None else None,
        skipped=skipped,
        dropped_classes=list(empty),
        name=root.name,
    )


def _drop_classes(root: Path, empty: list[str], kept: list[str]) -> list[tuple[str, str]]:
    """Warns about classes left out for having no images; their `skipped` entries."""
    indices = ", ".join(f"{i}={name}" for i, name in enumerate(kept))
    message = (
        f"{root}: class(es) {', '.join(repr(n) for n in empty)} have no images and are left "
        f"out (skip_bad_images); the label indices are now {indices}, so a model trained on "
        "this data does not predict them and its class indices differ from the folder list"
    )
    warnings.warn(message, stacklevel=3)
    return [
        (str(root / name), f"class {name!r} dropped: no images; labels now {indices}")
        for name in empty
    ]


def _manifest_positions(root: Path, paths: list[str]):
    """(order, sequence) of `paths` from the tree's frame manifest, or (None, None)."""
    manifest = read_frame_manifest(root)
    if manifest is None:
        return None, None
    relative = [Path(p).relative_to(root).as_posix() for p in paths]
    unlisted = [
        (p, f"not listed in {MANIFEST_NAME}")
        for p, r in zip(paths, relative, strict=True)
        if r not in manifest
    ]
    if unlisted:
        raise BadInputError(
            unlisted,
            f"{root / MANIFEST_NAME} orders the frames of this tree; add a row for each image "
            "(filename,sequence,frame), or delete it to split the images at random",
        )
    order = np.array([manifest[r][1] for r in relative], dtype=np.float64)
    sequence = np.array([manifest[r][0] for r in relative], dtype=object)
    return order, sequence


def load_labels_csv(
    csv_path: str | Path,
    image_root: str | Path | None = None,
    classes: Sequence[str] | None = None,
    skip_bad_images: bool = False,
) -> ImageSet:
    """Reads a `filename,label` CSV (the seed's labels.csv); a header row is optional.

    Labels are class names, or integer indices into `classes`. Filenames are relative to
    `image_root` (default: the CSV's folder) and may not escape it.

    Ordered images (video frames): a header row ``filename,label,frame[,sequence]`` (extra
    columns in any order after the first two) gives each image's position in its sequence
    (`ImageSet.order`, any numbers; only their order counts) and the sequence's name
    (`ImageSet.sequence`, default one sequence); `split_imageset` then cuts time blocks with
    guard gaps instead of sampling at random. `cellkeras video-to-folders` writes such a file.

    Raises:
        BadInputError: naming the CSV row of each missing file, path escaping the image root,
            empty field, label out of range, or missing or non-numeric frame.
    """
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root is not None else csv_path.parent
    if not csv_path.is_file():
        raise BadInputError([(str(csv_path), "CSV file not found")])
    resolved_root = root.resolve()
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    columns = {}
    if header[:2] in (["filename", "label"], ["file", "label"]):
        columns = {name: i for i, name in enumerate(header) if name in ("frame", "sequence")}
        rows, first_row = rows[1:], 2
    else:
        first_row = 1

    problems: list[tuple[str, str]] = []
    entries: list[tuple[str, str, str, float, str]] = []  # where, path, label, frame, sequence
    for number, row in enumerate(rows, start=first_row):
        where = f"{csv_path}:{number}"
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            problems.append((where, f"expected 'filename,label', got {row!r}"))
            continue
        frame, sequence = _csv_position(row, columns)
        path = (root / row[0].strip()).resolve()
        if not path.is_relative_to(resolved_root):
            problems.append((where, f"path {row[0]!r} escapes the image root {root}"))
        elif not path.is_file():
            problems.append((where, f"image {row[0]!r} not found under {root}"))
        elif frame is not None and not np.isfinite(frame):
            problems.append((where, f"the frame column is empty or not a number in {row!r}"))
        else:
            entries.append((where, str(path), row[1].strip(), frame, sequence))

    raw_labels = [entry[2] for entry in entries]
    numeric = bool(raw_labels) and all(r.lstrip("-").isdigit() for r in raw_labels)
    if classes is not None:
        names = list(classes)
    elif numeric:
        names = [str(i) for i in range(max(int(r) for r in raw_labels) + 1)]
    else:
        names = sorted(set(raw_labels))
    index = {name: i for i, name in enumerate(names)}
    kept, labels = [], []
    for entry in entries:
        where, raw = entry[0], entry[2]
        if numeric:
            label = int(raw)
            if not 0 <= label < len(names):
                problems.append((where, f"label {label} out of range for {len(names)} classes"))
                continue
        elif raw in index:
            label = index[raw]
        else:
            problems.append((where, f"label {raw!r} is not one of the classes {names}"))
            continue
        kept.append(entry)
        labels.append(label)
    if problems and not skip_bad_images:
        raise BadInputError(problems, "Pass skip_bad_images (--skip_bad_images) to leave them out.")
    if not kept:
        raise BadInputError([(str(csv_path), "no usable rows")])
    ordered = "frame" in columns
    return ImageSet(
        classes=names,
        labels=np.array(labels),
        paths=[entry[1] for entry in kept],
        order=np.array([entry[3] for entry in kept], np.float64) if ordered else None,
        sequence=np.array([entry[4] for entry in kept], dtype=object) if ordered else None,
        skipped=problems,
        name=csv_path.stem,
    )


def _csv_position(row: list[str], columns: dict[str, int]) -> tuple[float | None, str]:
    """(frame, sequence) of a CSV row: (None, "") without a frame column, NaN for a bad frame."""
    if "frame" not in columns:
        return None, ""
    cell = row[columns["frame"]].strip() if columns["frame"] < len(row) else ""
    try:
        frame = float(cell)
    except ValueError:
        frame = float("nan")
    at = columns.get("sequence")
    sequence = row[at].strip() if at is not None and at < len(row) else ""
    return frame, sequence


def check_images(
    imageset: ImageSet,
    channels: Channels = None,
    skip_bad_images: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    workers: int = 4,
    verbose: bool = True,
    normalization: str | None = None,
) -> tuple[ImageSet, int]:
    """Decodes every stored image once, so bad input fails before training, not mid-epoch.

    `channels` is what `select_channels` takes, or a string for `parse_channels` (`"0,2"`).
    With `normalization` ("range" or "percentile") each image is normalized too, so one the
    pipeline would refuse (a float image outside [0, 1] under "range", NaN) is found here.

    Returns:
        The image set (without the bad images when `skip_bad_images`, which are then listed in
        `skipped`) and the channel count the pipeline will produce. With `channels=None` and a
        mix of grey and RGB files, RGB wins (grey is replicated).

    Raises:
        BadInputError: every bad image with its reason, unless `skip_bad_images`.
    """
    channels = parse_channels(channels)
    if imageset.images is not None:
        if imageset.images.ndim != 4:
            raise BadInputError(
                [(imageset.name, f"images array has shape {imageset.images.shape}")]
            )
        sample = select_channels(imageset.images[:1][0], channels, imageset.name)
        return imageset, sample.shape[-1]

    stored = imageset.paths if imageset.paths is not None else imageset.encoded
    names = imageset.paths or [f"{imageset.name} record {i}" for i in range(len(stored))]

    def probe(i: int) -> tuple[int, str | None, float | None]:
        try:
            data = Path(stored[i]).read_bytes() if imageset.paths is not None else stored[i]
            pixels = select_channels(decode_raw(data, max_pixels, min_side, names[i]), channels)
            if normalization is not None:
                normalize(pixels, normalization, names[i])
            return pixels.shape[-1], None, range_used(pixels)
        except ImageError as err:
            return 0, err.reason, None
        except OSError as err:
            return 0, f"cannot be read ({err})", None

    import keras  # deferred: listing a folder should not load TensorFlow

    progress = keras.utils.Progbar(len(stored), unit_name="image") if verbose else None
    results = []
    # OpenCV and tifffile release the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(probe, range(len(stored))):
            results.append(result)
            if progress is not None and (len(results) % 64 == 0 or len(results) == len(stored)):
                progress.update(len(results))
    bad = [(names[i], why) for i, (_, why, _) in enumerate(results) if why is not None]
    if bad and not skip_bad_images:
        raise BadInputError(bad, "Pass skip_bad_images (--skip_bad_images) to leave them out.")
    good = [i for i, (_, why, _) in enumerate(results) if why is None]
    if not good:
        raise BadInputError(bad or [(imageset.name, "no images")])
    if normalization == "range":
        warn_if_dim([results[i][2] for i in good], imageset.name)
    counts = {results[i][0] for i in good}
    if len(counts) > 1 and counts != {1, 3}:
        raise BadInputError(
            [(imageset.name, f"images have different channel counts {sorted(counts)}")],
            "Pass channels (an int or channel indices) so every image converts to the same.",
        )
    checked = imageset.subset(good) if bad else imageset
    checked = dataclasses.replace(checked, skipped=list(imageset.skipped) + bad)
    lost = sorted(
        set(imageset.classes[i] for i in imageset.labels)
        - set(checked.classes[i] for i in checked.labels)
    )
    if lost:
        raise BadInputError([(c, "every image of this class was bad") for c in lost])
    return checked, max(counts)


SOURCE_KINDS = ("synthetic", "folders", "csv", "tfrecords", "embryo", "nuclei")


def open_source(
    source: str = "auto",
    *,
    data_dir: str | None = None,
    labels_csv: str | None = None,
    image_root: str | None = None,
    tfrecords: str | None = None,
    nuclei_sources: str = "ndev",
    num_images: int = 3000,
    image_size: int = 96,
    difficulty: float = 1.0,
    channels: Channels | str = None,
    seed: int = 0,
    skip_bad_images: bool = False,
    normalization: str | None = None,
) -> ImageSet:
    """Opens any source by kind; "auto" picks it from the arguments given (a folder tree, a CSV,
    TFRecords, else the synthetic cells). The trainer and every command share this.

    `num_images`, `image_size` and `difficulty` shape the synthetic cells; `channels` their
    colour (and the embryo frames'). The packaged samples need their packages installed;
    `nuclei_sources` names the labelled nuclei "nuclei" pools (`multi_source_patches`); with
    `normalization="frame_percentile"` their frames are stretched before the patches are cut.
    `channels` may be channel indices (a tuple, or a string such as ``"0,2"``, checked by
    `parse_channels`); sources that make their images then make them in their default colour,
    and the indices are picked later (`check_images`, `make_dataset`).
    """
    channels = parse_channels(channels)
    count = channels if isinstance(channels, int) else None
    if source == "auto":
        source = (
            "folders"
            if data_dir
            else "csv"
            if labels_csv
            else "tfrecords"
            if tfrecords
            else "synthetic"
        )
    if source not in SOURCE_KINDS:
        raise ValueError(f"unknown data source {source!r}; known: {', '.join(SOURCE_KINDS)}")
    if source == "folders":
        return load_class_folders(data_dir, skip_bad_images=skip_bad_images)
    if source == "csv":
        return load_labels_csv(labels_csv, image_root, skip_bad_images=skip_bad_images)
    if source == "tfrecords":
        from cellkeras.data.tfrecord import load_tfrecords

        return load_tfrecords(tfrecords)
    if source == "embryo":
        from cellkeras.data.samples import embryo_stages

        return embryo_stages(channels=count or 1)
    if source == "nuclei":
        from cellkeras.data.nuclei_sources import multi_source_patches

        return multi_source_patches(
            nuclei_sources, seed=seed, frame_normalize=normalization == "frame_percentile"
        )
    from cellkeras.data.synthetic import generate_cells

    return generate_cells(
        num_images, image_size, seed=seed, channels=count or 3, difficulty=difficulty
    )
