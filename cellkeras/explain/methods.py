"""Names of the explanation methods and engines, apart from the TensorFlow code behind them so
that command-line parsing can list them cheaply."""

GRADIENT_METHODS = ("gradcam", "gradcam++", "layercam")
SCORE_METHODS = ("scorecam", "faster-scorecam")
METHODS = (*GRADIENT_METHODS, *SCORE_METHODS, "occlusion")
ENGINES = ("cellkeras", "tf-keras-vis")
SCORES = ("logit", "probability")
MERGED = "merged"
