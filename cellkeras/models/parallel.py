"""`ParallelCNN`: N branches on one shared input, merged into one float32 softmax.

The seed's "parallel CNNs": intentionally different architectures make different mistakes, and
their merge cancels some of them. The graph is flat (no nested sub-models) so every layer,
including each branch's `<branch>_last_conv`, is reachable with `model.get_layer(name)`.

Layer naming convention:
    `<branch>_...`           every layer of a branch (keras.applications layers excepted)
    `<branch>_last_conv`     the branch's last spatial feature map (Grad-CAM target)
    `<branch>_logits`        the branch's class logits
    `<branch>_probs`         the branch's own float32 softmax (in the graph when the merge
                             reads probabilities; `branch_models` adds it otherwise)
    `merge_...`, `probs`     the merge head and the model's output (multi-branch models)
`model.last_conv_layers` maps branch name -> last-conv layer name for every branch type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from cellkeras.models.branches import build_branch, class_logits, resolve_branch
from cellkeras.models.layers import StackedMerge, WeightedAverage

MERGES = ("concat", "average", "weighted", "stacked")
# A branch's layers are named after it (`<name>_logits`), which for these would clash with the
# merge head's `merge_*` layers or the analysis model's "merged" output.
RESERVED_BRANCH_NAMES = ("merge", "merged")


def _policy_name(dtype: Any) -> str | None:
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, keras.DTypePolicy):
        return dtype.name
    raise TypeError(f"dtype must be None, a policy name or a keras.DTypePolicy, got {dtype!r}.")


@keras.saving.register_keras_serializable(package="cellkeras")
class ParallelCNN(keras.Model):
    """A multi-branch image classifier with a merged float32 softmax output.

    With one branch it is simply that branch (output layer `<branch>_probs`), which is how the
    registry's single-branch models are built, so every model shares one code path.

    Args:
        num_classes: number of classes.
        channels: image channels; the input is (None, None, channels) float32 in [0, 1].
        branches: branch specs: preset names (see `cellkeras.models.branches.BRANCH_PRESETS`)
            or dicts (optionally `{"preset": ..., <overrides>}`); names must be unique.
        merge: how branch outputs become the model's output:
            "concat": concatenate (see `merge_on`) -> Dense(head_units, relu) -> Dense -> softmax,
                as the seed did;
            "average": mean of the branch probabilities (no trainable head);
            "weighted": learned convex weights over the branch probabilities;
            "stacked": weighted branch log-probabilities (`StackedMerge`): each branch trains
                by its own loss alone, the weights are fitted afterwards on held-out images
                (`cellkeras.training.fit_stacking`), so the merge is at least its best branch
                on them.
        merge_on: what "concat" concatenates: "logits" (the seed: each branch's class logits) or
            "features" (each branch's pooled features, next to its logits so that every branch
            head stays in the graph).
        head_units: hidden width of the "concat" head.
        dtype: dtype policy (name or `keras.DTypePolicy`) for the layers, e.g. "mixed_float16";
            None follows the global policy. Softmax outputs are float32 in every case.
        class_ranks: for ordered classes (stages of a time-lapse), each class's place in the
            order: every head ends in `OrdinalLogits` instead of a dense layer. None: dense.
        **kwargs: `name`, `trainable`.

    Attributes:
        branch_names: the branch names, in order.
        last_conv_layers: branch name -> name of its last conv (feature-map) layer.
        branch_layer_names: branch name -> names of the layers that belong only to it.
        head_layer_names: the merge head's layers.
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        branches: Sequence[str | Mapping[str, Any]] = ("edge", "deep_narrow"),
        merge: str = "concat",
        merge_on: str = "logits",
        head_units: int = 16,
        dtype: str | keras.DTypePolicy | None = None,
        class_ranks: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        if merge not in MERGES:
            raise ValueError(f"Unknown merge {merge!r}; known: {', '.join(MERGES)}.")
        if merge_on not in ("logits", "features"):
            raise ValueError(f"merge_on must be 'logits' or 'features', got {merge_on!r}.")
        specs = [resolve_branch(b) for b in branches]
        names = [s["name"] for s in specs]
        if not specs or len(set(names)) != len(names):
            raise ValueError(f"Need at least one branch, with unique names; got {names}.")
        reserved = sorted(set(names) & set(RESERVED_BRANCH_NAMES))
        if reserved:
            raise ValueError(
                f"Branch names {reserved} are taken by the model itself (reserved: "
                f"{', '.join(RESERVED_BRANCH_NAMES)}); give the branch spec another `name`."
            )
        policy = _policy_name(dtype)

        # === Functional graph ===
        images = keras.Input(shape=(None, None, channels), name="images")
        ranks = None if class_ranks is None else [int(r) for r in class_ranks]
        built = {s["name"]: build_branch(images, s, num_classes, policy, ranks) for s in specs}
        if len(built) == 1:
            outputs = next(iter(built.values())).probs
        elif merge == "concat":
            # An ordinal head's logits fall with the squared distance along the order (millions
            # far from a class, beyond float16): its probabilities carry the same ranking.
            parts = [b.probs if ranks else b.logits for b in built.values()]
            if merge_on == "features":
                # The heads stay among the inputs: it keeps every branch head in the graph, which
                # per-branch accuracy, auxiliary branch losses and stage-wise training all read.
                parts = [b.features for b in built.values()] + parts
            x = keras.layers.Concatenate(name="merge_concat", dtype=policy)(parts)
            x = keras.layers.Dense(
                head_units, activation="relu", name="merge_hidden", dtype=policy
            )(x)
            x = class_logits(x, "merge_logits", num_classes, policy, ranks)
            outputs = keras.layers.Activation("softmax", name="probs", dtype="float32")(x)
        elif merge == "average":
            outputs = keras.layers.Average(name="probs", dtype="float32")(
                [b.probs for b in built.values()]
            )
        elif merge == "stacked":
            outputs = StackedMerge(name="probs", dtype="float32")(
                [b.logits for b in built.values()]
            )
        else:
            outputs = WeightedAverage(name="probs", dtype="float32")(
                [b.probs for b in built.values()]
            )
        super().__init__(inputs=images, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.channels = channels
        self.branch_specs = specs
        self.merge = merge
        self.merge_on = merge_on
        self.head_units = head_units
        self.policy_name = policy
        self.class_ranks = ranks

        # === Bookkeeping for analysis and stage-wise training ===
        self.branch_names = names
        self.last_conv_layers = {n: b.last_conv for n, b in built.items()}
        self.branch_layer_names = {
            n: [
                layer.name
                for layer in keras.Model(images, b.probs).layers
                if not isinstance(layer, keras.layers.InputLayer)
            ]
            for n, b in built.items()
        }
        in_branches = {name for names_ in self.branch_layer_names.values() for name in names_}
        self.head_layer_names = [
            layer.name
            for layer in self.layers
            if layer.name not in in_branches and not isinstance(layer, keras.layers.InputLayer)
        ]

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "channels": self.channels,
            "branches": [dict(s) for s in self.branch_specs],
            "merge": self.merge,
            "merge_on": self.merge_on,
            "head_units": self.head_units,
            "dtype": self.policy_name,
            "class_ranks": self.class_ranks,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ParallelCNN:
        config = dict(config)
        # A local backbone weights file need not exist where the model is loaded: the saved
        # model carries the weights.
        config["branches"] = [
            {**b, "weights": None} if b.get("type") == "application" else b
            for b in config["branches"]
        ]
        return cls(**config)


def branch_names(model: keras.Model) -> list[str]:
    """Branch names of `model`: a `ParallelCNN`, or any model with `<branch>_logits` layers."""
    if isinstance(model, ParallelCNN):
        return list(model.branch_names)
    return [
        layer.name[: -len("_logits")]
        for layer in model.layers
        if layer.name.endswith("_logits") and layer.name != "merge_logits"
    ]


def _inputs(model: keras.Model) -> Any:
    # A single input stays a bare tensor, so callers may pass an array rather than a list.
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def _branch_probs(model: keras.Model, name: str) -> Any:
    """The symbolic probabilities of one branch of `model`.

    A "concat" merge reads the branch logits, so `<branch>_probs` is not part of the model's
    graph; a float32 softmax over `<branch>_logits` (weightless) stands in for it.
    """
    try:
        return model.get_layer(f"{name}_probs").output
    except ValueError:
        logits = model.get_layer(f"{name}_logits").output
        return keras.layers.Activation("softmax", name=f"{name}_probs", dtype="float32")(logits)


def branch_models(model: keras.Model) -> dict[str, keras.Model]:
    """One model per branch, sharing the weights of `model`: images -> that branch's probs.

    Train one of them and `model` changes with it (stage-wise training relies on this).
    """
    return {
        name: keras.Model(_inputs(model), _branch_probs(model, name), name=name)
        for name in branch_names(model)
    }


def analysis_model(model: keras.Model) -> keras.Model:
    """A model sharing `model`'s weights whose output is a dict: `"merged"` -> the model's
    probabilities, and `<branch>` -> each branch's own probabilities."""
    outputs = {"merged": model.outputs[0]}
    for name in branch_names(model):
        outputs[name] = _branch_probs(model, name)
    return keras.Model(_inputs(model), outputs, name=f"{model.name}_analysis")


def last_conv_layer(model: keras.Model, branch: str | None = None) -> str:
    """Name of a branch's last conv layer (Grad-CAM's default target).

    Args:
        model: the model.
        branch: branch name; None means the first branch.
    """
    names = branch_names(model)
    branch = names[0] if branch is None else branch
    if branch not in names:
        raise ValueError(f"Model has no branch {branch!r}; branches: {names}.")
    if isinstance(model, ParallelCNN):
        return model.last_conv_layers[branch]
    return f"{branch}_last_conv"
