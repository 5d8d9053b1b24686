"""Video frames written as a class-folder tree, with `labels.csv`."""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from cellkeras.data.imageset import ImageSet
from cellkeras.data.segments import CLASS_NAME
from cellkeras.io.files import replace_folder


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
        if not CLASS_NAME.match(cls):
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
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    return None


def _imwrite(path: Path, image: np.ndarray) -> None:
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    elif image.ndim == 3 and image.shape[-1] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[-1] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cv2.imwrite could not write {path}.")
