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

How: gradient methods run as one compiled function per (model, target): a single forward pass
and GradientTape over the whole batch, with the target layer's output captured in flight (the
layer's `call` is wrapped for the duration of the call, which also reaches layers inside nested
models, where a `keras.Model(inputs, inner_layer.output)` cannot be built). tf-keras-vis 0.8.7
computes the same maps (`engine="tf-keras-vis"`, used by the tests as a reference), but it builds a
new model per call, runs eagerly, upsamples with scipy on the CPU and cannot reach layers inside
nested models, so the default engine is this module's TF implementation of its formulas.
Capturing is not thread-safe: do not explain one model from two threads at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cellkeras.explain.methods import ENGINES, MERGED, METHODS, SCORE_METHODS, SCORES
from cellkeras.inference.loading import feature_layers

_POOLING = ("Pooling", "Dropout", "SpatialDropout", "GaussianNoise")

ClassIndex = int | Sequence[int] | np.ndarray | None


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


# --- targets --------------------------------------------------------------------------------


def find_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer called `name` in `model` or in any model nested inside it.

    Raises:
        ValueError: listing the 4-D (feature-map) layers when there is no such layer.
    """
    stack = [model]
    while stack:
        current = stack.pop()
        for layer in current.layers:
            if layer.name == name:
                return layer
            if hasattr(layer, "layers"):
                stack.append(layer)
    names = [layer.name for layer in feature_layers(model)]
    raise ValueError(f"{model.name} has no layer {name!r}; layers with feature maps: {names}")


def _is_conv(layer: Any) -> bool:
    return "Conv" in type(layer).__name__


def _branch_names(model: keras.Model) -> list[str]:
    from cellkeras.models import branch_names

    names = branch_names(model)
    # A generic model may name a layer `x_logits` by chance: a branch needs its last conv too.
    return [n for n in names if _has_layer(model, f"{n}_last_conv") or _parallel(model)]


def _parallel(model: keras.Model) -> bool:
    from cellkeras.models import ParallelCNN

    return isinstance(model, ParallelCNN)


def _has_layer(model: keras.Model, name: str) -> bool:
    try:
        find_layer(model, name)
    except ValueError:
        return False
    return True


def default_layer(model: keras.Model, branch: str | None = None) -> str:
    """The layer Grad-CAM targets when none is named.

    A ParallelCNN (or a model with `<branch>_logits` / `<branch>_last_conv` layers): the last conv
    layer of `branch` (default: the first branch). Any other model: the last layer with a 4-D
    output that is not pooling or dropout (pooling only coarsens the same evidence), searched
    through nested models too.

    Raises:
        ValueError: for a model without conv layers, or an unknown branch.
    """
    from cellkeras.models import last_conv_layer

    branches = _branch_names(model)
    if branches:
        return last_conv_layer(model, branch)
    if branch is not None:
        raise ValueError(f"{model.name} has no branches; branch={branch!r} cannot be explained")
    layers = feature_layers(model)
    if not any(_is_conv(layer) for layer in layers):
        raise ValueError(
            f"{model.name} has no convolutional layer (no layer with a 4-D feature-map output): "
            "class-activation maps need one; use method='occlusion' instead"
        )
    spatial = [layer for layer in layers if not any(p in type(layer).__name__ for p in _POOLING)]
    return (spatial or layers)[-1].name


def _resolve_target(
    model: keras.Model, layer_name: str | None, branch: str | None
) -> tuple[keras.Model, list[str]]:
    """(the model whose output is explained, the layer names whose maps are summed)."""
    from cellkeras.models import last_conv_layer

    if branch == MERGED:
        names = _branch_names(model)
        if not names:
            raise ValueError(f"{model.name} has no branches to merge maps over")
        return model, [last_conv_layer(model, n) for n in names]
    if branch is not None:
        names = _branch_names(model)
        if branch not in names:
            raise ValueError(f"{model.name} has no branch {branch!r}; branches: {names}")
        layer = layer_name or last_conv_layer(model, branch)
        return _branch_model(model, branch), [layer]
    layer = layer_name or default_layer(model)
    found = find_layer(model, layer)
    if layer_name is not None and len(_output_shape(found)) != 4:
        raise ValueError(f"layer {layer!r} has output shape {_output_shape(found)}, not a 4-D map")
    return model, [layer]


def _output_shape(layer: Any) -> tuple:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return ()


# Branch models and compiled functions are cached on the model object itself (set past Keras'
# attribute tracking, so saving ignores it): the cache then lives and dies with the model, where
# a WeakKeyDictionary would keep it alive through the closures that reference it.
_CACHE_ATTRIBUTE = "_cellkeras_explain_cache"


def _cached(model: keras.Model, key: tuple, build: Callable[[], Any]) -> Any:
    per_model = model.__dict__.get(_CACHE_ATTRIBUTE)
    if per_model is None:
        per_model = {}
        object.__setattr__(model, _CACHE_ATTRIBUTE, per_model)
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def _branch_model(model: keras.Model, branch: str) -> keras.Model:
    from cellkeras.models import branch_models

    return _cached(model, ("branch", branch), lambda: branch_models(model)[branch])


# --- capturing intermediate tensors ---------------------------------------------------------


def _output_layer(model: keras.Model) -> Any:
    history = getattr(model.outputs[0], "_keras_history", None)
    return history[0] if history else None


def _logit_layer(model: keras.Model) -> Any:
    """The output layer when its activation is softmax/sigmoid (its input is the logit)."""
    layer = _output_layer(model)
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", "")
    return layer if name in ("softmax", "sigmoid") else None


@contextlib.contextmanager
def _capturing(layers: Sequence[Any], logit_layer: Any, store: dict) -> Iterator[None]:
    """Records (and lets a tape watch) the outputs of `layers` and the logits of `logit_layer`.

    The wrappers are instance attributes that shadow the class's methods; removing them restores
    the layers exactly.
    """
    patched: list[tuple[Any, str, Any]] = []

    def watch(value: Any) -> None:
        tape = store.get("tape")
        if tape is not None:
            tape.watch(value)

    try:
        for i, layer in enumerate(layers):

            def call(*args: Any, _original=layer.call, _i=i, **kwargs: Any) -> Any:
                out = _original(*args, **kwargs)
                watch(out)
                store["features"][_i] = out
                return out

            patched.append((layer, "call", None))
            object.__setattr__(layer, "call", call)
        if logit_layer is not None:
            activation = logit_layer.activation

            def record(x: Any, *args: Any, _activation=activation, **kwargs: Any) -> Any:
                store["logits"] = x
                return _activation(x, *args, **kwargs)

            patched.append((logit_layer, "activation", activation))
            object.__setattr__(logit_layer, "activation", record)
        yield
    finally:
        for layer, attr, original in reversed(patched):
            if original is None:
                object.__delattr__(layer, attr)
            else:
                object.__setattr__(layer, attr, original)


# --- the compiled computations --------------------------------------------------------------


def _select(values: tf.Tensor, requested: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-image class (requested, or the argmax where requested is -1) and its value."""
    predicted = tf.argmax(values, axis=-1, output_type=tf.int32)
    classes = tf.where(requested >= 0, requested, predicted)
    return classes, tf.gather(values, classes, axis=1, batch_dims=1)


