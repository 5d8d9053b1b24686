"""A trained classifier as a bioimage.io model package (spec 0.5, validated by bioimageio.spec).

```
export_bioimageio(model, "zoo/nuclei", classes=["background", "nucleus"], image_size=(32, 32),
                  channels=1, normalization="percentile")
```

writes

```
zoo/nuclei/
  rdf.yaml                      # the model description (format_version 0.5.x, type model)
  tf_saved_model_bundle.zip     # weights: a SavedModel, serving_default float32 (B, Y, X, C)
  model.keras                   # weights: the Keras v3 file they were converted from (parent)
  test_input.npy, test_output.npy   # (1, Y, X, C) raw input -> (1, classes) probabilities
  sample_input.tif, sample_output.tif   # the same as TIFFs, for people (imageio reads them)
  cover.png                     # the test input beside its class probabilities
  README.md                     # what it classifies, classes, input and preprocessing, use
```

The input tensor is the image before normalization; the description's preprocessing does what
`cellkeras.io.images.normalize` does (percentile: `scale_range` 1-99.8 % per image and channel,
then `clip` to [0, 1]; range: the image is already in [0, 1], `clip`), so a bioimage.io consumer
(deepImageJ, bioimageio.core, ilastik) feeds the network what training fed it. The test output
is computed by the SavedModel that ships, and checked against the Keras model.

Validation runs offline: nothing in the description is a URL (the citations are DOIs, no GitHub
user names), so `perform_io_checks=True` only reads and hashes the local files.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np
import tensorflow as tf
import tifffile

import cellkeras
from cellkeras.io.display import to_display_rgb
from cellkeras.io.files import replace_folder
from cellkeras.io.formats import MODEL_FILE
from cellkeras.io.images import (
    NORMALIZATIONS,
    NORMALIZE_PERCENTILES,
    PERCENTILE_NORMALIZATIONS,
    normalize,
)

RDF_FILE = "rdf.yaml"
WEIGHTS_ZIP = "tf_saved_model_bundle.zip"
LICENSE = "MIT"  # the repository states no other licence; setup.py and README say nothing else
# Methods the package rests on, by DOI only (a URL would need the network to validate).
CITATIONS = (
    {
        "text": "Abadi et al. TensorFlow: a system for large-scale machine learning. OSDI 2016.",
        "doi": "10.48550/arXiv.1605.08695",
    },
    {
        "text": "Selvaraju et al. Grad-CAM: visual explanations from deep networks via "
        "gradient-based localization. ICCV 2017.",
        "doi": "10.1109/ICCV.2017.74",
    },
)
# How close the SavedModel's probabilities must be to the Keras model's on the test input.
TOLERANCE = 1e-4


class BioimageioError(ValueError):
    """A model or description that does not make a valid bioimage.io package, with the reason."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def synthetic_test_image(image_size: tuple[int, int], channels: int, seed: int = 0) -> np.ndarray:
    """A deterministic (H, W, C) uint16 image: a bright round cell on a noisy background."""
    height, width = image_size
    rng = np.random.default_rng(seed)
    image = rng.normal(600.0, 60.0, (height, width, channels))
    yy, xx = np.mgrid[:height, :width]
    radius = max(2.0, min(height, width) / 4)
    cell = np.hypot(yy - (height - 1) / 2, xx - (width - 1) / 2) <= radius
    image[cell] += 2400.0
    return np.clip(image, 0, 65535).astype(np.uint16)


