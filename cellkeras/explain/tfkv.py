"""The Grad-CAM family computed by tf-keras-vis 0.8.7's own classes, compiled around them.

```
run = gradient_function(model, ("conv",), "gradcam", "logit", resize=True)   # cached by cam.py
maps, classes, probabilities = run(images, requested)                        # one compiled call
maps, classes, probabilities = scorecam_maps(model, images, "conv", requested, 10, 64, True)
```

tf-keras-vis computes every map here: `Gradcam`, `GradcamPlusPlus`, `Layercam` and `Scorecam` run
their own `__call__`, with their `ExtractIntermediateLayerForGradcam` sub-model (the model's
outputs and the layer's maps), their GradientTape and score averaging, their mixed-precision
casts, the method's formula and the final ReLU. Called plainly (`plain_maps`,
`engine="tf-keras-vis"`) the library is slow mostly because it runs the model's forward and
backward pass eagerly, op by op; it also upsamples with scipy.

Gradient methods: `__call__` itself is traced into one `tf.function` per (model, layers,
method, score, resize) with a fixed input signature, so every batch and image size runs the same
graph, and the maps are resized to the input in that graph (`tf.image.resize`, bilinear; its
`expand_cam` would use scipy). tf-keras-vis explains one layer per call, so `branch="merged"`
runs one call, a forward and backward pass, per branch in that graph. Three things make the
trace possible; none changes a formula:

* `_ClassScore`, a tf-keras-vis `Score`, reads each image's class from a tensor
  (`CategoricalScore` takes a Python list, which a trace would freeze). Its value is one number
  per batch, sum_i (S_i - stop_gradient(S_i)) = 0: tf-keras-vis differentiates the sum of the
  scores anyway, so every image still gets its own gradient; a value of static shape (1,) is
  what `GradcamPlusPlus` needs to reshape the scores in a graph whose batch size is unknown; and
  the value 0 makes Grad-CAM++'s exp(score) factor 1, as the raw-map contract in `cam.py` says
  (a per-image scale that overflows float32 above a logit of 88; taken over a batch's sum it
  would also tie each map to the rest of its batch).
* `Gradcam._calculate_cam` (which `Layercam` overrides) is NumPy, `np.sum(np.multiply(...))`,
  which graph tensors cannot enter: `_InGraph` runs tf-keras-vis' method unchanged as a
  `tf.py_function` inside the graph.
* The logit score: tf-keras-vis' `ReplaceToLinear` is applied to the explained model only while
  the function is traced, then undone (the graph keeps the linear output), not to a clone:
  `clone_model` copies the weights, so a cached clone would go stale as the model trains. The
  replaced activation turns the logits back into the probabilities an `Explanation` reports.

Score-CAM: `Scorecam.__call__` is NumPy and scipy throughout (masks zoomed by scipy, masked copies
tiled by NumPy), so it cannot be traced. It runs as written on `_ScoreModel`, a stand-in whose
layers are compiled functions of the model: the layer's maps, and the log-probabilities; its
`predict` (called on the masked copies: most of the work) is a compiled batched loop instead of
Keras' `predict`, which prints a progress bar per call. Log-probabilities because `Scorecam`
applies a softmax to the outputs (it expects logits): that gives the probabilities back, and
turns a one-unit sigmoid p into the two classes (1 - p, p) instead of a softmax over one unit
(constantly 1). Faster-Score-CAM: the stand-in's maps are each image's own `max_n` most varied
channels and `Scorecam` runs over all of them, since its own `max_N` keeps the union of the
top channels over the batch, which would make a map depend on the other images.

The one case tf-keras-vis cannot reach is a layer inside a model nested in the explained one:
`ExtractIntermediateLayerForGradcam` finds it, but Keras cannot build
`Model(model.inputs, layer.output)` because that output belongs to the inner model's graph.
`_Capturing` is the fallback: a stand-in model whose one layer runs the model with that layer's
`call` wrapped to hand out its output tensor itself (so gradients reach it); tf-keras-vis then
runs on the stand-in as on any model. Capturing is not thread-safe: do not explain one model
from two threads at once. Mixed precision needs no fallback: tf-keras-vis casts float16
gradients and maps to float32 itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.layercam import Layercam
from tf_keras_vis.scorecam import Scorecam
from tf_keras_vis.utils.model_modifiers import ExtractIntermediateLayerForGradcam, ReplaceToLinear
from tf_keras_vis.utils.scores import CategoricalScore, Score

from cellkeras.explain.common import (
    cached,
    image_spec,
    predict_batches,
    predict_function,
    select_classes,
)
from cellkeras.explain.methods import SCORE_METHODS
from cellkeras.explain.targets import find_layer, logit_layer

# --- tf-keras-vis, made traceable ------------------------------------------------------------


class _ClassScore(Score):
    """Each image's output for its class: `requested`, or the highest output where it is -1.

    The value is 0 of shape (1,) and the gradient each image's own (see the module docstring).
    After a call, `classes` holds the classes explained and `output` the outputs seen.
    """

    def __init__(self, requested: tf.Tensor) -> None:
        super().__init__("ClassScore")
        self.requested = requested
        self.classes: tf.Tensor | None = None
        self.output: tf.Tensor | None = None

    def __call__(self, output: tf.Tensor) -> tf.Tensor:
        predicted = tf.argmax(output, axis=-1, output_type=tf.int32)
        self.classes = tf.where(self.requested >= 0, self.requested, predicted)
        self.output = output
        values = tf.gather(output, self.classes, axis=1, batch_dims=1)
        return tf.reshape(tf.reduce_sum(values - tf.stop_gradient(values)), (1,))


class _Classes(Score):
    """`CategoricalScore` as one gather: Scorecam scores every channel's masked batch with it,
    and `CategoricalScore` slices each image out one by one (most of Scorecam's own time)."""

    def __init__(self, classes: list[int]) -> None:
        super().__init__("Classes")
        self.classes = tf.constant(classes, tf.int32)

    def __call__(self, output: tf.Tensor) -> tf.Tensor:
        return tf.gather(output, self.classes, axis=1, batch_dims=1)


class _InGraph:
    """Runs tf-keras-vis' NumPy `_calculate_cam` as a `tf.py_function` in the compiled graph."""

    def _calculate_cam(
        self,
        grads: tf.Tensor,
        penultimate_output: tf.Tensor,
        gradient_modifier: Callable | None,
        activation_modifier: Callable | None,
    ) -> tf.Tensor:
        calculate = super()._calculate_cam  # type: ignore[misc]

        def numpy_cam(grads: tf.Tensor, features: tf.Tensor) -> np.ndarray:
            cam = calculate(grads, features, gradient_modifier, activation_modifier)
            return np.asarray(cam, np.float32)

        cam = tf.py_function(numpy_cam, [grads, penultimate_output], tf.float32)
        cam.set_shape(penultimate_output.shape[:-1])
        return cam


class _Gradcam(_InGraph, Gradcam):
    """tf-keras-vis' Gradcam, its CAM step in the graph."""


class _Layercam(_InGraph, Layercam):
    """tf-keras-vis' Layercam, its CAM step in the graph."""


_COMPILED = {"gradcam": _Gradcam, "gradcam++": GradcamPlusPlus, "layercam": _Layercam}
_PLAIN = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "layercam": Layercam}


