"""Class-activation maps: Grad-CAM, Grad-CAM++, LayerCAM, (Faster-)Score-CAM and occlusion.

```
maps = gradcam(model, images)                           # (N, H, W) in [0, 1]
maps = explain(model, images, method="layercam", branch="deep_narrow")
raw = explain(model, images, method="gradcam", normalize=False)   # for detection
result = compute_explanation(model, images, method="scorecam")    # maps + classes + probs
```

Every method returns one map per image at the input's size. With `normalize=True` a map is
divided by its own maximum (so it lies in [0, 1] and 0 stays "no evidence"; an all-zero map stays
zero). With `normalize=False` the *raw* map is returned: non-negative, bilinearly resized to the
input, in units that can be compared between images explained by the same model, class and
layer (not between methods):

* gradcam:   ReLU(sum_k mean_xy(dS/dA_k) * A_k)    (S: the class score, A: the layer's maps)
* gradcam++: ReLU(sum_k w_k * A_k) with Grad-CAM++'s alpha-weighted positive gradients; the
  paper's exp(S) factor is left out (it is a positive per-image scale that cancels in the
  normalized map and overflows float32 for large logits)
* layercam:  ReLU(sum_k ReLU(dS/dA_k) * A_k), element-wise
* scorecam / faster-scorecam: ReLU(sum_k p_c(X * mask_k) * A_k), p_c a probability
* occlusion: the mean drop of the class probability, max(0, p_c(X) - p_c(X occluded)), over the
  patches covering a pixel: a probability in [0, 1]

The class score S is the class *logit* by default (`score="logit"`): the input of the output
layer's softmax/sigmoid, as tf-keras-vis' `ReplaceToLinear` and the keras.io example do, because
the gradient of a saturated softmax (p = 1.0 in float32) is exactly zero and gives blank maps.
Models whose output has no such activation (an averaging merge) fall back to the output itself.

Targets: `layer_name` picks any layer with a 4-D output (inside nested models too); `branch`
picks a ParallelCNN branch: its last conv layer, explained for that branch's own output; and
`branch="merged"` sums the maps of every branch's last conv layer, explained for the merged
output. With neither, a ParallelCNN uses its first branch's last conv (and the merged output),
any other model its last 4-D layer that is not a pooling layer.

How: tf-keras-vis 0.8.7 computes the Grad-CAM family, through its own classes (`Gradcam`,
`GradcamPlusPlus`, `Layercam`, `Scorecam`), and `cellkeras.explain.tfkv` compiles around them: a
gradient method's whole `__call__` is traced once per (model, target) into a `tf.function` with a
fixed input signature, so a batch is one compiled forward pass and GradientTape, the maps
resized to the input in the same graph; Score-CAM runs tf-keras-vis' NumPy code as written, its
masked copies through a compiled prediction. `engine="tf-keras-vis"` calls the library plainly
(eagerly, on a clone with `ReplaceToLinear`, scipy upsampling; Grad-CAM++ then keeps its exp(S)
factor and Faster-Score-CAM picks channels over the whole batch), for comparison. Layers inside
nested models, which tf-keras-vis cannot reach, are captured in flight (see `tfkv`).
Occlusion is this package's own (`cellkeras.explain.occlusion_sensitivity`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cellkeras.explain import tfkv
from cellkeras.explain.common import (
    ClassIndex,
    as_batch,
    cached,
    predict_batches,
    requested_classes,
)
from cellkeras.explain.methods import ENGINES, METHODS, SCORE_METHODS, SCORES
from cellkeras.explain.occlusion_sensitivity import occlusion_maps
from cellkeras.explain.targets import default_layer, is_conv, resolve_target
from cellkeras.inference.loading import feature_layers


@dataclasses.dataclass
class Explanation:
    """Maps and what they explain.

    Attributes:
        maps: (N, H, W) float32 heatmaps (normalized or raw, see the module docstring).
        class_index: (N,) int, the class each map explains.
        probability: (N,) float32, the model's probability of that class (of the branch's own
            output when a branch was explained).
        probabilities: (N, K) float32, all class probabilities of the explained output.
        method: the method name.
        layers: the layer(s) the maps come from (empty for occlusion).
    """

    maps: np.ndarray
    class_index: np.ndarray
    probability: np.ndarray
    probabilities: np.ndarray
    method: str
    layers: list[str]


# --- the public entry -----------------------------------------------------------------------


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum: values in [0, 1], all-zero maps stay zero."""
    peak = maps.reshape(len(maps), -1).max(axis=1) if maps.size else np.zeros(0)
    scale = np.where(peak > 0, peak, 1.0).astype(np.float32)
    return (maps / scale[:, None, None]).astype(np.float32)