def _test_input(image: np.ndarray, image_size: tuple[int, int], normalization: str) -> np.ndarray:
    """The raw input tensor (1, H, W, C) float32: resized; for "range" already in [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[:2] != tuple(image_size):
        resized = cv2.resize(
            image.astype(np.float32), (image_size[1], image_size[0]), interpolation=cv2.INTER_AREA
        )
        resized = resized.reshape(*image_size, image.shape[-1])
        image = resized if np.issubdtype(image.dtype, np.floating) else resized.astype(image.dtype)
    # "range" maps integers by their type's maximum, which a float32 tensor no longer knows, so
    # the tensor holds the normalized pixels; "percentile" works on the raw values.
    raw = normalize(image, "range") if normalization == "range" else image
    return np.asarray(raw, np.float32)[None]


def _write_weights(model: keras.Model, folder: Path, channels: int) -> tf.Module:
    """`model.keras` and the zipped SavedModel; returns the SavedModel as loaded back."""
    model.save(folder / MODEL_FILE)
    saved = Path(tempfile.mkdtemp(prefix="saved-model-", dir=folder))
    archive = keras.export.ExportArchive()
    archive.track(model)
    # A plain graph function: autograph has nothing to convert here and costs a second.
    serve = tf.function(
        lambda images: {"output": model(images, training=False)},
        input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32, name="input")],
        autograph=False,
    )
    archive.add_endpoint("serving_default", serve)
    archive.write_out(str(saved), verbose=False)
    with zipfile.ZipFile(folder / WEIGHTS_ZIP, "w", zipfile.ZIP_DEFLATED) as bundle:
        for file in sorted(saved.rglob("*")):
            if file.is_file():
                bundle.write(file, file.relative_to(saved).as_posix())
    loaded = tf.saved_model.load(str(saved))
    shutil.rmtree(saved)
    return loaded


def _cover(raw: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """A 2:1 RGB cover: the test input (display-scaled) and one bar per class probability."""
    side = 256
    picture = cv2.resize(to_display_rgb(raw[0]), (side, side), interpolation=cv2.INTER_NEAREST)
    panel = np.full((side, side, 3), 255, np.uint8)
    rows = max(len(classes), 1)
    height = min(40, side // rows)
    for i, (name, p) in enumerate(zip(classes, probabilities, strict=True)):
        top = 8 + i * height
        cv2.rectangle(panel, (8, top), (8 + int(round(240 * float(p))), top + height // 2),
                      (40, 110, 200), cv2.FILLED)  # fmt: skip
        cv2.putText(panel, f"{name[:18]} {float(p):.2f}", (8, top + height // 2 + 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    return np.concatenate([picture, panel], axis=1)


def _preprocessing(normalization: str) -> list[dict[str, Any]]:
    clip = {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}
    if normalization == "range":
        return [clip]
    low, high = NORMALIZE_PERCENTILES
    scale = {"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": low,
                                              "max_percentile": high, "eps": 1e-6}}  # fmt: skip
    return [scale, clip]


def _readme(
    name: str, description: str, classes: Sequence[str], image_size: tuple[int, int],
    channels: int, normalization: str, card: dict[str, Any],
) -> str:  # fmt: skip
    low, high = NORMALIZE_PERCENTILES
    how = (
        f"per image and channel, the {low:g}th and {high:g}th percentiles map to 0 and 1, "
        "then values are clipped to [0, 1]"
        if normalization in PERCENTILE_NORMALIZATIONS
        else "integer pixels divided by their type's maximum (uint8 / 255, uint16 / 65535); "
        "float images must already lie in [0, 1]"
    )
    metrics = {k: v for k, v in card.items() if k.endswith("accuracy") and isinstance(v, float)}
    lines = [
        f"# {name}", "", description, "",
        "## What it classifies", "",
        f"One image of {image_size[0]}x{image_size[1]} pixels (height x width), {channels} "
        f"channel(s), into one of {len(classes)} classes:", "",
        *[f"{i}. `{c}`" for i, c in enumerate(classes)], "",
        "The output is one probability per class (softmax), in this order.",
        "cellkeras turns such a classifier into cell detections by sliding it over larger "
        "images (`cellkeras detect`) when one class is `background`.", "",
        "## Input and preprocessing", "",
        f"- tensor `input`, axes batch, y, x, channel; float32; resize images to "
        f"{image_size[0]}x{image_size[1]} first (cellkeras resizes bilinearly, antialiased).",
        f"- normalization `{normalization}`: {how}. The description's preprocessing does this "
        "(`scale_range` + `clip`)." if normalization in PERCENTILE_NORMALIZATIONS else
        f"- normalization `{normalization}`: {how}; the `input` tensor takes the normalized "
        "image (`clip` to [0, 1] is the only preprocessing step).", "",
        "## Weights", "",
        f"- `{WEIGHTS_ZIP}`: TensorFlow {tf.__version__} SavedModel, `serving_default` "
        "signature (`input` -> `output`).",
        f"- `{MODEL_FILE}`: the Keras {keras.__version__} model it was converted from "
        "(`keras.saving.load_model`; cellkeras models need `import cellkeras.models`).", "",
        "## Training", "",
        *([f"- {k}: {v:.4f}" for k, v in sorted(metrics.items())] or ["- metrics: not recorded"]),
        f"- packed by cellkeras {cellkeras.__version__} (`cellkeras export-bioimageio`).", "",
        "## Validation", "",
        "`test_output.npy` is what the shipped SavedModel gives for `test_input.npy` after the "
        f"preprocessing above; it matched the Keras model within {TOLERANCE:g}, and "
        f"bioimageio.spec validated this package (`perform_io_checks=True`) when it was packed.",
        "",
        "## License", "", f"{LICENSE}.", "",
    ]  # fmt: skip
    return "\n".join(lines)


def _content(folder: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The rdf.yaml content (a plain dict) for the files already in `folder`."""

    def file(name: str) -> dict[str, str]:
        return {"source": name, "sha256": _sha256(folder / name)}

    h, w = spec["image_size"]
    channel_names = [f"channel{c}" for c in range(spec["channels"])]
    return {
        "type": "model",
        "format_version": "0.5.4",
        "name": spec["name"],
        "description": spec["description"],
        "authors": [{"name": a} for a in spec["authors"]],
        "cite": [dict(c) for c in CITATIONS],
        "license": LICENSE,
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["cellkeras", "classification", "2d", "microscopy", "tensorflow", "keras"],
        "version": spec.get("version") or "0.1.0",
        "inputs": [
            {
                "id": "input",
                "description": f"image before normalization ({spec['normalization']})",
                "axes": [
                    {"type": "batch"},
                    {"type": "space", "id": "y", "size": h},
                    {"type": "space", "id": "x", "size": w},
                    {"type": "channel", "channel_names": channel_names},
                ],
                "test_tensor": file("test_input.npy"),
                "sample_tensor": file("sample_input.tif"),
                "data": {"type": "float32"},
                "preprocessing": _preprocessing(spec["normalization"]),
            }
        ],
        "outputs": [
            {
                "id": "output",
                "description": "class probabilities (softmax)",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": list(spec["classes"])},
                ],
                "test_tensor": file("test_output.npy"),
                "sample_tensor": file("sample_output.tif"),
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
        ],
        "weights": {
            "keras_v3": {
                **file(MODEL_FILE),
                "keras_version": keras.__version__,
                "backend": ["tensorflow", tf.__version__],
            },
            "tensorflow_saved_model_bundle": {
                **file(WEIGHTS_ZIP),
                "tensorflow_version": tf.__version__,
                "parent": "keras_v3",
            },
        },
        "config": {
            "cellkeras": {"normalization": spec["normalization"], "source": spec.get("source", "")}
        },  # fmt: skip
    }