@contextlib.contextmanager
def _linear_output(model: keras.Model, enabled: bool) -> Iterator[Callable | None]:
    """tf-keras-vis' ReplaceToLinear on `model` for the duration (when `enabled` and the output
    layer has a softmax/sigmoid); yields the replaced activation, or None."""
    layer = logit_layer(model) if enabled else None
    if layer is None:
        yield None
        return
    activation = layer.activation
    ReplaceToLinear()(model)
    try:
        yield activation
    finally:
        layer.activation = activation


# --- what tf-keras-vis runs on ----------------------------------------------------------------


class _Capturing(keras.layers.Layer):
    """Runs a model; returns its output and the output tensor of `layer`, a layer inside a model
    nested in it (the fallback of the module docstring)."""

    def __init__(self, model: keras.Model, layer: keras.layers.Layer) -> None:
        # The layer's dtype policy: with mixed precision tf-keras-vis then casts the float16
        # maps and gradients to float32, as it does for the model itself.
        super().__init__(name=f"{layer.name}_capturing", dtype=layer.dtype_policy, autocast=False)
        object.__setattr__(self, "_explained", model)  # not tracked: the model owns its weights
        object.__setattr__(self, "_captured", layer)

    def call(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        found: list[tf.Tensor] = []
        original = self._captured.call

        def call(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            found.append(out)
            return out

        object.__setattr__(self._captured, "call", call)  # shadows the class's method
        try:
            outputs = self._explained(images, training=False)
        finally:
            object.__delattr__(self._captured, "call")
        return outputs, found[-1]

    def compute_output_spec(self, images: Any) -> tuple[keras.KerasTensor, keras.KerasTensor]:
        output, features = self._explained.outputs[0], self._captured.output
        return tuple(  # type: ignore[return-value]
            keras.KerasTensor((images.shape[0], *t.shape[1:]), t.dtype) for t in (output, features)
        )


def reachable(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.layers.Layer]:
    """(a model tf-keras-vis can run, its layer whose output holds the maps): `model` itself when
    the layer is one of its own layers, else a `_Capturing` stand-in."""
    for layer in model.layers:
        if layer.name == layer_name:
            return model, layer
    return cached(model, ("capturing", layer_name), lambda: _stand_in(model, layer_name))


def _stand_in(model: keras.Model, layer_name: str) -> tuple[keras.Model, keras.layers.Layer]:
    images = keras.Input(model.inputs[0].shape[1:], name="images")
    outputs, features = _Capturing(model, find_layer(model, layer_name))(images)
    holder = keras.layers.Identity(name=layer_name)  # returns the captured tensor itself
    holder(features)
    return keras.Model(images, outputs, name=f"{model.name}_capturing"), holder


class _Compiled(keras.layers.Layer):
    """A layer running one compiled function of the explained model: images -> a tensor."""

    def __init__(self, function: Callable, shape: tuple, name: str) -> None:
        super().__init__(name=name, dtype="float32", autocast=False)
        self._function = function
        self._shape = tuple(shape)

    def call(self, images: tf.Tensor) -> tf.Tensor:
        return self._function(images)

    def compute_output_spec(self, images: Any) -> keras.KerasTensor:
        return keras.KerasTensor((images.shape[0], *self._shape), "float32")


class _ScoreModel(keras.Model):
    """What `Scorecam` runs on: images -> log-probabilities, with the layer's maps beside; both
    compiled, and its `predict` (what Scorecam calls on the masked copies) a compiled batched
    loop without Keras' progress bar."""

    def predict(self, x: Any, batch_size: int | None = None, **kwargs: Any) -> np.ndarray:
        x = x[0] if isinstance(x, list | tuple) else x
        return predict_batches(self, np.asarray(x, np.float32), batch_size or 32)


def _log_probabilities(model: keras.Model) -> keras.KerasTensor:
    """log p (a one-unit sigmoid as log(1 - p), log p): Scorecam's softmax gives p back."""
    probs = model.outputs[0]
    if probs.shape[-1] == 1:
        probs = keras.layers.Concatenate()([1.0 - probs, probs])
    return keras.layers.Lambda(lambda p: keras.ops.log(keras.ops.clip(p, 1e-12, 1.0)))(probs)


def _score_model(
    model: keras.Model, layer_name: str, max_n: int | None
) -> tuple[keras.Model, keras.layers.Layer]:
    """The `_ScoreModel` of `model` and its maps layer; with `max_n` below the layer's channels,
    that layer hands out each image's own `max_n` most varied channels (Faster-Score-CAM)."""
    features = features_function(model, layer_name)
    shape = tuple(reachable(model, layer_name)[1].output.shape[1:])
    if max_n is not None and max_n < shape[-1]:
        features, shape = _top_channels(model, features, max_n), (*shape[:-1], max_n)
    maps = _Compiled(features, shape, layer_name)
    images = keras.Input(model.inputs[0].shape[1:], name="images")
    maps(images)  # beside the output: Scorecam builds images -> maps from it
    log_p = keras.Model(model.inputs[0], _log_probabilities(model))
    log_p = _Compiled(predict_function(log_p), log_p.outputs[0].shape[1:], "log_probabilities")
    return _ScoreModel(images, log_p(images), name=f"{model.name}_scorecam"), maps


def _top_channels(model: keras.Model, features: Callable, max_n: int) -> Callable:
    """`features` cut to each image's `max_n` channels of largest spatial standard deviation:
    Scorecam's `max_N` ranking, applied per image instead of over the batch's union."""

    @tf.function(input_signature=[image_spec(model)], autograph=False)
    def run(images: tf.Tensor) -> tf.Tensor:
        maps = features(images)
        _, top = tf.math.top_k(tf.math.reduce_std(maps, axis=(1, 2)), max_n)
        return tf.gather(maps, top, axis=-1, batch_dims=1)

    return run


def _score_classes(classes: np.ndarray, num_classes: int) -> list[int]:
    """The classes `CategoricalScore` picks from the log-probability outputs (one-unit: 1)."""
    return [1 if num_classes == 1 else int(c) for c in classes]


def _resize(maps: np.ndarray | tf.Tensor, size: Any) -> tf.Tensor:
    return tf.image.resize(tf.cast(maps, tf.float32)[..., None], size, method="bilinear")[..., 0]


# --- the computations -----------------------------------------------------------------------


def gradient_function(
    model: keras.Model, layer_names: tuple[str, ...], method: str, score: str, resize: bool
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`run(images, requested) -> (maps, classes, probabilities)`: the tf-keras-vis class of
    `method` over the whole batch in one compiled call, the maps of `layer_names` summed."""
    visualizers = []
    for name in layer_names:
        stand_in, layer = reachable(model, name)
        visualizers.append((_COMPILED[method](stand_in, clone=False), layer))

    @tf.function(
        input_signature=[image_spec(model), tf.TensorSpec([None], tf.int32)], autograph=False
    )
    def run(images: tf.Tensor, requested: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        total = None
        with _linear_output(model, score == "logit") as activation:
            for visualizer, layer in visualizers:
                scores = _ClassScore(requested)
                cam = visualizer(
                    scores, images, penultimate_layer=layer, seek_penultimate_conv_layer=False,
                    expand_cam=False, normalize_cam=False,
                )  # fmt: skip
                cam = _resize(cam, tf.shape(images)[1:3]) if resize else tf.cast(cam, tf.float32)
                total = cam if total is None else total + cam
        outputs = tf.cast(scores.output, tf.float32)
        probabilities = outputs if activation is None else activation(outputs)
        return total, scores.classes, probabilities

    def call(images: np.ndarray, requested: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(np.asarray(v) for v in run(tf.constant(images), tf.constant(requested)))

    return call


def scorecam_maps(
    model: keras.Model,
    images: np.ndarray,
    layer_name: str,
    requested: np.ndarray,
    max_n: int | None,
    batch_size: int,
    resize: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps, classes, probabilities) by tf-keras-vis' Scorecam, `batch_size` masked copies per
    forward pass; with `max_n` (Faster-Score-CAM) each image's `max_n` most varied channels."""
    probabilities = predict_batches(model, images, batch_size)
    classes, _ = select_classes(probabilities, requested)
    targets = _score_classes(classes, probabilities.shape[-1])
    score_model, layer = cached(
        model, ("scorecam", layer_name, max_n), lambda: _score_model(model, layer_name, max_n)
    )
    cam = Scorecam(score_model, clone=False)(
        _Classes(targets), images, penultimate_layer=layer,
        seek_penultimate_conv_layer=False, batch_size=batch_size, expand_cam=False,
        normalize_cam=False,
    )  # fmt: skip
    cam = np.asarray(cam, np.float32)
    cam = cam.reshape(len(images), *cam.shape[-2:])
    if resize:
        cam = _resize(cam, images.shape[1:3]).numpy()
    return cam.astype(np.float32), classes, probabilities


def features_function(model: keras.Model, layer_name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """Compiled images -> the layer's maps (float32), through tf-keras-vis' sub-model."""
    stand_in, layer = reachable(model, layer_name)
    features = ExtractIntermediateLayerForGradcam(layer, False, include_model_outputs=False)(
        stand_in
    )

    @tf.function(input_signature=[image_spec(model)], autograph=False)
    def run(images: tf.Tensor) -> tf.Tensor:
        return tf.cast(features([images], training=False), tf.float32)

    return run


def plain_maps(
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
    """engine="tf-keras-vis": the library called as its documentation shows, for comparison.

    Gradient methods on a clone with `ReplaceToLinear` (logit score), Grad-CAM++ with its
    exp(score) factor; Score-CAM on the log-probabilities; eager, upsampled by scipy; Faster
    Score-CAM takes the union of every image's top channels over the batch.
    """
    probabilities = predict_batches(model, images, batch_size)
    classes, _ = select_classes(probabilities, requested)
    if layer_name not in [layer.name for layer in model.layers]:
        find_layer(model, layer_name)  # no such layer at all: that error first
        raise ValueError(f"tf-keras-vis cannot reach {layer_name!r} inside a nested model")
    common = {"penultimate_layer": layer_name, "seek_penultimate_conv_layer": False}
    common |= {"normalize_cam": False, "expand_cam": resize}
    if method in SCORE_METHODS:
        channels = model.get_layer(layer_name).output.shape[-1]
        top = min(max_n, channels) if method == "faster-scorecam" and max_n else None
        target = keras.Model(model.inputs, _log_probabilities(model))
        cam = Scorecam(target, clone=False)(
            CategoricalScore(_score_classes(classes, probabilities.shape[-1])), images,
            batch_size=batch_size, max_N=top, **common,
        )  # fmt: skip
    else:
        linear = score == "logit" and logit_layer(model) is not None
        visualizer = _PLAIN[method](model, model_modifier=ReplaceToLinear() if linear else None)
        cam = visualizer(CategoricalScore([int(c) for c in classes]), images, **common)
    cam = np.asarray(cam, np.float32)
    return cam.reshape(len(images), *cam.shape[-2:]), classes, probabilities
