"""The registered models' names, apart from their Keras code so that listing them is cheap
(`--help`, checking a trainer's flags before TensorFlow loads). A test keeps it equal to
`cellkeras.models.list_models()`."""

MODEL_NAMES = (
    "deep_narrow",
    "edge",
    "mobilenet_v2",
    "parallel_large",
    "parallel_small",
    "parallel_small_concat",
    "parallel_three",
    "sepres",
    "sepres_large",
    "valid_narrow",
    "wide_shallow",
)
DEFAULT_MODEL = "parallel_small"
