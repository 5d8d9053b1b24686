"""`fold_geometric`: turn a chain of geometric augmentation layers into one resample.

Every Keras / keras-cv geometric layer resamples the whole batch again (each costs about as
much as `FluidDistortion` itself, and each interpolation blurs a little more): a mesh
distortion followed by Keras' `RandomFlip` and `RandomRotation` ran at a quarter of the fused
layer's rate. `FluidDistortion` already composes flips, rotation, zoom, translation and crop
with its field into one affine map per image, so a chain of such layers can be folded into it.

The folded layer draws the same distribution as the chain, not the same images: flips commute
with symmetric rotations in distribution, and the one change is that the affine part applies
after the distortion field instead of in list order (the field is statistically the same
turned by 15 degrees, up to the fixed border of the mesh).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from cellkeras.augment.fluid import FluidDistortion

_FOLDABLE = ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation")
# The FluidDistortion arguments that one layer of a folded run may set; two layers setting
# the same one (two rotations: the sum of two uniform angles is not uniform) start a new run.
_DRAWN = ("magnitude", "rotation", "translate", "zoom", "crop_area")
_FLUID_ARGS = (
    "mode",
    "magnitude",
    "grid",
    "smoothness",
    "flip_horizontal",
    "flip_vertical",
    "rotation",
    "translate",
    "zoom",
    "zoom_width",
    "crop_area",
    "fill_mode",
    "fill_value",
    "interpolation",
    "bounding_box_format",
    "seed",
    "jit_compile",
)
_KERAS_FILL = {"reflect": "reflect", "nearest": "nearest", "constant": "constant"}


def fold_geometric(layers: Sequence[keras.layers.Layer]) -> list[keras.layers.Layer]:
    """Fold each run of geometric layers in `layers` into one `FluidDistortion`.

    Folded: `FluidDistortion`, and Keras' or keras-cv's `RandomFlip`, `RandomRotation`,
    `RandomZoom`, `RandomTranslation` with symmetric ranges, channels-last data and fill modes
    "reflect", "nearest" or "constant". Any other layer (colour, mixing, a "wrap" fill) is kept
    where it is and ends the run before it.

    Args:
        layers: augmentation layers in the order they would be called.

    Returns:
        The layers to call instead, in order; a chain of geometric layers alone becomes a list
        of one `FluidDistortion`.
    """
    out: list[keras.layers.Layer] = []
    run: dict | None = None
    for layer in layers:
        args = _as_fluid_args(layer)
        if args is None:
            if run is not None:
                out.append(FluidDistortion(**run))
                run = None
            out.append(layer)
            continue
        if run is not None and not _compatible(run, args):
            out.append(FluidDistortion(**run))
            run = None
        run = args if run is None else _merge(run, args)
    if run is not None:
        out.append(FluidDistortion(**run))
    return out


def _defaults() -> dict:
    return {"magnitude": 0.0, "fill_mode": "reflect", "fill_value": 0.0}


def _symmetric(value) -> float | None:
    """Half-width of a symmetric range given as a number or a (low, high) pair, else None."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return abs(float(value))
    low, high = (float(v) for v in value)
    return high if abs(low + high) < 1e-9 else None


def _as_fluid_args(layer) -> dict | None:
    """The `FluidDistortion` arguments equivalent to `layer`, or None if it does not fold."""
    if isinstance(layer, FluidDistortion):
        config = layer.get_config()
        return {k: config[k] for k in _FLUID_ARGS if k in config}
    name = type(layer).__name__
    module = type(layer).__module__
    if name not in _FOLDABLE or not module.startswith(("keras.", "keras_cv.")):
        return None
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return None
    fill = getattr(layer, "fill_mode", "reflect")
    if fill not in _KERAS_FILL:
        return None
    args = _defaults()
    args.update(fill_mode=_KERAS_FILL[fill], fill_value=float(getattr(layer, "fill_value", 0.0)))
    if getattr(layer, "interpolation", "bilinear") == "nearest":
        args["interpolation"] = "nearest"
    seed = getattr(layer, "seed", None)
    if isinstance(seed, int):
        args["seed"] = seed
    if name == "RandomFlip":
        mode = layer.mode
        args["flip_horizontal"] = "horizontal" in mode
        args["flip_vertical"] = "vertical" in mode
        return args
    if name == "RandomRotation":
        half = _symmetric(layer.factor)
        if half is None:
            return None
        args["rotation"] = half * 360.0
        return args
    if name == "RandomTranslation":
        hy = _symmetric(layer.height_factor)
        wx = _symmetric(layer.width_factor)
        if hy is None or wx is None:
            return None
        args["translate"] = (wx, hy)
        return args
    # RandomZoom: Keras draws a zoom in [1 + low, 1 + high], one for both axes unless a
    # width_factor is given (then drawn separately).
    args["zoom"] = _range(layer.height_factor)
    if layer.width_factor is not None:
        args["zoom_width"] = _range(layer.width_factor)
    return args


def _range(value) -> tuple[float, float]:
    if isinstance(value, int | float):
        return -abs(float(value)), abs(float(value))
    low, high = (float(v) for v in value)
    return low, high


def _is_set(args: dict, key: str) -> bool:
    value = args.get(key)
    if key == "crop_area":
        return value is not None and value < 1.0
    if isinstance(value, list | tuple):
        return any(float(v) != 0.0 for v in value)
    return bool(value)


def _compatible(run: dict, args: dict) -> bool:
    if any(_is_set(run, k) and _is_set(args, k) for k in _DRAWN):
        return False
    if run.get("fill_mode", "reflect") != args.get("fill_mode", "reflect"):
        return False
    if run.get("fill_value", 0.0) != args.get("fill_value", 0.0):
        return False
    return run.get("interpolation", "bilinear") == args.get("interpolation", "bilinear")


def _merge(run: dict, args: dict) -> dict:
    merged = dict(run)
    for key, value in args.items():
        if key in ("flip_horizontal", "flip_vertical"):
            # Two fair coin flips of one axis compose to one fair coin flip.
            merged[key] = bool(run.get(key)) or bool(value)
        elif key == "seed":
            merged.setdefault("seed", value)
            if merged["seed"] is None:
                merged["seed"] = value
        elif key in _DRAWN or key == "zoom_width":
            if _is_set(args, key) or key not in merged:
                merged[key] = value
        elif key in ("mode", "grid", "smoothness"):
            if _is_set(args, "magnitude"):
                merged[key] = value
        else:
            merged.setdefault(key, value)
    return merged