def _cam_from_gradients(method: str, features: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    features = tf.cast(features, tf.float32)
    grads = tf.cast(grads, tf.float32)
    if method == "gradcam":
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.reduce_sum(features * weights, axis=-1)
    elif method == "layercam":
        cam = tf.reduce_sum(features * tf.nn.relu(grads), axis=-1)
    else:  # gradcam++, tf-keras-vis' formulation without the exp(score) scale (see docstring)
        second, third = grads**2, grads**3
        global_sum = tf.reduce_sum(features, axis=(1, 2), keepdims=True)
        denominator = 2.0 * second + third * global_sum
        denominator += tf.cast(second == 0.0, tf.float32)
        alphas = second / denominator
        norm = tf.reduce_sum(alphas, axis=(1, 2), keepdims=True)
        alphas /= norm + tf.cast(norm == 0.0, tf.float32)
        weights = tf.reduce_sum(tf.nn.relu(grads) * alphas, axis=(1, 2), keepdims=True)
        cam = tf.reduce_sum(weights * features, axis=-1)
    return tf.nn.relu(cam)


def _gradient_function(
    model: keras.Model, layer_names: tuple[str, ...], method: str, score: str, resize: bool
) -> Callable:
    layers = [find_layer(model, name) for name in layer_names]
    logit_layer = _logit_layer(model) if score == "logit" else None
    store: dict[str, Any] = {}

    # Any batch and image size through one trace: retracing re-runs the Python capture code.
    @tf.function(
        input_signature=[_image_spec(model), tf.TensorSpec([None], tf.int32)], autograph=False
    )
    def run(images: tf.Tensor, requested: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        store["features"] = {}
        store.pop("logits", None)
        with tf.GradientTape() as tape:
            store["tape"] = tape
            probabilities = tf.cast(model(images, training=False), tf.float32)
            scores = store.get("logits", probabilities)
            classes, _ = _select(probabilities, requested)
            target = tf.gather(tf.cast(scores, tf.float32), classes, axis=1, batch_dims=1)
        store["tape"] = None
        features = [store["features"][i] for i in range(len(layers))]
        grads = tape.gradient(target, features)
        size = tf.shape(images)[1:3]
        total = None
        for feature, grad in zip(features, grads, strict=True):
            if grad is None:
                raise ValueError(f"the explained output does not depend on {layer_names}")
            cam = _cam_from_gradients(method, feature, grad)[..., None]
            if resize:
                cam = tf.image.resize(cam, size, method="bilinear")
            total = cam if total is None else total + cam
        return total[..., 0], classes, probabilities

    def call(images: np.ndarray, requested: np.ndarray) -> tuple[np.ndarray, ...]:
        with _capturing(layers, logit_layer, store):
            out = run(tf.constant(images), tf.constant(requested))
        return tuple(np.asarray(v) for v in out)

    return call


def _image_spec(model: keras.Model) -> tf.TensorSpec:
    return tf.TensorSpec([None, None, None, model.inputs[0].shape[-1]], tf.float32)


def _predict_function(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    @tf.function(input_signature=[_image_spec(model)], autograph=False)
    def predict(images: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(images, training=False), tf.float32)

    return predict


def _predict(model: keras.Model, images: np.ndarray | tf.Tensor, batch_size: int) -> np.ndarray:
    predict = _cached(model, ("predict",), lambda: _predict_function(model))
    parts = [
        predict(tf.convert_to_tensor(images[i : i + batch_size], tf.float32)).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _features_function(model: keras.Model, layer_name: str) -> Callable:
    layer = find_layer(model, layer_name)
    store: dict[str, Any] = {}

    @tf.function(input_signature=[_image_spec(model)], autograph=False)
    def run(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        store["features"] = {}
        probabilities = tf.cast(model(images, training=False), tf.float32)
        return tf.cast(store["features"][0], tf.float32), probabilities

    def call(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with _capturing([layer], None, store):
            features, probabilities = run(tf.constant(images))
        return features.numpy(), probabilities.numpy()

    return call


def feature_maps(
    model: keras.Model, images: np.ndarray, layer_name: str | None = None, batch_size: int = 64
) -> np.ndarray:
    """The outputs of one layer (default: `default_layer(model)`) for a batch: (N, h, w, K)."""
    images = _as_batch(images)
    name = layer_name or default_layer(model)
    run = _cached(model, ("features", name), lambda: _features_function(model, name))
    return np.concatenate(
        [run(images[i : i + batch_size])[0] for i in range(0, len(images), batch_size)]
    )


# --- Score-CAM ------------------------------------------------------------------------------


def _scorecam(
    model: keras.Model,
    images: np.ndarray,
    layer_name: str,
    requested: np.ndarray,
    max_n: int | None,
    batch_size: int,
    resize: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score-CAM for a batch: every (image, channel) masked copy goes through the model in
    batches of `batch_size`; Faster Score-CAM keeps each image's `max_n` most varied channels."""
    run = _cached(model, ("features", layer_name), lambda: _features_function(model, layer_name))
    features, probabilities = run(images)
    classes, _ = (v.numpy() for v in _select(tf.constant(probabilities), tf.constant(requested)))
    if max_n is not None and max_n < features.shape[-1]:
        # Per image (tf-keras-vis takes the union over the batch, so a map would depend on the
        # other images in the batch).
        spread = features.std(axis=(1, 2))
        top = np.argsort(-spread, axis=-1, kind="stable")[:, :max_n]
        features = np.take_along_axis(features, top[:, None, None, :], axis=-1)
    n, _, _, k = features.shape
    height, width = images.shape[1:3]
    masks = tf.image.resize(features, (height, width), method="bilinear").numpy()
    low = masks.min(axis=(1, 2), keepdims=True)
    high = masks.max(axis=(1, 2), keepdims=True)
    masks = (masks - low) / (high - low + keras.config.epsilon())
    weights = np.empty((n, k), np.float32)
    for i in range(n):
        # (k, H, W, C): the image under each channel's mask.
        masked = images[i][None] * np.moveaxis(masks[i], -1, 0)[..., None]
        weights[i] = _predict(model, masked, batch_size)[:, classes[i]]
    cam = np.maximum(np.einsum("nhwk,nk->nhw", features, weights), 0.0)
    if resize:
        cam = tf.image.resize(cam[..., None], (height, width), method="bilinear").numpy()[..., 0]
    return cam.astype(np.float32), classes, probabilities


# --- occlusion ------------------------------------------------------------------------------


def occlusion_windows(
    height: int, width: int, patch_size: int, stride: int
) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every occluding patch; the last row and column touch the border."""

    def starts(size: int) -> list[int]:
        last = max(size - patch_size, 0)
        values = list(range(0, last + 1, stride))
        return values if values[-1] == last else [*values, last]

    return [
        (y, min(y + patch_size, height), x, min(x + patch_size, width))
        for y in starts(height)
        for x in starts(width)
    ]


def _occlusion(
    model: keras.Model,
    images: np.ndarray,
    requested: np.ndarray,
    patch_size: int | None,
    stride: int | None,
    fill: float | str,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed's occlusion sensitivity, batched: an image's occluded copies are one batch."""
    n, height, width, _ = images.shape
    patch = patch_size or max(2, min(height, width) // 6)
    step = stride or max(1, patch // 2)
    windows = occlusion_windows(height, width, patch, step)
    masks = np.zeros((len(windows), height, width, 1), np.float32)
    for j, (y0, y1, x0, x1) in enumerate(windows):
        masks[j, y0:y1, x0:x1] = 1.0
    coverage = masks.sum(axis=0)[..., 0]
    probabilities = _predict(model, images, batch_size)
    classes, base = (v.numpy() for v in _select(tf.constant(probabilities), tf.constant(requested)))
    maps = np.empty((n, height, width), np.float32)
    for i in range(n):
        value = images[i].mean(axis=(0, 1)) if fill == "mean" else np.float32(fill)
        occluded = images[i][None] * (1.0 - masks) + masks * value
        drop = np.maximum(base[i] - _predict(model, occluded, batch_size)[:, classes[i]], 0.0)
        maps[i] = np.tensordot(drop, masks[..., 0], axes=1) / coverage
    return maps, classes, probabilities


# --- tf-keras-vis engine --------------------------------------------------------------------


def _tf_keras_vis(
    model: keras.Model,
    images: np.ndarray,
    method: str,
    layer_name: str,
    requested: np.ndarray,
    score: str,
    max_n: int | None,
    batch_size: int,
    resize: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same maps through tf-keras-vis 0.8.7 (raw), for comparison."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

    probabilities = _predict(model, images, batch_size)
    classes, _ = (v.numpy() for v in _select(tf.constant(probabilities), tf.constant(requested)))
    find_layer(model, layer_name)
    if layer_name not in [layer.name for layer in model.layers]:
        raise ValueError(f"tf-keras-vis cannot reach {layer_name!r} inside a nested model")
    target = model
    if method in SCORE_METHODS:
        # Score-CAM applies a softmax to the model's outputs (it expects logits): feeding it log
        # probabilities makes that softmax give back the probabilities, and turns a one-unit
        # sigmoid (whose softmax is constantly 1) into the two classes (1 - p, p).
        probs = model.outputs[0]
        if probs.shape[-1] == 1:
            probs = keras.layers.Concatenate()([1.0 - probs, probs])
            classes_for_score = np.ones_like(classes)
        else:
            classes_for_score = classes
        log = keras.layers.Lambda(lambda p: keras.ops.log(keras.ops.clip(p, 1e-12, 1.0)))(probs)
        target = keras.Model(model.inputs, log)
    else:
        classes_for_score = classes
        logit_layer = _logit_layer(model) if score == "logit" else None
        if isinstance(logit_layer, keras.layers.Activation):
            target = keras.Model(model.inputs, logit_layer.input)
        elif logit_layer is not None:
            # ReplaceToLinear would need `clone_model`, which subclassed models do not survive:
            # a linear twin of the output layer, sharing its weights, gives the same logits.
            config = {**logit_layer.get_config(), "activation": None, "name": "logits_twin"}
            twin = type(logit_layer).from_config(config)
            logits = twin(logit_layer.input)
            twin.set_weights(logit_layer.get_weights())
            target = keras.Model(model.inputs, logits)
    # One score per image: tf-keras-vis' CategoricalScore must match the batch size.
    score_fn = CategoricalScore([int(c) for c in classes_for_score])
    common = {"penultimate_layer": layer_name, "seek_penultimate_conv_layer": False}
    common |= {"normalize_cam": False, "expand_cam": resize}
    if method in SCORE_METHODS:
        channels = find_layer(model, layer_name).output.shape[-1]
        top = min(max_n, channels) if method == "faster-scorecam" and max_n else None
        cam = Scorecam(target, clone=False)(
            score_fn, images, batch_size=batch_size, max_N=top, **common
        )
    else:
        cls = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "layercam": Layercam}[method]
        cam = cls(target, clone=False)(score_fn, images, **common)
    return (
        np.asarray(cam, np.float32).reshape(len(images), *np.shape(cam)[-2:]),
        classes,
        probabilities,
    )


# --- the public entry -----------------------------------------------------------------------


def _as_batch(images: Any) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C) or (H, W, C), got shape {images.shape}")
    return images


def _requested(class_index: ClassIndex, n: int, num_classes: int) -> np.ndarray:
    if class_index is None:
        return np.full(n, -1, np.int32)
    if np.ndim(class_index) == 0:
        requested = np.full(n, int(class_index), np.int32)
    else:
        requested = np.asarray(class_index, np.int32).reshape(-1)
        if len(requested) != n:
            raise ValueError(f"{len(requested)} class indices for {n} images")
    bad = requested[(requested < 0) | (requested >= num_classes)]
    if bad.size:
        raise ValueError(f"class index {int(bad[0])} out of range for {num_classes} classes")
    return requested


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum: values in [0, 1], all-zero maps stay zero."""
    peak = maps.reshape(len(maps), -1).max(axis=1) if maps.size else np.zeros(0)
    scale = np.where(peak > 0, peak, 1.0).astype(np.float32)
    return (maps / scale[:, None, None]).astype(np.float32)


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
    images = _as_batch(images)
    channels = model.inputs[0].shape[-1]
    if channels is not None and images.shape[-1] != channels:
        raise ValueError(
            f"the model takes {channels} channel(s), the images have {images.shape[-1]}"
        )
    target, layers = (model, []) if method == "occlusion" and branch is None else (
        _resolve_target(model, layer_name, branch)
    )  # fmt: skip
    num_classes = int(target.outputs[0].shape[-1])
    requested = _requested(class_index, len(images), num_classes)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, len(images), batch_size):
        chunk, wanted = images[start : start + batch_size], requested[start : start + batch_size]
        if method == "occlusion":
            parts.append(_occlusion(target, chunk, wanted, patch_size, stride, fill, batch_size))
        elif engine == "tf-keras-vis":
            if len(layers) != 1:
                raise ValueError("engine='tf-keras-vis' explains one layer at a time")
            parts.append(
                _tf_keras_vis(
                    target, chunk, method, layers[0], wanted, score, max_n, batch_size, resize
                )
            )
        elif method in SCORE_METHODS:
            top = max_n if method == "faster-scorecam" else None
            maps = [
                _scorecam(target, chunk, layer, wanted, top, batch_size, resize) for layer in layers
            ]
            parts.append((sum(m[0] for m in maps), maps[0][1], maps[0][2]))
        else:
            run = _cached(
                target,
                ("gradients", tuple(layers), method, score, resize),
                functools.partial(_gradient_function, target, tuple(layers), method, score, resize),
            )
            parts.append(run(chunk, wanted))
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
            patch's value, default 0.5 grey, or "mean"), `engine` ("cellkeras", or
            "tf-keras-vis" for the library's own implementation).

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
    return _predict(model, _as_batch(images), batch_size)


def first_conv_kernels(model: keras.Model) -> tuple[str, np.ndarray]:
    """The first conv layer's name and kernels (kh, kw, in_channels, filters), float32.

    Raises:
        ValueError: for a model without conv layers.
    """
    for layer in feature_layers(model):
        if _is_conv(layer) and getattr(layer, "kernel", None) is not None:
            return layer.name, np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float32)
    raise ValueError(f"{model.name} has no convolutional layer")
