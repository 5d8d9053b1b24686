"""Models: branch builders, the parallel (multi-branch) model and the registry.

model = create_model("parallel_small", num_classes=4, channels=3)
probs = model(images)                   # float32 (B, 4); images float32 in [0, 1]
branch_models(model)["deep_narrow"]     # that branch alone, sharing weights
model.get_layer("deep_narrow_last_conv")  # Grad-CAM target (see `last_conv_layer`)

Names are imported on first use, so listing the model names (`cellkeras.models.names`) does not
load TensorFlow. Loading a saved model needs its classes registered with Keras: import
`cellkeras.models.registry` first.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "branches": ["BRANCH_PRESETS", "build_branch", "resolve_branch"],
        "layers": ["OrdinalLogits", "SobelEdges", "WeightedAverage"],
        "names": ["DEFAULT_MODEL", "MODEL_NAMES"],
        "parallel": [
            "MERGES",
            "ParallelCNN",
            "analysis_model",
            "branch_models",
            "branch_names",
            "last_conv_layer",
        ],
        "registry": ["MODEL_PRESETS", "create_model", "list_models"],
    },
)
