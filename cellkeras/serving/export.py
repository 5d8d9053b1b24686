"""Versioned, atomic SavedModel export with serving signatures that TF Serving loads as is.

`export_model(model, "exports/cells", classes=[...], image_size=64, channels=3)` writes

```
exports/cells/
  3/                                  # the version: highest existing integer + 1 (first: 1)
    saved_model.pb, variables/        # the SavedModel (keras.export.ExportArchive)
    fingerprint.pb, assets/           #   written by TensorFlow
    assets.extra/
      tf_serving_warmup_requests      # TFRecord of PredictionLog protos TF Serving replays on load
    model.keras                       # the Keras model itself, for explain/detect/fine-tuning
    model_card.json                   # classes, channels, normalization, size, metrics, versions
```

Why `model.keras` sits beside `saved_model.pb`: TF Serving and `tf.saved_model.load` read only
`saved_model.pb`, `variables/`, `assets/` and `assets.extra/` and ignore other files, so the
version folder stays a valid servable, while one folder holds everything a user needs
(`cellkeras detect --model EXPORT_DIR/3` finds `model.keras` there). `assets.extra/` is kept for
what the server itself reads (the warmup file).

Why "max + 1" versions rather than timestamps: TF Serving serves the highest integer, and small
consecutive numbers are what its docs and users expect to type (`/versions/3`). Two processes that
pick the same number do not clash: each builds in its own `tempfile.mkdtemp` folder
`.tmp-<version>-<random>` beside the version folders (a dot-name TF Serving never takes for a
version; not named by the process id, which is 1 in every container sharing the volume), and the
final `os.rename` fails for the second, which then takes the next free number. The one catch: deleting the highest version and exporting
again reuses its number, which a running TF Serving that has already loaded it will not reload.

`export_model(..., versioned=False)` writes the same files at `export_dir` itself, for readers
that expect a SavedModel there (TFX's Evaluator and Pusher read `serving_model_dir`), built in
a temporary folder beside it and renamed into place.

The serving signatures and their in-graph preprocessing are in `cellkeras.serving.signatures`;
the warmup records in `cellkeras.serving.warmup`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import cellkeras
from cellkeras.io.files import write_atomically
from cellkeras.io.formats import MODEL_FILE
from cellkeras.io.images import NORMALIZATIONS, parse_image_size
from cellkeras.serving.signatures import (
    BYTES_INPUT,
    IMAGES_INPUT,
    SERVING_DEFAULT,
    SERVING_IMAGES,
    preprocess_bytes,
    resize_images,
    serving_outputs,
)
from cellkeras.serving.warmup import WARMUP_DIR, WARMUP_FILE, warmup_records, write_warmup_file

CARD_FILE = "model_card.json"
EXPORT_FORMAT = "cellkeras-export/1"
TMP_PREFIX = ".tmp-"

# Keys of the model card that describe the signatures; `metadata` may not override them, or the
# card would disagree with the graph.
_RESERVED_CARD_KEYS = frozenset(
    {"format", "version", "classes", "num_classes", "channels", "image_size", "normalization"}
    | {"signatures", "files", "versions", "created"}
)


def list_versions(export_dir: str | Path) -> list[int]:
    """The integer version folders of an export folder, ascending (TF Serving's view of it)."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        return []
    return sorted(int(p.name) for p in export_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(export_dir: str | Path) -> int:
    """Highest existing version + 1, or 1 for a new export folder."""
    versions = list_versions(export_dir)
    return versions[-1] + 1 if versions else 1


def _signature_description(image_size: Sequence[int], channels: int, k: int) -> dict[str, Any]:
    outputs = {
        "probabilities": {"dtype": "float32", "shape": [-1, k]},
        "class_index": {"dtype": "int64", "shape": [-1]},
        "class_name": {"dtype": "string", "shape": [-1]},
    }
    return {
        SERVING_DEFAULT: {
            "inputs": {BYTES_INPUT: {"dtype": "string", "shape": [-1]}},
            "outputs": outputs,
            "description": (
                "encoded PNG (8/16-bit), JPEG, BMP or GIF files; decoded, converted to "
                f"{channels} channel(s), normalized and resized to {list(image_size)} in the graph "
                "exactly as in training; TIFF is refused (decode it on the client and call "
                f'{SERVING_IMAGES}). REST: {{"instances": [{{"{BYTES_INPUT}": '
                '{"b64": "<base64 of the file>"}}]}'
            ),
        },
        SERVING_IMAGES: {
            "inputs": {IMAGES_INPUT: {"dtype": "float32", "shape": [-1, -1, -1, channels]}},
            "outputs": outputs,
            "description": (
                "float32 images already normalized to [0, 1] (cellkeras.data.read_image), any "
                f"size; resized to {list(image_size)} in the graph"
            ),
        },
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"model card value {value!r} of type {type(value).__name__} is not JSON")


def _model_card(
    version: int | None,
    classes: Sequence[str],
    image_size: tuple[int, int],
    channels: int,
    normalization: str,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": version,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "classes": list(classes),
        "num_classes": len(classes),
        "channels": channels,
        "image_size": list(image_size),
        "normalization": normalization,
        "input": (
            f"{channels}-channel images, float32 in [0, 1] by '{normalization}' normalization, "
            f"resized to {image_size[0]}x{image_size[1]} (height x width) with bilinear "
            "antialiased resizing"
        ),
        "metrics": {},
        "schedule": [],
        "signatures": _signature_description(image_size, channels, len(classes)),
        "files": {
            "saved_model": "saved_model.pb",
            "keras_model": MODEL_FILE,
            "warmup": f"{WARMUP_DIR}/{WARMUP_FILE}",
        },
        "versions": {
            "cellkeras": cellkeras.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    clash = sorted(_RESERVED_CARD_KEYS & set(metadata or {}))
    if clash:
        raise ValueError(
            f"metadata may not set {clash}: they describe the exported graph; pass them as "
            "export_model arguments"
        )
    card.update(metadata or {})
    return card


def _check_arguments(
    model: keras.Model, classes: Sequence[str], image_size: Any, channels: int, normalization: str
) -> tuple[int, int]:

    size = parse_image_size(image_size)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; known: {NORMALIZATIONS}")
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names, got {list(classes)}")
    # Subclassed models that were never called have no symbolic inputs/outputs to check.
    outputs = getattr(model, "outputs", None) or []
    inputs = getattr(model, "inputs", None) or []
    if len(outputs) > 1:
        raise ValueError(f"the model must have one output (probabilities), has {outputs}")
    k = outputs[0].shape[-1] if outputs else None
    if k is not None and k != len(classes):
        raise ValueError(f"the model has {k} outputs but {len(classes)} classes were given")
    c = inputs[0].shape[-1] if inputs else None
    if c is not None and c != channels:
        raise ValueError(f"the model takes {c} channels but channels={channels}")
    return size


def export_model(
    model: keras.Model,
    export_dir: str | Path,
    *,
    classes: Sequence[str],
    image_size: int | tuple[int, int] | str,
    channels: int,
    normalization: str = "range",
    metadata: Mapping[str, Any] | None = None,
    version: int | None = None,
    versioned: bool = True,
) -> Path:
    """Writes `export_dir/<version>/`: SavedModel, warmup requests, `model.keras`, model card.

    The folder appears whole or not at all: everything is written to a fresh temporary folder
    beside it (`tempfile.mkdtemp`), which is renamed into place at the end and removed on any
    failure.

    Args:
        model: a single-input Keras model taking float32 (B, H, W, channels) in [0, 1] and
            returning probabilities (B, len(classes)).
        export_dir: the folder TF Serving watches (`--model_base_path`); created when missing.
        classes: class names, in the order of the model's outputs.
        image_size: the size the model was trained at: int, (height, width) or "HxW".
        channels: the model's input channels.
        normalization: the training normalization, "range" or "percentile".
        metadata: merged into `model_card.json` (e.g. `metrics`, `schedule`, `model`, `run_dir`);
            must be JSON-serializable and may not override the keys that describe the graph.
        version: the version number; None takes the highest existing one + 1 (1 when none).
        versioned: False writes the SavedModel at `export_dir` itself (no version folder; the
            card's `version` is null), replacing an earlier export there.

    Returns:
        The version folder (`export_dir` itself when not `versioned`).

    Raises:
        ValueError: for arguments that disagree with the model or each other.
        FileExistsError: when an explicitly requested `version` already exists, or, unversioned,
            when `export_dir` holds files that are not an export.
    """
    size = _check_arguments(model, classes, image_size, channels, normalization)
    export_dir = Path(export_dir)
    if not versioned:
        if version is not None:
            raise ValueError("version numbers a versioned export; pass versioned=True")
        _check_replaceable(export_dir)
        card = _model_card(None, classes, size, channels, normalization, metadata)
        export_dir.parent.mkdir(parents=True, exist_ok=True)
        with _build_folder(export_dir.parent, f".{export_dir.name}{TMP_PREFIX}") as tmp:
            _write_export(model, tmp, card, list(classes), size, channels, normalization)
            return _publish_unversioned(tmp, export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    auto_version = version is None
    version = next_version(export_dir) if auto_version else int(version)
    if version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version}")
    if (export_dir / str(version)).exists():
        raise FileExistsError(f"{export_dir / str(version)} already exists")
    card = _model_card(version, classes, size, channels, normalization, metadata)
    with _build_folder(export_dir, f"{TMP_PREFIX}{version}-") as tmp:
        _write_export(model, tmp, card, list(classes), size, channels, normalization)
        return _publish(tmp, export_dir, version, auto_version, card)


@contextlib.contextmanager
def _build_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """A new, uniquely named folder in `parent` to build an export in, removed on the way out
    (after a successful rename it no longer exists; otherwise nothing half-written stays).

    `mkdtemp`, not a name from the process id: processes in different containers are all
    PID 1, and one that cleared "its" leftover folder would delete another's build."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    # mkdtemp makes the folder private (0700); the published export must be as readable as any
    # folder created here (TF Serving often runs as another user).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_export(
    model: keras.Model,
    folder: Path,
    card: dict[str, Any],
    classes: list[str],
    size: tuple[int, int],
    channels: int,
    normalization: str,
) -> None:
    _write_saved_model(model, folder, classes, size, channels, normalization)
    model.save(folder / MODEL_FILE)
    write_warmup_file(folder / WARMUP_DIR / WARMUP_FILE, warmup_records(size, channels))
    _write_card(folder / CARD_FILE, card)


def _check_replaceable(target: Path) -> None:
    """An unversioned export replaces an earlier export or an empty folder, nothing else."""
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{target} is a file, not a folder for a SavedModel")
    if any(target.iterdir()) and not (target / "saved_model.pb").is_file():
        raise FileExistsError(
            f"{target} holds files but no saved_model.pb: not replacing a folder that is not an "
            "export (pass an empty or new folder)"
        )


def _publish_unversioned(tmp: Path, target: Path) -> Path:
    """Renames the finished folder to `target`, moving an earlier export out of the way first
    (and back if the rename fails): readers find the old export or the new, never a mix."""
    _check_replaceable(target)
    if not target.exists() or not any(target.iterdir()):
        os.replace(tmp, target)  # an empty folder is replaced, which loses nothing
        return target
    with _build_folder(target.parent, f".{target.name}.old-") as old:
        os.rename(target, old / target.name)
        try:
            os.rename(tmp, target)
        except OSError:
            os.rename(old / target.name, target)
            raise
    return target


def _write_card(path: Path, card: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(card, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _publish(tmp: Path, export_dir: Path, version: int, auto_version: bool, card: dict) -> Path:
    """Renames the finished folder into place; an automatic version moves past a concurrent one."""
    while True:
        target = export_dir / str(version)
        try:
            # rename() never merges: it fails when another export took `target` meanwhile
            # (an empty leftover folder is replaced, which loses nothing).
            os.rename(tmp, target)
            return target
        except OSError:
            if not auto_version or not target.exists():
                raise
            version = max(version, *list_versions(export_dir)) + 1
            card["version"] = version
            _write_card(tmp / CARD_FILE, card)


def _write_saved_model(
    model: keras.Model,
    path: Path,
    classes: list[str],
    image_size: tuple[int, int],
    channels: int,
    normalization: str,
) -> None:
    class_names = tf.constant(classes, tf.string)

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        images = preprocess_bytes(image_bytes, image_size, channels, normalization)
        return serving_outputs(model(images, training=False), class_names)

    def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        resized = resize_images(images, image_size)
        return serving_outputs(model(resized, training=False), class_names)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_DEFAULT,
        serve_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)],
    )
    archive.add_endpoint(
        SERVING_IMAGES,
        serve_images,
        input_signature=[
            tf.TensorSpec([None, None, None, channels], tf.float32, name=IMAGES_INPUT)
        ],
    )
    archive.write_out(str(path), verbose=False)


# --- Calibrated detection parameters -----------------------------------------------------------

# A bare `.keras` file has no card: its calibrated detection section lives in
# `<stem>.detection.json` beside it (`cells.keras` -> `cells.detection.json`).
DETECTION_SIDECAR_SUFFIX = ".detection.json"


def detection_sidecar(model_file: str | Path) -> Path:
    """The sidecar file holding a bare `.keras` file's calibrated `detection` section."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.stem + DETECTION_SIDECAR_SUFFIX)


def update_card(version_dir: str | Path, **sections: Any) -> dict[str, Any]:
    """Sets top-level `sections` (e.g. `detection={...}`) of a version folder's model card.

    The card is rewritten atomically (a temporary file renamed over it), so a reader (TF
    Serving's sidecar tooling, a concurrent `cellkeras detect`) never sees half a card. The
    keys that describe the exported graph may not be changed.

    Returns:
        The new card.

    Raises:
        FileNotFoundError: when `version_dir` has no model card.
        ValueError: for a reserved key.
    """
    path = Path(version_dir) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not an export version folder")
    clash = sorted(_RESERVED_CARD_KEYS & set(sections))
    if clash:
        raise ValueError(f"{path}: {clash} describe the exported graph and cannot be updated")
    card = {**json.loads(path.read_text(encoding="utf-8")), **sections}
    write_json_atomic(path, card)
    return card


def write_json_atomic(path: str | Path, document: Mapping[str, Any]) -> None:
    """Writes `document` as JSON to `path` atomically (`cellkeras.io.files.write_atomically`)."""
    text = json.dumps(document, indent=2, default=_json_default) + "\n"
    write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
