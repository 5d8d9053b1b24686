"""One way to load a model for inference, shared by `classify`, `explain` and `detect`.

```
model, info = load_model_for_inference("exports/cells")      # export folder: highest version
model, info = load_model_for_inference("exports/cells/3")    # one version folder
model, info = load_model_for_inference("runs/x/model.keras", classes=["a", "b"])
batch = load_images(["a.png", "b.tif"], info)                 # float32 (N, H, W, C) in [0, 1]
```

What `info` knows depends on what the path holds:

* an export (or version) folder: everything, from `model_card.json`;
* a trainer run folder, or a `.keras` file inside one: classes and the final training size from
  the `metrics.json` beside it, channels from the model;
* a bare `.keras` file: channels from the model only. Classes are then unknown (printed as
  indices unless `classes=` is given) and images keep their own size unless `image_size=` is
  given.

`info.detection` is the calibrated detection section `cellkeras calibrate` froze: the card's
`detection` key for an export, or `<stem>.detection.json` beside a `.keras` file (a run
folder's or a bare one); None when the model was never calibrated.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellkeras.io.formats import MODEL_FILE
from cellkeras.io.images import (
    DEFAULT_MIN_SIDE,
    ImageError,
    decode_raw,
    normalize,
    parse_image_size,
    read_image_bytes,
    select_channels,
)

RUN_METRICS_FILE = "metrics.json"
# The trainer writes its RunConfig here (trainer/task.py); `data.normalization` is read back.
RUN_CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a caller needs to feed a loaded model and read its answers.

    Attributes:
        classes: class names in output order, or None when the model file does not say.
        num_classes: number of output units.
        image_size: (height, width) the model was trained at and images are resized to, or None
            to run each image at its own size.
        channels: input channels the model takes (None when the model leaves it open).
        normalization: "range" or "percentile", as in `cellkeras.io.images.normalize`.
        min_side: the smallest image side the model can see anything in: the total
            downsampling of its last feature map (at least `DEFAULT_MIN_SIDE`).
        source: the file or folder the model came from.
        model_file: the `.keras` file that was loaded.
        detection: the calibrated detection parameters (`threshold`, `workflow`,
            `calibrated_on`, ...) from the card or the `.detection.json` sidecar, or None.
    """

    classes: list[str] | None
    num_classes: int
    image_size: tuple[int, int] | None
    channels: int | None
    normalization: str = "range"
    min_side: int = DEFAULT_MIN_SIDE
    source: str = ""
    model_file: str = ""
    detection: dict[str, Any] | None = None

    def class_names(self) -> list[str]:
        """Class names, or the output indices as strings when the names are unknown."""
        if self.classes is not None:
            return list(self.classes)
        return [str(i) for i in range(self.num_classes)]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _run_metadata(folder: Path) -> dict[str, Any]:
    """A trainer run folder's metrics, with the normalization its `config.json` trained with
    (the metrics do not repeat it, and a model fed otherwise sees other pixels)."""
    meta = _read_json(folder / RUN_METRICS_FILE)
    data = _read_json(folder / RUN_CONFIG_FILE).get("data", {})
    if "normalization" not in meta and isinstance(data, dict) and "normalization" in data:
        meta["normalization"] = data["normalization"]
    return meta


def _locate(path: Path) -> tuple[Path, dict[str, Any]]:
    """The `.keras` file under `path` and the metadata (card or run metrics) found beside it."""
    from cellkeras.serving.check import resolve_version_dir
    from cellkeras.serving.export import CARD_FILE

    if path.is_file():
        if path.suffix != ".keras":
            raise ValueError(
                f"{path} is not a model: expected an export folder, a version folder, a run "
                "folder or a .keras file"
            )
        return path, _run_metadata(path.parent)
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    if (path / MODEL_FILE).is_file() and not (path / "saved_model.pb").is_file():
        return path / MODEL_FILE, _run_metadata(path)  # a trainer run folder
    version_dir = resolve_version_dir(path)  # FileNotFoundError with a clear message otherwise
    model_file = version_dir / MODEL_FILE
    if not model_file.is_file():
        raise FileNotFoundError(f"{version_dir} has no {MODEL_FILE} to explain or classify with")
    card = _read_json(version_dir / CARD_FILE)
    return model_file, card


