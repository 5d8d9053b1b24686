"""`detect`: one image and a classifier in, boxes out — heatmap, gate, boxes, back to input pixels.

```
dets = detect(model, image, DetectConfig.for_workflow("nuclei"))   # image: (H, W, C) as stored
dets.boxes, dets.scores          # float32 (K, 4) [x_min, y_min, x_max, y_max], (K,)
dets.heatmap                     # float32 (H, W) in [0, 1] at the input's size
```

The configuration per workflow (`WORKFLOWS`) was picked by `scripts/experiment_detection.py`
on held-out labelled images; see docs/BENCHMARKS.md ("Detection").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from cellkeras.detect.boxes import BoxParams, heatmap_to_instances
from cellkeras.detect.dense import DENSE_TOLERANCE, HEAT_PATHS, classifier_heatmap
from cellkeras.detect.heatmaps import gradcam_heatmap, rescale_for_diameter, target_classes

HEATMAP_METHODS = ("sliding_window", "gradcam")


class DetectError(ValueError):
    """An image or model that detection cannot use, with the reason."""


@dataclasses.dataclass
class DetectConfig:
    """Everything `detect` needs besides the model and the image.

    Attributes:
        method: "sliding_window" (classify windows of the training size) or "gradcam".
        window: sliding-window side in pixels (after rescaling): the training patch size.
        stride: sliding-window grid step.
        tile: Grad-CAM tile side, about the training image size (None: the whole image).
        overlap: Grad-CAM tile overlap.
        layer_name: Grad-CAM layer (None: the explain module's default).
        branch: Grad-CAM branch of a ParallelCNN ("auto": "merged" for multi-branch models).
        classes: target class indices (None: every class not named "background").
        normalization: how pixels become model input ("range"; "percentile": per window for
            the sliding window, per image for Grad-CAM; "frame_percentile": per image for both).
        gate: the image gives no boxes when its heatmap's maximum (a target-class probability
            for the sliding window; probability times normalized CAM for Grad-CAM) is below this.
        train_diameter: cell diameter in pixels the model was trained on; with `cell_diameter`
            the image is rescaled so the two match.
        cell_diameter: cell diameter in this image, pixels (None: estimated from the image
            when `estimate_diameter`, else no rescaling).
        estimate_diameter: without `cell_diameter`, measure it on the image
            (`cellkeras.detect.size.estimate_diameter`) and rescale by that.
        boxes: `BoxParams` for heatmap → boxes (thresholds apply to the [0, 1] heatmap).
        batch_size: windows per model call.
        heat: how the sliding-window heat is computed: "auto" (default) the dense path (the
            conv trunk once per image, `cellkeras.detect.dense`) when the model converts and its
            heat matches the window path's within `dense_tolerance` on a check crop of the
            first image, else the window path with a warning; "dense" skips the check;
            "window" classifies every window (the reference).
        dense_tolerance: largest max |dense - window| heat on the check crop for "auto".
        dense_tile: the dense path does larger images in overlapping tiles of this side.
        input_area_limits: `(smallest, largest)` cell area in the input image's pixels (either
            None: the `boxes` limit stays). `boxes.min_area` / `max_area` count the pixels of
            the rescaled image boxes are found on; these are converted to it per image.
    """

    method: str = "sliding_window"
    window: int = 32
    stride: int = 4
    tile: int | None = None
    overlap: int = 32
    layer_name: str | None = None
    branch: str | None = "auto"
    classes: Sequence[int] | None = None
    normalization: str = "range"
    gate: float = 0.5
    train_diameter: float | None = None
    cell_diameter: float | None = None
    estimate_diameter: bool = False
    boxes: BoxParams = dataclasses.field(default_factory=BoxParams)
    batch_size: int = 1024
    heat: str = "auto"
    dense_tolerance: float = DENSE_TOLERANCE
    dense_tile: int = 1024
    input_area_limits: tuple[float | None, float | None] | None = None

    def __post_init__(self) -> None:
        if self.method not in HEATMAP_METHODS:
            raise ValueError(f"unknown heatmap method {self.method!r}; known: {HEATMAP_METHODS}")
        if self.heat not in HEAT_PATHS:
            raise ValueError(f"unknown heat path {self.heat!r}; known: {HEAT_PATHS}")
        if not self.window >= 1:
            raise ValueError(f"window must be >= 1 px, got {self.window}")
        if not 1 <= self.stride <= self.window:
            raise ValueError(f"stride must be 1..window ({self.window}) px, got {self.stride}")
        for name in ("cell_diameter", "train_diameter"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 px, got {value}")

    def boxes_at(self, area_scale: float) -> BoxParams:
        """`boxes` for an image whose pixel areas were multiplied by `area_scale` before
        boxes were found, with `input_area_limits` converted to those pixels."""
        low, high = self.input_area_limits or (None, None)
        changes = {}
        if low is not None:
            changes["min_area"] = float(low) * area_scale
        if high is not None:
            changes["max_area"] = float(high) * area_scale
        return dataclasses.replace(self.boxes, **changes) if changes else self.boxes

    @classmethod
    def for_workflow(cls, name: str, **overrides: Any) -> DetectConfig:
        """The measured configuration of a workflow in `WORKFLOWS`, with overrides.

        `overrides` may set `DetectConfig` fields and, by their names, `BoxParams` fields.
        """
        if name not in WORKFLOWS:
            raise ValueError(f"unknown workflow {name!r}; known: {', '.join(WORKFLOWS)}")
        preset = {**WORKFLOWS[name]}
        return cls.from_flat(preset.pop("boxes", {}), **{**preset, **overrides})

    @classmethod
    def from_flat(cls, box_defaults: dict[str, Any] | None = None, **fields: Any) -> DetectConfig:
        """A configuration from `DetectConfig` and `BoxParams` fields given side by side (as
        flags and workflow presets give them), over `box_defaults`. A `boxes=BoxParams(...)`
        among `fields` is the starting point its flat box fields then override."""
        box_args = {**(box_defaults or {})}
        if "boxes" in fields:
            box_args.update(dataclasses.asdict(fields.pop("boxes")))
        box_fields = {f.name for f in dataclasses.fields(BoxParams)}
        for key in list(fields):
            if key in box_fields:
                box_args[key] = fields.pop(key)
        return cls(**fields, boxes=BoxParams(**box_args))


# The per-workflow defaults, chosen by scripts/experiment_detection.py (docs/BENCHMARKS.md).
WORKFLOWS: dict[str, dict[str, Any]] = {
    # The `--preset=nuclei` patch classifier: 32 px "nucleus centred or not" windows of the
    # image stretched once by its percentiles, as its training frames were ("frame_percentile";
    # a model trained on per-patch "percentile" says so in its card, and `cellkeras detect`
    # follows the card). Its heat regions are nuclei grown by the patches' central region, so
    # they only say which image foreground is a nucleus: the markers are the foreground's
    # distance-transform peaks inside them (touching nuclei share one hot region) and the boxes
    # take the image's own foreground as extent: per image, global Otsu or the "local" rule
    # (dim nuclei whole), whichever gives more nucleus-sized instances at the 12 px the image
    # is rescaled to ("auto"; it took Otsu on every ndev frame and "local" on laptrack). Stride 4:
    # a quarter of stride 2's windows, no worse (0.926 at stride 2 on ndev). Without
    # --cell_diameter the nuclei's size is measured on the image (`estimate_diameter`) and the
    # image rescaled to the 12 px the preset's sources are resized to. Threshold, erosion and
    # marker distance are the leave-one-source-out calibrations' most frequent choice (each
    # calibrated on frames of the sources its classifier trained on, never on the held-out
    # one: 0.7 4 of 6, erosion 1 5 of 6, distance 4 6 of 6; docs/BENCHMARKS.md, "Nuclei from
    # unseen microscopes").
    # `cellkeras calibrate` freezes others per model.
    "nuclei": {
        "method": "sliding_window",
        "window": 32,
        "stride": 4,
        "normalization": "frame_percentile",
        "gate": 0.5,
        "train_diameter": 12.0,
        "estimate_diameter": True,
        "boxes": {
            "threshold": "fixed",
            "value": 0.7,
            "min_peak": 0.7,
            "erode": 1,
            "extent": "image",
            "foreground": "auto",
            "auto_diameter": 12.0,
            "split": "distance",
            "min_distance": 4.0,
            "min_area": 12.0,
            "score": "max",
            "nms_iou": 0.3,
        },
    },
    # Synthetic blood smears: a "white cell centred or not" classifier on 64 px windows of
    # scenes (scripts/experiment_detection.py trains it), slid over the field; threshold,
    # erosion and marker distance calibrated on 4 scenes (F1@0.5 0.919 on 5 others).
    "synthetic": {
        "method": "sliding_window",
        "window": 64,
        "stride": 8,
        "normalization": "range",
        "gate": 0.5,
        "train_diameter": 34.0,
        "boxes": {
            "threshold": "fixed",
            "value": 0.95,
            "min_peak": 0.95,
            "erode": 9,
            "split": "distance",
            "min_distance": 18.0,
            "min_area": 100.0,
            "score": "max",
            "nms_iou": 0.3,
        },
    },
}


@dataclasses.dataclass
class Detections:
    """What `detect` found in one image.

    Attributes:
        boxes: float32 (K, 4) `[x_min, y_min, x_max, y_max]` in the input image's pixels.
        scores: float32 (K,).
        heatmap: float32 (H, W) in [0, 1] at the input image's size.
        probability: the image's highest target-class probability (what `gate` compared).
        scale: the factor the image was resized by before the model (1.0: not resized).
        labels: int32 (H, W) instance labels at the input image's size: 0 background, `i + 1`
            the cell of `boxes[i]` (`cellkeras.detect.instances` turns it into masks,
            outlines and measurements); None only where a caller built `Detections` itself.
        cell_diameter: the cell diameter (pixels) the rescaling used: given, or estimated.
        diameter_estimated: whether `cell_diameter` was measured on the image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    heatmap: np.ndarray
    probability: float
    scale: float = 1.0
    labels: np.ndarray | None = None
    cell_diameter: float | None = None
    diameter_estimated: bool = False


