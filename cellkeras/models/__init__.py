"""Models: branch builders, the parallel (multi-branch) model and the registry.

model = create_model("parallel_small", num_classes=4, channels=3)
probs = model(images)                   # float32 (B, 4); images float32 in [0, 1]
branch_models(model)["deep_narrow"]     # that branch alone, sharing weights
model.get_layer("deep_narrow_last_conv")  # Grad-CAM target (see `last_conv_layer`)

Names are imported on first use, so listing the model names (`cellkeras.models.names`) does not
load TensorFlow. Loading a saved model needs its classes registered with Keras: import
`cellkeras.models.registry` first.
"""

from cellkeras._lazy import lazy_exports

_EXPORTS = {
    "BRANCH_PRESETS": "cellkeras.models.branches",
    "build_branch": "cellkeras.models.branches",
    "resolve_branch": "cellkeras.models.branches",
    "SobelEdges": "cellkeras.models.layers",
    "WeightedAverage": "cellkeras.models.layers",
    "MERGES": "cellkeras.models.parallel",
    "ParallelCNN": "cellkeras.models.parallel",
    "analysis_model": "cellkeras.models.parallel",
    "branch_models": "cellkeras.models.parallel",
    "branch_names": "cellkeras.models.parallel",
    "last_conv_layer": "cellkeras.models.parallel",
    "DEFAULT_MODEL": "cellkeras.models.names",
    "MODEL_NAMES": "cellkeras.models.names",
    "MODEL_PRESETS": "cellkeras.models.registry",
    "create_model": "cellkeras.models.registry",
    "list_models": "cellkeras.models.registry",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