def _detection_section(model_file: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar beside the `.keras` file wins (it is what calibrating that file wrote),
    then the card's `detection` key (also a card beside a `.keras` file in a version folder)."""
    from cellkeras.serving.export import CARD_FILE, detection_sidecar

    sidecar = detection_sidecar(model_file)
    if sidecar.is_file():
        section = _read_json(sidecar)
        return section.get("detection", section)
    if "detection" in meta:
        return meta["detection"]
    return _read_json(model_file.parent / CARD_FILE).get("detection")


def feature_layers(model: Any) -> list[Any]:
    """Layers of `model` (nested models flattened, in graph order) with a 4-D output."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers") and getattr(layer, "inputs", None):
            found.extend(feature_layers(layer))
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # layers used more than once, or never called
            continue
        if len(shape) == 4 and type(layer).__name__ != "InputLayer":
            found.append(layer)
    return found


def model_min_side(model: Any, probe: int = 64) -> int:
    """The smallest input side for which the model's last feature map is at least 1 pixel.

    Computed from shapes alone (no pixels run): the input side over the last 4-D layer's side
    at a `probe`-pixel input, i.e. the total stride of the feature extractor.
    """
    import keras

    convs = feature_layers(model)
    if not convs:
        return DEFAULT_MIN_SIDE
    channels = model.inputs[0].shape[-1]
    try:
        inner = keras.Model(model.inputs, [layer.output for layer in convs[-1:]])
        shape = inner.compute_output_shape((1, probe, probe, channels))
        shape = shape[0] if isinstance(shape, list) else shape
        side = min(int(shape[1]), int(shape[2]))
    except Exception:  # a layer without shape inference (or a nested model) costs one run
        inner = keras.Model(model.inputs, convs[-1].output)
        out = inner(np.zeros((1, probe, probe, channels), np.float32), training=False)
        side = min(int(out.shape[1]), int(out.shape[2]))
    if side < 1:
        return probe
    return max(DEFAULT_MIN_SIDE, math.ceil(probe / side))


def load_model_for_inference(
    path: str | Path,
    *,
    classes: Sequence[str] | None = None,
    image_size: int | Sequence[int] | str | None = None,
    normalization: str | None = None,
) -> tuple[Any, ModelInfo]:
    """Loads a model and what is known about feeding it.

    Args:
        path: an export folder (its highest version), a version folder, a trainer run folder
            (`model.keras` + `metrics.json`) or a `.keras` file.
        classes: class names; overrides the model card (and is needed for a bare `.keras`).
        image_size: the size images are resized to (int, (height, width) or "HxW"); overrides
            the card. None with a bare `.keras` file: images keep their own size.
        normalization: overrides the card's normalization ("range" by default).

    Returns:
        `(model, info)`: the Keras model (loaded in safe mode) and its `ModelInfo`.

    Raises:
        FileNotFoundError: when `path` holds no model.
        ValueError: for a non-model file, a model without a 4-D (image) input, or `classes` whose
            count differs from the model's outputs.
    """
    import keras

    # Registers cellkeras' custom layers (SobelEdges, WeightedAverage, ParallelCNN) so that
    # safe-mode loading can rebuild a trainer's `.keras` file.
    import cellkeras.models.registry  # noqa: F401  registers the model classes for loading

    path = Path(path)
    model_file, meta = _locate(path)
    model = keras.saving.load_model(model_file)
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        raise ValueError(f"{model_file}: expected one image input (B, H, W, C), got {model.inputs}")
    num_classes = int(model.outputs[0].shape[-1])
    names = list(classes) if classes is not None else meta.get("classes")
    if names is not None and len(names) != num_classes:
        raise ValueError(
            f"{model_file} has {num_classes} outputs but {len(names)} classes were given: {names}"
        )
    size = image_size if image_size is not None else meta.get("image_size", meta.get("final_size"))
    channels = model.inputs[0].shape[-1]
    info = ModelInfo(
        classes=[str(n) for n in names] if names is not None else None,
        num_classes=num_classes,
        image_size=parse_image_size(size) if size is not None else None,
        channels=int(channels) if channels is not None else meta.get("channels"),
        normalization=normalization or meta.get("normalization", "range"),
        min_side=model_min_side(model),
        source=str(path),
        model_file=str(model_file),
        detection=_detection_section(model_file, meta),
    )
    return model, info


def load_image_for_model(path: str | Path, info: ModelInfo) -> np.ndarray:
    """Reads one image as the model takes it: float32 (H, W, C) in [0, 1], at `info.image_size`.

    Raises:
        ImageError: naming the file, for a missing or unreadable file, a non-image, a channel
            count the model cannot take (e.g. a 4-channel TIFF for an RGB model), or an image
            whose smaller side is below `info.min_side`.
    """
    return decode_image_for_model(read_image_bytes(path), info, source=str(path))


def decode_image_for_model(data: bytes, info: ModelInfo, source: str = "<bytes>") -> np.ndarray:
    """`load_image_for_model` on the bytes of an image file (read from any file system).

    Raises:
        ImageError: naming `source`, as `load_image_for_model`.
    """
    return prepare_image_for_model(decode_raw(data, source=source), info, source)


def prepare_image_for_model(pixels: np.ndarray, info: ModelInfo, source: str) -> np.ndarray:
    """Raw decoded pixels (`decode_raw`: (H, W, C) as stored) → what the model takes.

    Channels converted, normalized as `info` says and resized to `info.image_size`; the one
    place `classify`, `explain` and `cellkeras batch` turn a decoded image into model input.

    Raises:
        ImageError: naming `source`, for a channel count the model cannot take or an image
            smaller than `info.min_side`.
    """
    have = pixels.shape[-1]
    want = info.channels
    # Grey <-> RGB is a safe conversion (decode_raw has already dropped PNG alpha); anything
    # else, e.g. the 4th channel of a TIFF, is data the model was not trained on.
    convertible = want is None or have == want or (have, want) in ((1, 3), (3, 1))
    if not convertible:
        raise ImageError(
            source, f"has {have} channel(s) but the model takes {want}; convert it first"
        )
    if min(pixels.shape[:2]) < info.min_side:
        raise ImageError(
            source,
            f"{pixels.shape[1]}x{pixels.shape[0]} is smaller than the model's minimum side "
            f"{info.min_side} (the total stride of its feature maps)",
        )
    pixels = normalize(select_channels(pixels, want, source), info.normalization)
    if info.image_size is not None and tuple(pixels.shape[:2]) != tuple(info.image_size):
        import tensorflow as tf

        from cellkeras.serving.signatures import resize_images

        pixels = resize_images(tf.constant(pixels[None]), info.image_size)[0].numpy()
    return pixels.astype(np.float32)


def expand_image_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, and folders expanded to their image files (recursively, sorted).

    Files named explicitly are kept whatever their extension, so a bad one is reported rather
    than skipped; inside folders only image extensions count.
    """
    from cellkeras.io.images import IMAGE_EXTENSIONS

    found: list[Path] = []
    for item in paths:
        item = Path(item)
        if item.is_dir():
            found.extend(
                sorted(
                    p
                    for p in item.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                )
            )
        else:
            found.append(item)
    return found