def resolve_diameter(image: np.ndarray, config: DetectConfig) -> tuple[DetectConfig, bool]:
    """`config` with `cell_diameter` measured on `image` when it is unset and to be estimated.

    Returns:
        `(config, estimated)`; an image without measurable foreground keeps None (no rescaling).
    """
    if config.cell_diameter is not None or not config.estimate_diameter:
        return config, False
    if config.train_diameter is None:
        return config, False
    from cellkeras.detect.size import estimate_diameter

    diameter = estimate_diameter(np.asarray(image))
    if diameter is None:
        # Measured once: `scaled_heatmap` resolves again and must not rerun the watershed.
        return dataclasses.replace(config, estimate_diameter=False), False
    return dataclasses.replace(config, cell_diameter=round(diameter, 2)), True


def has_conv_layers(model) -> bool:
    """Whether any layer of `model` (nested models included) is a convolution."""
    import keras

    conv_types = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)

    def walk(layer) -> bool:
        if isinstance(layer, conv_types):
            return True
        return any(walk(inner) for inner in getattr(layer, "layers", []))

    return walk(model)


def check_model(model) -> None:
    """Raises `DetectError` for a model detection cannot use (no convolution layers)."""
    if not has_conv_layers(model):
        raise DetectError(
            f"model {getattr(model, 'name', '?')!r} has no convolution layers; detection needs a "
            "CNN (its heatmaps come from convolutional features)"
        )


