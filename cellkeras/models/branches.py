"""Branch builders: functions that grow one branch of a model graph from a shared input tensor.

A branch is described by a plain dict (its *spec*): `type` picks the builder, the other keys
are the builder's arguments. Every branch is size-agnostic (it ends in global average pooling),
rescales its own input (images arrive in [0, 1]), and ends in its own classifier head, so it can
be trained and evaluated alone. Layer names carry the branch name as a prefix, and each branch's
last spatial feature map is the layer `<branch>_last_conv` (for keras.applications backbones
the application's own last layer, recorded in `BranchOutputs.last_conv`), which is what Grad-CAM
targets.

Named specs (`BRANCH_PRESETS`) cover the seed's two branches, an edge branch and a stronger
modern one; `resolve_branch` turns a preset name or a partial dict into a full spec.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

from cellkeras.models.layers import OrdinalLogits, SobelEdges

Spec = dict[str, Any]

# Keras' default 0.99 needs hundreds of steps before the inference statistics match the
# training ones; runs here are minutes long, and edge maps have tiny activation variance.
BN_MOMENTUM = 0.9

BRANCH_PRESETS: dict[str, Spec] = {
    # The seed's branch 2, "deeper, narrower", 5x5 kernels; widened a little (seed: 4, 8) and
    # given more layers so it is deep enough to see a whole cell at 64-96 px.
    "deep_narrow": {
        "type": "conv",
        "filters": [8, 8, 16, 16, 24, 24],
        "kernel_size": 5,
        "pool_sizes": [0, 2, 0, 2, 0, 2],
        "batch_norm": True,
        "dense_units": [48],
    },
    # The seed's branch 1 without its Canny input: few layers, more filters, 3x3 kernels and
    # aggressive early pooling (seed: maxpool 5 then 3).
    "wide_shallow": {
        "type": "conv",
        "filters": [32, 32, 32],
        "kernel_size": 3,
        "pool_sizes": [4, 2, 0],
        "batch_norm": True,
        "dense_units": [64],
    },
    # For sliding-window detection: no convolution or pooling reads past its input, so a window's
    # features are those of the whole image's trunk over the window (cellkeras.detect.dense
    # reproduces the window heat exactly and runs the trunk once per image). Receptive field
    # 24 px, stride 4: a 32 px window ends in a 3x3 map; it needs at least 24 px inputs.
    "valid_narrow": {
        "type": "conv",
        "filters": [16, 16, 32, 32, 48],
        "kernel_size": 3,
        "pool_sizes": [0, 2, 0, 2, 0],
        "padding": "valid",
        "batch_norm": True,
        "dense_units": [48],
    },
    # The seed's branch 1 as it was: wide-shallow on an edge map, here computed in the graph.
    "edge": {
        "type": "conv",
        "edges": "canny",
        # Edge maps are >= 0, mostly 0 and rarely above 0.3: keep "no edge" at 0 rather than
        # shifting it to -1, and stretch the rest towards unit range.
        "scale": 5.0,
        "offset": 0.0,
        "filters": [32, 32, 32],
        "kernel_size": 3,
        "pool_sizes": [4, 2, 0],
        "batch_norm": True,
        "dense_units": [64],
    },
    # A modern branch: depthwise-separable residual blocks with batch norm.
    "sepres": {
        "type": "sepres",
        "stem_filters": 24,
        "widths": [32, 64, 96],
        "blocks_per_stage": 1,
        "head_filters": 128,
        "dense_units": [],
    },
    "sepres_large": {
        "type": "sepres",
        "stem_filters": 32,
        "widths": [48, 96, 160, 256],
        "blocks_per_stage": 2,
        "head_filters": 320,
        "dense_units": [],
        "dropout": 0.2,
    },
    # keras.applications backbone, random init (nothing is downloaded); pass `weights` (a local
    # file) in the spec to start from trained weights.
    "mobilenet_v2": {
        "type": "application",
        "application": "MobileNetV2",
        "weights": None,
        "application_kwargs": {"alpha": 0.35},
        "dense_units": [],
    },
}


# keras.applications backbones downsample by 32 with "valid" strided convolutions: a smaller
# input fails inside the graph ("Negative dimension size"), so schedules keep stages at least
# this big for them.
APPLICATION_MIN_SIDE = 32


def min_input_side(spec: str | Mapping[str, Any]) -> int:
    """The smallest image side (px) the branch builds and runs on (1: any size)."""
    return APPLICATION_MIN_SIDE if resolve_branch(spec)["type"] == "application" else 1


def branch_preset_names() -> list[str]:
    """Names accepted as branch specs."""
    return sorted(BRANCH_PRESETS)


def resolve_branch(spec: str | Mapping[str, Any]) -> Spec:
    """A complete branch spec from a preset name or a dict.

    Args:
        spec: a preset name (`"deep_narrow"`), or a dict. A dict may name a `preset` to start
            from and override any of its keys; `name` defaults to the preset name.

    Returns:
        A new dict with at least `name` and `type`.

    Raises:
        ValueError: for an unknown preset or builder type.
    """
    if isinstance(spec, str):
        spec = {"preset": spec}
    spec = dict(spec)
    preset = spec.pop("preset", None)
    if preset is not None:
        if preset not in BRANCH_PRESETS:
            raise ValueError(
                f"Unknown branch preset {preset!r}; known: {', '.join(branch_preset_names())}."
            )
        spec = {**copy.deepcopy(BRANCH_PRESETS[preset]), "name": preset, **spec}
    if "name" not in spec:
        raise ValueError(f"Branch spec {spec} needs a `name` (or a `preset`).")
    if spec.get("type") not in BUILDERS:
        raise ValueError(
            f"Branch {spec['name']!r} has unknown type {spec.get('type')!r}; "
            f"known: {', '.join(sorted(BUILDERS))}."
        )
    return spec


@dataclasses.dataclass
class BranchOutputs:
    """The tensors of one built branch.

    Attributes:
        features: pooled features (B, D).
        logits: (B, num_classes), in the layers' compute dtype.
        probs: float32 softmax (B, num_classes), layer `<name>_probs`.
        last_conv: name of the layer holding the branch's last spatial feature map.
    """

    features: Any
    logits: Any
    probs: Any
    last_conv: str


def build_branch(
    images: Any,
    spec: Mapping[str, Any],
    num_classes: int,
    dtype: Any = None,
    class_ranks: Sequence[int] | None = None,
) -> BranchOutputs:
    """Grow one branch from `images` (a symbolic (B, H, W, C) tensor in [0, 1]).

    Args:
        images: the model's input tensor.
        spec: a resolved spec (see `resolve_branch`).
        num_classes: size of the branch's classifier head.
        dtype: dtype policy for the branch's layers; None follows the global policy. The
            softmax is always float32.
        class_ranks: the classes' order (class index -> rank) for an ordinal head
            (`OrdinalLogits`); None is a dense head, one direction per class.

    Returns:
        The branch's tensors, see `BranchOutputs`.
    """
    spec = dict(spec)
    name = spec.pop("name")
    builder = BUILDERS[spec.pop("type")]
    head_kw = {k: spec.pop(k) for k in ("dense_units", "dropout") if k in spec}
    x = _preprocess(images, name, spec, dtype)
    feature_map, last_conv = builder(x, name=name, dtype=dtype, **spec)
    features = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool", dtype=dtype)(feature_map)
    logits = _dense_head(features, name, num_classes, dtype, class_ranks, **head_kw)
    probs = keras.layers.Activation("softmax", name=f"{name}_probs", dtype="float32")(logits)
    return BranchOutputs(features=features, logits=logits, probs=probs, last_conv=last_conv)


def _preprocess(images, name: str, spec: Spec, dtype) -> Any:
    """In-graph input preparation: optional edge map, then rescaling [0, 1] -> [-1, 1]."""
    edges = spec.pop("edges", None)
    keep_image = spec.pop("keep_image", False)
    scale, offset = spec.pop("scale", 2.0), spec.pop("offset", -1.0)
    x = images
    if edges:
        # Float32 regardless of policy: no weights here, and float16 would quantize the
        # magnitudes that the threshold compares against.
        x = SobelEdges(mode=edges, keep_image=keep_image, name=f"{name}_edges", dtype="float32")(x)
    return keras.layers.Rescaling(scale, offset, name=f"{name}_rescale", dtype=dtype)(x)


def _dense_head(
    features, name: str, num_classes: int, dtype, class_ranks=None, dense_units=(), dropout=0.0
):
    x = features
    for i, units in enumerate(dense_units, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"{name}_fc{i}", dtype=dtype)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{name}_dropout", dtype=dtype)(x)
    return class_logits(x, f"{name}_logits", num_classes, dtype, class_ranks)


def class_logits(x, name: str, num_classes: int, dtype, class_ranks=None):
    """The last layer of a classifier head: dense, or ordinal (float32) when `class_ranks` is
    given."""
    if class_ranks is None:
        return keras.layers.Dense(num_classes, name=name, dtype=dtype)(x)
    if len(class_ranks) != num_classes:
        raise ValueError(
            f"{name}: class_ranks has {len(class_ranks)} entries for {num_classes} classes."
        )
    # float32 whatever the policy: the squared distances of an image far along the order
    # overflow float16 (65504) and bfloat16 blurs the position near a boundary.
    return OrdinalLogits(class_ranks, name=name, dtype="float32")(x)


def _conv_builder(
    x,
    *,
    name: str,
    dtype,
    filters: Sequence[int],
    kernel_size: int = 3,
    pool_sizes: Sequence[int] | None = None,
    batch_norm: bool = False,
    padding: str = "same",
) -> tuple[Any, str]:
    """A plain conv stack (the seed's branches): conv -> ReLU [-> max-pool] per layer.

    `pool_sizes[i]` (0 = none) pools after conv i with stride = size. `padding` applies to the
    convolutions and the pools: "same" keeps at least one pixel of even an 8 px input;
    "valid" never reads zero padding, so a crop's features equal the whole image's over it.
    """
    if padding not in ("same", "valid"):
        raise ValueError(f"Branch {name!r}: padding must be 'same' or 'valid', got {padding!r}.")
    pool_sizes = list(pool_sizes or [0] * len(filters))
    if len(pool_sizes) != len(filters):
        raise ValueError(f"Branch {name!r}: {len(filters)} filters but {len(pool_sizes)} pools.")
    for i, (width, pool) in enumerate(zip(filters, pool_sizes, strict=True), start=1):
        last = i == len(filters)
        conv_name = f"{name}_last_conv" if last and not batch_norm else f"{name}_conv{i}"
        x = keras.layers.Conv2D(
            width,
            kernel_size,
            padding=padding,
            activation=None if batch_norm else "relu",
            use_bias=not batch_norm,
            name=conv_name,
            dtype=dtype,
        )(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(
                momentum=BN_MOMENTUM, name=f"{name}_bn{i}", dtype=dtype
            )(x)
            act_name = f"{name}_last_conv" if last else f"{name}_relu{i}"
            x = keras.layers.Activation("relu", name=act_name, dtype=dtype)(x)
        if pool:
            x = keras.layers.MaxPooling2D(
                pool, padding=padding, name=f"{name}_pool{i}", dtype=dtype
            )(x)
    return x, f"{name}_last_conv"


def _sepres_builder(
    x,
    *,
    name: str,
    dtype,
    stem_filters: int = 24,
    widths: Sequence[int] = (32, 64, 96),
    blocks_per_stage: int = 1,
    kernel_size: int = 3,
    head_filters: int = 128,
) -> tuple[Any, str]:
    """Depthwise-separable residual network: a strided stem, then per stage one strided block
    and `blocks_per_stage - 1` plain ones, then a 1x1 conv (`<name>_last_conv`)."""

    def conv_bn(x, filters, tag, kernel=3, strides=1, separable=False, relu=True):
        layer = keras.layers.SeparableConv2D if separable else keras.layers.Conv2D
        x = layer(
            filters, kernel, strides=strides, padding="same", use_bias=False,
            name=f"{name}_{tag}", dtype=dtype,
        )(x)  # fmt: skip
        x = keras.layers.BatchNormalization(
            momentum=BN_MOMENTUM, name=f"{name}_{tag}_bn", dtype=dtype
        )(x)
        if relu:
            x = keras.layers.Activation("relu", name=f"{name}_{tag}_relu", dtype=dtype)(x)
        return x

    x = conv_bn(x, stem_filters, "stem", strides=2)
    for s, width in enumerate(widths, start=1):
        for b in range(1, blocks_per_stage + 1):
            tag = f"s{s}b{b}"
            strides = 2 if b == 1 else 1
            y = conv_bn(x, width, f"{tag}_sep1", kernel_size, strides, separable=True)
            y = conv_bn(y, width, f"{tag}_sep2", kernel_size, separable=True, relu=False)
            shortcut = x
            if strides != 1 or x.shape[-1] != width:
                shortcut = conv_bn(x, width, f"{tag}_proj", 1, strides, relu=False)
            x = keras.layers.Add(name=f"{name}_{tag}_add", dtype=dtype)([shortcut, y])
            x = keras.layers.Activation("relu", name=f"{name}_{tag}_out", dtype=dtype)(x)
    x = keras.layers.Conv2D(
        head_filters, 1, activation="relu", name=f"{name}_last_conv", dtype=dtype
    )(x)
    return x, f"{name}_last_conv"


def _application_builder(
    x,
    *,
    name: str,
    dtype,
    application: str = "MobileNetV2",
    weights: str | None = None,
    application_kwargs: Mapping[str, Any] | None = None,
) -> tuple[Any, str]:
    """A keras.applications backbone grown on `x` (its layers join the model's own graph, so
    Grad-CAM can reach them). `weights` is None or a local file: "imagenet" would download.

    keras.applications take no dtype argument; their layers follow the global policy.
    """
    del dtype
    constructor = getattr(keras.applications, application, None)
    if not callable(constructor):
        raise ValueError(f"Branch {name!r}: keras.applications has no {application!r}.")
    if weights is not None and not str(weights).endswith((".h5", ".keras", ".weights.h5")):
        raise ValueError(
            f"Branch {name!r}: weights must be None or a local weights file, got {weights!r} "
            "(cellkeras never downloads)."
        )
    backbone = constructor(
        include_top=False, weights=None, input_tensor=x, pooling=None, **(application_kwargs or {})
    )
    if weights is not None:
        backbone.load_weights(weights, skip_mismatch=True)
    return backbone.output, backbone.layers[-1].name


BUILDERS: dict[str, Callable[..., tuple[Any, str]]] = {
    "conv": _conv_builder,
    "sepres": _sepres_builder,
    "application": _application_builder,
}
