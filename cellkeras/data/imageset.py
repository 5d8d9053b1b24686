"""`ImageSet`: the one in-memory description of a labelled image collection.

Every source (class folders, CSV, TFRecord, video, synthetic, packaged samples) returns an
`ImageSet`; `make_dataset` turns one into a `tf.data.Dataset`. Images are held in exactly one
of three ways: file paths (decoded lazily by the pipeline), encoded bytes (TFRecords), or an
in-memory pixel array (synthetic data, video frames).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass
class ImageSet:
    """A labelled image collection.

    Attributes:
        classes: class names; `labels` index into this list.
        labels: int64 array (N,) of class indices.
        paths: N image file paths, or None.
        encoded: N encoded images (PNG/JPEG/TIFF bytes, as TFRecords hold them), or None.
        images: array (N, H, W, C) of uint8, uint16 or float32 pixels, or None.
        boxes: optional per-image float32 arrays (K, 4) of `[x_min, y_min, x_max, y_max]` pixels.
        box_labels: optional per-image int arrays (K,) naming each box's kind (source-specific;
            the synthetic generator documents its codes).
        groups: optional int array (N,) of split groups: images sharing a group always land on the
            same side of a split (video frames of one time block, tiles of one slide).
        order: optional float array (N,) giving each image's position in its sequence: the
            frame time in seconds for in-memory video, the frame index for files named in a
            frame manifest (`frames.csv`) or a CSV's `frame` column. Splits of ordered data cut
            contiguous time blocks with guard gaps instead of sampling at random
            (`cellkeras.data.splits.time_block_split`).
        sequence: optional array (N,) of sequence names (the video each frame comes from), so
            positions are compared only within one sequence; None: one sequence.
        split: optional array (N,) of "train" / "val" / "test" given by the source (blood-cell
            layout's TRAIN/TEST folders); `split_imageset` honours it.
        skipped: (path or row, reason) for inputs left out under `skip_bad_images`.
        frame_normalized: the images are patches already stretched by the percentiles of the
            frame each was cut from (stored as uint16, [0, 1] scaled by 65535), as the
            "frame_percentile" normalization asks; the pipeline then only maps them to [0, 1].
        dropped_classes: classes a source left out under `skip_bad_images` because they had no
            images; `classes` no longer holds them, so label indices after them moved down.
        name: a short description for logs and galleries.
    """

    classes: list[str]
    labels: np.ndarray
    paths: list[str] | None = None
    encoded: list[bytes] | None = None
    images: np.ndarray | None = None
    boxes: list[np.ndarray] | None = None
    box_labels: list[np.ndarray] | None = None
    groups: np.ndarray | None = None
    order: np.ndarray | None = None
    sequence: np.ndarray | None = None
    split: np.ndarray | None = None
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    dropped_classes: list[str] = dataclasses.field(default_factory=list)
    name: str = ""
    frame_normalized: bool = False

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        storages = [s for s in (self.paths, self.encoded, self.images) if s is not None]
        if len(storages) != 1:
            raise ValueError("ImageSet needs exactly one of `paths`, `encoded` or `images`.")
        n = len(self.labels)
        if len(self) != n:
            raise ValueError(f"ImageSet has {len(self)} images but {n} labels.")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            bad = int(self.labels[(self.labels < 0) | (self.labels >= len(self.classes))][0])
            raise ValueError(
                f"label {bad} is out of range for {len(self.classes)} classes {self.classes}."
            )
        for field in ("boxes", "box_labels", "groups", "order", "sequence", "split"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(f"ImageSet.{field} has {len(value)} entries for {n} images.")

    def __len__(self) -> int:
        for storage in (self.paths, self.encoded, self.images):
            if storage is not None:
                return len(storage)
        return 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """The images at `indices`, with every per-image field kept in step."""
        idx = np.asarray(indices, dtype=np.int64)

        def take(value):
            if value is None:
                return None
            if isinstance(value, np.ndarray):
                return value[idx]
            return [value[i] for i in idx]

        return dataclasses.replace(
            self,
            labels=self.labels[idx],
            paths=take(self.paths),
            encoded=take(self.encoded),
            images=take(self.images),
            boxes=take(self.boxes),
            box_labels=take(self.box_labels),
            groups=take(self.groups),
            order=take(self.order),
            sequence=take(self.sequence),
            split=take(self.split),
            skipped=list(self.skipped),
        )