def _chunk_maps(
    target: keras.Model,
    images: np.ndarray,
    requested: np.ndarray,
    method: str,
    layers: list[str],
    *,
    score: str,
    resize: bool,
    max_n: int | None,
    patch_size: int | None,
    stride: int | None,
    fill: float | str,
    engine: str,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps, classes, probabilities) of one batch; the maps of several layers are summed."""
    if method == "occlusion":
        return occlusion_maps(target, images, requested, patch_size, stride, fill, batch_size)
    if engine == "tf-keras-vis":
        if len(layers) != 1:
            raise ValueError("engine='tf-keras-vis' explains one layer at a time")
        return tfkv.plain_maps(
            target, images, method, layers[0], requested, score, max_n, batch_size, resize
        )
    if method in SCORE_METHODS:
        top = max_n if method == "faster-scorecam" else None
        maps = [
            tfkv.scorecam_maps(target, images, layer, requested, top, batch_size, resize)
            for layer in layers
        ]
        return sum(m[0] for m in maps), maps[0][1], maps[0][2]
    run = cached(
        target,
        ("gradients", tuple(layers), method, score, resize),
        functools.partial(tfkv.gradient_function, target, tuple(layers), method, score, resize),
    )
    return run(images, requested)


def compute_explanation(
    model: keras.Model,
    images: Any,
    method: str = "gradcam",
    class_index: ClassIndex = None,
    layer_name: str | None = None,
    branch: str | None = None,
    normalize: bool = True,
    batch_size: int = 64,
    *,
    score: str = "logit",
    resize: bool = True,
    max_n: int | None = 10,
    patch_size: int | None = None,
    stride: int | None = None,
    fill: float | str = 0.5,
    engine: str = "cellkeras",
) -> Explanation:
    """Heatmaps with the class and probability each one explains; see `explain` for arguments.

    Returns:
        An `Explanation`.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; known: {', '.join(METHODS)}")
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    images = as_batch(images)
    channels = model.inputs[0].shape[-1]
    if channels is not None and images.shape[-1] != channels:
        raise ValueError(
            f"the model takes {channels} channel(s), the images have {images.shape[-1]}"
        )
    target, layers = (model, []) if method == "occlusion" and branch is None else (
        resolve_target(model, layer_name, branch)
    )  # fmt: skip
    num_classes = int(target.outputs[0].shape[-1])
    requested = requested_classes(class_index, len(images), num_classes)
    options = {"score": score, "resize": resize, "max_n": max_n, "patch_size": patch_size}
    options |= {"stride": stride, "fill": fill, "engine": engine, "batch_size": batch_size}
    parts = [
        _chunk_maps(
            target,
            images[i : i + batch_size],
            requested[i : i + batch_size],
            method,
            layers,
            **options,
        )  # fmt: skip
        for i in range(0, len(images), batch_size)
    ]
    maps, classes, probabilities = (np.concatenate(p) for p in zip(*parts, strict=True))
    maps = np.maximum(maps, 0.0).astype(np.float32)
    if normalize:
        maps = normalize_maps(maps)
    probability = np.take_along_axis(probabilities, classes[:, None].astype(int), axis=1)[:, 0]
    return Explanation(
        maps=maps,
        class_index=classes.astype(np.int64),
        probability=probability.astype(np.float32),
        probabilities=probabilities.astype(np.float32),
        method=method,
        layers=list(layers),
    )