def _write_tensors(
    model: keras.Model, folder: Path, raw: np.ndarray, normalization: str, classes: Sequence[str]
) -> None:
    """Weights, test and sample tensors and the cover; the test output comes from the SavedModel.

    Raises:
        BioimageioError: the SavedModel and the Keras model disagree on the test input.
    """
    channels = raw.shape[-1]
    model_input = raw if normalization == "range" else normalize(raw[0], "percentile")[None]
    model_input = model_input.astype(np.float32)
    saved = _write_weights(model, folder, channels)
    output = saved.signatures["serving_default"](input=tf.constant(model_input))["output"]
    output = output.numpy().astype(np.float32)
    expected = np.asarray(model(model_input, training=False), np.float32)
    if not np.allclose(output, expected, atol=TOLERANCE):
        raise BioimageioError(
            f"the SavedModel's output differs from the Keras model's by "
            f"{np.abs(output - expected).max():.2e} (> {TOLERANCE})"
        )
    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", output)
    # Sample tensors are for people (imageio reads them; .npy it does not).
    tifffile.imwrite(folder / "sample_input.tif", raw[0].squeeze(-1) if channels == 1 else raw[0])
    tifffile.imwrite(folder / "sample_output.tif", output)
    cover = cv2.cvtColor(_cover(raw, output[0], classes), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(folder / "cover.png"), cover):
        raise OSError(f"could not write {folder / 'cover.png'}")


