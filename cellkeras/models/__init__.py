"""Models: branch builders, the parallel (multi-branch) model and the registry.

model = create_model("parallel_small", num_classes=4, channels=3)
probs = model(images)                   # float32 (B, 4); images float32 in [0, 1]
branch_models(model)["deep_narrow"]     # that branch alone, sharing weights
model.get_layer("deep_narrow_last_conv")  # Grad-CAM target (see `last_conv_layer`)
"""

from cellkeras.models.branches import BRANCH_PRESETS, build_branch, resolve_branch
from cellkeras.models.layers import SobelEdges, WeightedAverage
from cellkeras.models.parallel import (
    MERGES,
    ParallelCNN,
    analysis_model,
    branch_models,
    branch_names,
    last_conv_layer,
)
from cellkeras.models.registry import DEFAULT_MODEL, MODEL_PRESETS, create_model, list_models

__all__ = [
    "BRANCH_PRESETS",
    "DEFAULT_MODEL",
    "MERGES",
    "MODEL_PRESETS",
    "ParallelCNN",
    "SobelEdges",
    "WeightedAverage",
    "analysis_model",
    "branch_models",
    "branch_names",
    "build_branch",
    "create_model",
    "last_conv_layer",
    "list_models",
    "resolve_branch",
]
