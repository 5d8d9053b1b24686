"""The model registry: `create_model(name, num_classes, ...)` by preset name.

A preset is a plain dict of `ParallelCNN` arguments. Single-branch presets exist so every branch
can be trained and benchmarked alone against the merged models.
"""

from __future__ import annotations

import copy
from typing import Any

import keras

from cellkeras.models.branches import BRANCH_PRESETS, min_input_side
from cellkeras.models.names import DEFAULT_MODEL
from cellkeras.models.parallel import ParallelCNN

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # The default: the seed's pair (wide-shallow on edges + deep-narrow), each branch trained
    # by its own loss and merged by weights fitted on held-out images ("stacked"): on real
    # data the seed's concat head fell below its own best branch (docs/BENCHMARKS.md "Real
    # data"). Small enough to train in minutes on a 2-core CPU.
    "parallel_small": {"branches": ["edge", "deep_narrow"], "merge": "stacked"},
    # The seed's merge of the same pair: concatenated logits and a small dense head.
    "parallel_small_concat": {"branches": ["edge", "deep_narrow"], "merge": "concat"},
    # All three small branches: the edge map, the raw-image wide-shallow one and deep-narrow.
    "parallel_three": {"branches": ["edge", "wide_shallow", "deep_narrow"], "merge": "concat"},
    # More accuracy for more compute: the modern branch next to the seed's edge branch.
    "parallel_large": {
        "branches": ["sepres", "edge", "deep_narrow"],
        "merge": "concat",
        "merge_on": "features",
        "head_units": 64,
    },
    # Each branch alone, for comparison (and for users who want one architecture).
    **{name: {"branches": [name]} for name in BRANCH_PRESETS},
}


def list_models() -> list[str]:
    """Names `create_model` accepts."""
    return sorted(MODEL_PRESETS)


def model_min_side(name: str) -> int:
    """The smallest image side (px) the registered model runs on: its pickiest branch's."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"Unknown model {name!r}; known models: {', '.join(list_models())}.")
    return max(min_input_side(branch) for branch in MODEL_PRESETS[name]["branches"])


def create_model(
    name: str = DEFAULT_MODEL, num_classes: int = 4, channels: int = 3, **kwargs: Any
) -> keras.Model:
    """Build a registered model.

    Args:
        name: a preset name, see `list_models()`.
        num_classes: number of output classes.
        channels: channels of the input images; the input shape is (None, None, channels),
            float32 in [0, 1].
        **kwargs: override the preset's `ParallelCNN` arguments (`branches`, `merge`,
            `merge_on`, `head_units`, `dtype`, `name`, ...).

    Returns:
        An uncompiled `ParallelCNN` whose output is float32 softmax probabilities (B, num_classes).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    if name not in MODEL_PRESETS:
        raise ValueError(f"Unknown model {name!r}; known models: {', '.join(list_models())}.")
    config = {**copy.deepcopy(MODEL_PRESETS[name]), "name": name, **kwargs}
    return ParallelCNN(num_classes=num_classes, channels=channels, **config)