def explain(
    model: keras.Model,
    images: Any,
    method: str = "gradcam",
    class_index: ClassIndex = None,
    layer_name: str | None = None,
    branch: str | None = None,
    normalize: bool = True,
    batch_size: int = 64,
    **options: Any,
) -> np.ndarray:
    """One heatmap per image, (N, H, W) float32 at the input's size.

    Args:
        model: a Keras model taking float32 (N, H, W, C) images and returning class
            probabilities (softmax, or a one-unit sigmoid); mixed-precision and nested models work.
        images: (N, H, W, C) or one (H, W, C) image, float32 as the model takes them.
        method: "gradcam", "gradcam++", "layercam", "scorecam", "faster-scorecam" or
            "occlusion".
        class_index: the class to explain: None = each image's predicted class, an int = that
            class for every image, a sequence = one class per image.
        layer_name: the layer whose maps are used (any 4-D output, also inside nested models);
            None = `default_layer(model, branch)`. Ignored by occlusion.
        branch: a ParallelCNN branch name (its last conv, for its own output), "merged" (the sum
            over every branch's last conv, for the merged output) or None.
        normalize: True divides each map by its maximum ([0, 1]); False returns the raw map
            (non-negative, comparable between images; see the module docstring per method).
        batch_size: images per forward/backward pass (Score-CAM and occlusion: masked copies
            per forward pass).
        **options: keyword-only extras: `score` ("logit" or "probability", for the gradient
            methods), `resize` (False keeps the layer's resolution; CAM methods only), `max_n`
            (faster-scorecam's channel count, default 10), `patch_size`, `stride` and `fill`
            (occlusion: patch side, default min(H, W) // 6; step, default patch // 2; the
            patch's value, default 0.5 grey, or "mean"), `engine` ("cellkeras": tf-keras-vis'
            classes, compiled; "tf-keras-vis": the library called plainly, for comparison).

    Returns:
        (N, H, W) float32 heatmaps.

    Raises:
        ValueError: for an unknown method, a model without conv layers (CAM methods), images
            whose channels the model does not take, or class indices out of range.
    """
    return compute_explanation(
        model, images, method, class_index, layer_name, branch, normalize, batch_size, **options
    ).maps


def gradcam(
    model: keras.Model,
    images: Any,
    class_index: ClassIndex = None,
    layer_name: str | None = None,
    **options: Any,
) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] at the input's size; `explain` with method="gradcam"."""
    return explain(model, images, "gradcam", class_index, layer_name, **options)


def _method(name: str) -> Callable[..., np.ndarray]:
    def run(
        model: keras.Model,
        images: Any,
        class_index: ClassIndex = None,
        layer_name: str | None = None,
        **options: Any,
    ) -> np.ndarray:
        return explain(model, images, name, class_index, layer_name, **options)

    run.__name__ = name.replace("+", "_plus").replace("-", "_")
    run.__doc__ = f"`explain` with method={name!r}: (N, H, W) heatmaps at the input's size."
    return run


gradcam_plus_plus = _method("gradcam++")
layercam = _method("layercam")
scorecam = _method("scorecam")
faster_scorecam = _method("faster-scorecam")


def occlusion(
    model: keras.Model,
    images: Any,
    class_index: ClassIndex = None,
    patch_size: int | None = None,
    stride: int | None = None,
    fill: float | str = 0.5,
    **options: Any,
) -> np.ndarray:
    """Occlusion-sensitivity maps (the seed's method); `explain` with method="occlusion"."""
    return explain(
        model, images, "occlusion", class_index, patch_size=patch_size, stride=stride, fill=fill,
        **options,
    )  # fmt: skip


def predict(model: keras.Model, images: Any, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, K) float32, through one compiled function per model."""
    return predict_batches(model, as_batch(images), batch_size)


def feature_maps(
    model: keras.Model, images: Any, layer_name: str | None = None, batch_size: int = 64
) -> np.ndarray:
    """The outputs of one layer (default: `default_layer(model)`) for a batch: (N, h, w, K)."""
    images = as_batch(images)
    name = layer_name or default_layer(model)
    run = cached(model, ("features", name), lambda: tfkv.features_function(model, name))
    return np.concatenate(
        [
            run(tf.constant(images[i : i + batch_size])).numpy()
            for i in range(0, len(images), batch_size)
        ]
    )


def first_conv_kernels(model: keras.Model) -> tuple[str, np.ndarray]:
    """The first conv layer's name and kernels (kh, kw, in_channels, filters), float32.

    Raises:
        ValueError: for a model without conv layers.
    """
    for layer in feature_layers(model):
        if is_conv(layer) and getattr(layer, "kernel", None) is not None:
            return layer.name, np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float32)
    raise ValueError(f"{model.name} has no convolutional layer")