def validate_package(path: str | Path):
    """Validates a package folder's rdf.yaml (or the file itself) with bioimageio.spec.

    Local files are read and their hashes checked (`perform_io_checks=True`); the description
    holds no URLs, so nothing is fetched.

    Returns:
        The `ModelDescr`.

    Raises:
        BioimageioError: with bioimageio.spec's validation summary when it is not valid.
    """
    from bioimageio.spec import InvalidDescr, load_description

    path = Path(path)
    descr = load_description(path / RDF_FILE if path.is_dir() else path, perform_io_checks=True)
    if isinstance(descr, InvalidDescr) or descr.validation_summary.status == "failed":
        raise BioimageioError(f"{path}: not a valid bioimage.io model:\n{descr.validation_summary}")
    return descr


def export_bioimageio(
    model: keras.Model,
    out_dir: str | Path,
    *,
    classes: Sequence[str],
    image_size: tuple[int, int],
    channels: int,
    normalization: str = "range",
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] = ("cellkeras contributors",),
    test_image: np.ndarray | None = None,
    card: dict[str, Any] | None = None,
    source: str = "",
) -> Path:
    """Packs `model` as a bioimage.io model folder at `out_dir` (replaced whole, atomically).

    Args:
        model: a Keras classifier, float32 (B, H, W, C) in [0, 1] -> (B, classes) probabilities.
        out_dir: the package folder to write.
        classes: class names in output order.
        image_size: (height, width) the model was trained at: the input tensor's size.
        channels: input channels.
        normalization: "range" or "percentile", as the model was trained.
        name, description: the description's name and summary (defaults from the classes).
        authors: author names.
        test_image: (H, W[, C]) image for the test tensors and the cover (any size: resized);
            default `synthetic_test_image`.
        card: the export's model card (metrics go into README.md), if any.
        source: where the model came from, recorded in `config.cellkeras.source`.

    Returns:
        The path of the package's rdf.yaml.

    Raises:
        BioimageioError: arguments that do not fit the model, a SavedModel that disagrees with
            the Keras model, or a description bioimageio.spec does not validate.
    """
    from bioimageio.spec import (
        InvalidDescr,
        ValidationContext,
        build_description,
        save_bioimageio_yaml_only,
    )

    if normalization not in NORMALIZATIONS:
        raise BioimageioError(f"normalization {normalization!r} is not one of {NORMALIZATIONS}")
    num_classes = int(model.outputs[0].shape[-1])
    if len(classes) != num_classes:
        raise BioimageioError(f"the model has {num_classes} outputs but {len(classes)} classes")
    image_size = (int(image_size[0]), int(image_size[1]))
    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        image = synthetic_test_image(image_size, channels) if test_image is None else test_image
        raw = _test_input(image, image_size, normalization)
        if raw.shape[-1] != channels:
            raise BioimageioError(f"the test image has {raw.shape[-1]} channels, not {channels}")
        _write_tensors(model, folder, raw, normalization, classes)
        targets = [c for c in classes if c.lower() != "background"]
        spec = {
            "name": name or f"cellkeras {' '.join(targets or classes)} classifier"[:128],
            "description": description
            or f"A CNN classifier of {image_size[0]}x{image_size[1]} microscope images into "
            f"{', '.join(classes)}, trained with cellkeras.",
            "authors": list(authors),
            "classes": list(classes),
            "image_size": image_size,
            "channels": channels,
            "normalization": normalization,
            "source": source,
        }
        readme = _readme(spec["name"], spec["description"], classes, image_size, channels,
                         normalization, card or {})  # fmt: skip
        (folder / "README.md").write_text(readme, encoding="utf-8")
        context = ValidationContext(root=folder, perform_io_checks=True, file_name=RDF_FILE)
        descr = build_description(_content(folder, spec), context=context)
        if isinstance(descr, InvalidDescr):
            raise BioimageioError(f"bioimageio.spec refuses the description:\n"
                                  f"{descr.validation_summary}")  # fmt: skip
        save_bioimageio_yaml_only(descr, file=folder / RDF_FILE)
        replace_folder(folder, target)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return target / RDF_FILE
