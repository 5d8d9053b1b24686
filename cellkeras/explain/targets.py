"""What a map explains: the target layer(s), the explained output (a branch's or the model's) and
the output layer whose input is the class logit."""

from __future__ import annotations

from typing import Any

import keras

from cellkeras.explain.common import cached
from cellkeras.explain.methods import MERGED
from cellkeras.inference.loading import feature_layers

_POOLING = ("Pooling", "Dropout", "SpatialDropout", "GaussianNoise")


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


def is_conv(layer: Any) -> bool:
    return "Conv" in type(layer).__name__


def branch_names(model: keras.Model) -> list[str]:
    """The branches of a ParallelCNN (or of a model with `<branch>_logits` and
    `<branch>_last_conv` layers) that can be explained; [] for other models."""
    from cellkeras.models import ParallelCNN
    from cellkeras.models import branch_names as named

    names = named(model)
    # A generic model may name a layer `x_logits` by chance: a branch needs its last conv too.
    parallel = isinstance(model, ParallelCNN)
    return [n for n in names if parallel or _has_layer(model, f"{n}_last_conv")]


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

    if branch_names(model):
        return last_conv_layer(model, branch)
    if branch is not None:
        raise ValueError(f"{model.name} has no branches; branch={branch!r} cannot be explained")
    layers = feature_layers(model)
    if not any(is_conv(layer) for layer in layers):
        raise ValueError(
            f"{model.name} has no convolutional layer (no layer with a 4-D feature-map output): "
            "class-activation maps need one; use method='occlusion' instead"
        )
    spatial = [layer for layer in layers if not any(p in type(layer).__name__ for p in _POOLING)]
    return (spatial or layers)[-1].name


def resolve_target(
    model: keras.Model, layer_name: str | None, branch: str | None
) -> tuple[keras.Model, list[str]]:
    """(the model whose output is explained, the layer names whose maps are summed)."""
    from cellkeras.models import last_conv_layer

    if branch == MERGED:
        names = branch_names(model)
        if not names:
            raise ValueError(f"{model.name} has no branches to merge maps over")
        return model, [last_conv_layer(model, n) for n in names]
    if branch is not None:
        names = branch_names(model)
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


def _branch_model(model: keras.Model, branch: str) -> keras.Model:
    from cellkeras.models import branch_models

    return cached(model, ("branch", branch), lambda: branch_models(model)[branch])


def logit_layer(model: keras.Model) -> Any:
    """The output layer when its activation is softmax/sigmoid (its input is the logit)."""
    history = getattr(model.outputs[0], "_keras_history", None)
    layer = history[0] if history else None
    name = getattr(getattr(layer, "activation", None), "__name__", "")
    return layer if name in ("softmax", "sigmoid") else None