def _input_channels(model, channels: int | None) -> int | None:
    if channels is not None:
        return channels
    return model.inputs[0].shape[-1] if getattr(model, "inputs", None) else None


def _to_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """Grey <-> RGB and RGBA -> RGB as the data layer converts; anything else is refused."""
    from cellkeras.io.images import ImageError, select_channels

    if image.ndim not in (2, 3):
        raise DetectError(
            f"the image has shape {image.shape}; detect takes one (H, W) or (H, W, C) image, "
            "not a batch: pass the images one at a time"
        )
    if image.ndim == 2:
        image = image[..., None]
    have = image.shape[-1]
    if channels is None or have == channels:
        return image
    try:
        return select_channels(image, channels)
    except ImageError:
        raise DetectError(
            f"the image has {have} channel(s) and the model takes {channels}; only grey/RGB/RGBA "
            "conversions are automatic, convert it first"
        ) from None


def scaled_heatmap(
    model,
    image: np.ndarray,
    config: DetectConfig,
    channels: int | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The heatmap `detect` turns into boxes, at the rescaled image's size.

    Shared with `cellkeras calibrate`, so thresholds are swept on exactly the maps (and the
    rescaled images, for `extent="image"`) that detection later thresholds.

    Returns:
        `(heat, scaled, scale, probability)`: float32 (h, w) heat in [0, 1], the image as the
        model saw it (channels converted, rescaled by `scale`), and the heat's maximum (what
        `config.gate` is compared with).

    Raises:
        DetectError: as `detect`.
    """
    check_model(model)
    image = _to_channels(np.asarray(image), _input_channels(model, channels))
    config, _ = resolve_diameter(image, config)
    height, width = image.shape[:2]
    scaled, scale = rescale_for_diameter(image, config.cell_diameter, config.train_diameter)
    min_side = config.window if config.method == "sliding_window" else 8
    if min(scaled.shape[:2]) < min_side:
        raise DetectError(
            f"the image ({width}x{height}"
            + (
                f", {scaled.shape[1]}x{scaled.shape[0]} after rescaling"
                if scaled.shape[:2] != (height, width)
                else ""
            )
            + f") is smaller than the model's window of {min_side} px"
        )
    num_classes = int(model.outputs[0].shape[-1])
    if config.classes is not None:
        classes = [int(c) for c in config.classes]
    else:
        classes = target_classes(class_names, num_classes)

    if config.method == "sliding_window":
        heat = classifier_heatmap(
            model,
            scaled,
            config.window,
            config.stride,
            classes,
            config.normalization,
            config.batch_size,
            heat=config.heat,
            tolerance=config.dense_tolerance,
            tile=config.dense_tile,
        )
    else:
        from cellkeras.io.images import normalize

        branch = config.branch
        if branch == "auto":
            many = len(getattr(model, "last_conv_layers", None) or {}) > 1
            branch = "merged" if many and config.layer_name is None else None
        heat = gradcam_heatmap(
            model,
            normalize(scaled, config.normalization),
            classes,
            tile=config.tile,
            overlap=config.overlap,
            layer_name=config.layer_name,
            branch=branch,
        )
    probability = float(heat.max()) if heat.size else 0.0
    return heat, scaled, scale, probability


def detect(
    model,
    image: np.ndarray,
    config: DetectConfig | None = None,
    channels: int | None = None,
    class_names: Sequence[str] | None = None,
) -> Detections:
    """Finds cells in one image with a classifier trained on image (or patch) labels.

    Args:
        model: a Keras CNN classifier (float32 (B, h, w, C) in [0, 1] → probabilities).
        image: (H, W) or (H, W, C) pixels as stored (uint8, uint16 or float in [0, 1]);
            normalized here as `config.normalization` says.
        config: a `DetectConfig` (default: the "nuclei" workflow's).
        channels: the model's input channels (default: read from the model); grey/RGB images
            are converted, other counts raise.
        class_names: the model's class names; the target classes (unless `config.classes` says)
            are all but "background". Without names: all but output 0.

    Returns:
        `Detections` in the input image's pixels.

    Raises:
        DetectError: a model without convolutions, an image whose channels the model does not
            take, or an image smaller than the model's window after rescaling.
    """
    config = config or DetectConfig.for_workflow("nuclei")
    # The diameter is measured on the image as the model takes it, as `calibrate` measures it.
    image = _to_channels(np.asarray(image), _input_channels(model, channels))
    config, estimated = resolve_diameter(image, config)
    heat, scaled, scale, probability = scaled_heatmap(model, image, config, channels, class_names)
    height, width = image.shape[:2]
    scale_x, scale_y = axis_scales((height, width), scaled.shape)
    if probability < config.gate:
        boxes, scores = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        labels = np.zeros(heat.shape, np.int32)
    else:
        extent_image = scaled if config.boxes.extent == "image" else None
        params = config.boxes_at(scale_x * scale_y)
        boxes, scores, labels = heatmap_to_instances(heat, params, extent_image)
    # Compared by shape: a resize can round one side back to its own size and not the other.
    if scaled.shape[:2] != (height, width):
        from cellkeras.detect.instances import resize_labels

        boxes = boxes / np.array([scale_x, scale_y] * 2, np.float32)
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
        labels = resize_labels(labels, (height, width))
        boxes, scores, labels = _drop_lost_cells(boxes, scores, labels)
    return Detections(
        boxes.astype(np.float32),
        scores,
        heat,
        probability,
        scale,
        labels,
        config.cell_diameter,
        estimated,
    )


def _drop_lost_cells(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray):
    """Boxes, scores and labels renumbered 1..K without the cells a shrinking resize left no
    pixel (`resize_labels`), so every box keeps a mask."""
    kept = np.isin(np.arange(1, len(boxes) + 1), labels)
    if kept.all():
        return boxes, scores, labels
    renumber = np.zeros(len(boxes) + 1, np.int32)
    renumber[1:][kept] = np.arange(1, int(kept.sum()) + 1)
    return boxes[kept], scores[kept], renumber[labels]


def axis_scales(shape: Sequence[int], scaled_shape: Sequence[int]) -> tuple[float, float]:
    """`(x, y)` factors an image of `shape` (H, W, ...) was resized by to `scaled_shape`: the
    resize rounds each side, so the two differ slightly from the scale asked for and from each
    other (1024x1002 at 0.25 gives 256x250)."""
    return scaled_shape[1] / shape[1], scaled_shape[0] / shape[0]


def has_background(classes: Sequence[str] | None) -> bool:
    """Whether a model's classes include a "background" class (any case): what makes its
    windows tell a cell from its surroundings."""
    return any(str(name).lower() == "background" for name in classes or [])


def choose_workflow(classes: list[str] | None) -> str | None:
    """The workflow for a model's classes (None: no named one fits; use the generic config)."""
    from cellkeras.data.samples import NUCLEI_CLASSES

    if classes is None:
        return None
    if list(classes) == list(NUCLEI_CLASSES):
        return "nuclei"
    if list(classes) == ["background", "white_cell"]:
        return "synthetic"
    return None
