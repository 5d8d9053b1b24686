"""Grad-CAM-family throughput: tf-keras-vis called plainly, cellkeras (tf-keras-vis' classes,
compiled around them) and the keras.io per-image loop, in one run on the same model and images.

Command (the numbers in docs/BENCHMARKS.md, "## Explain"):

    python scripts/bench_explain.py --size 64 --images 64

Machine: the project's 2-core CPU VM (no GPU; `lscpu` names the CPU, printed below),
TensorFlow 2.21 CPU build, Keras 3.15, tf-keras-vis 0.8.7, Python 3.11.

What is timed (images per second; every entry is called once first, so tracing and warm-up are
excluded; then `--rounds` interleaved rounds, one call of each entry per round, best round kept):
  - tf-keras-vis (plain): its documented use, called once on the whole batch:
    `Gradcam(model, model_modifier=ReplaceToLinear())` (built once, outside the timing), then
    `visualizer(CategoricalScore(classes), images, penultimate_layer=layer,
    seek_penultimate_conv_layer=False)` with its default upsampling (scipy) and normalization.
    Likewise GradcamPlusPlus and Layercam; Scorecam on the model as is (its docs: no
    ReplaceToLinear), with max_N=10 for Faster-Score-CAM (which then keeps the union of the
    batch's top channels, where cellkeras keeps each image's own).
  - cellkeras: `explain(model, images, method, layer_name=layer)`, maps at the input's size in
    [0, 1]: tf-keras-vis' classes traced into one compiled function (gradient methods) or run on
    compiled stand-ins (Score-CAM), see `cellkeras/explain/tfkv.py`.
  - keras.io: `make_gradcam_heatmap` of keras-io `examples/vision/grad_cam.py` called once per
    image (its grad model built once, outside the timing, which favours it), plus the resize to
    the input (cv2, bilinear) the example does before drawing; `--per_image` images per call.
Each explains the same layer (the first branch's last conv) of an untrained `parallel_small`
(speed does not depend on the weights) for each image's predicted class. Score-CAM rows use the
first `--score_images` images (every image costs one forward pass per channel).
The issue's target: cellkeras Grad-CAM >= 5x plain tf-keras-vis on the same batch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def keras_io_heatmap(img_array, grad_model, pred_index=None):
    """keras.io `make_gradcam_heatmap`, with the grad model built once outside."""
    with tf.GradientTape() as tape:
        last_conv_layer_output, preds = grad_model(img_array)
        if pred_index is None:
            pred_index = tf.argmax(preds[0])
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
    heatmap = last_conv_layer_output[0] @ pooled_grads[..., tf.newaxis]
    heatmap = tf.squeeze(heatmap)
    heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
    return heatmap.numpy()


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
    return names[0] if names else "unknown CPU"


def best_rates(entries: dict, rounds: int) -> dict[str, float]:
    """Images per second of each `(fn, count)`, best of `rounds` interleaved rounds."""
    for fn, _ in entries.values():
        fn()  # tracing and first-call costs
    best = dict.fromkeys(entries, 0.0)
    for _ in range(rounds):
        for name, (fn, count) in entries.items():
            start = time.perf_counter()
            fn()
            best[name] = max(best[name], count / (time.perf_counter() - start))
    return best


def plain_entries(model, images, layer, classes, score_images):
    """tf-keras-vis 0.8.7 as documented, on the whole batch (Score-CAM: its first images)."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    where = {"penultimate_layer": layer, "seek_penultimate_conv_layer": False}
    score = CategoricalScore([int(c) for c in classes])
    few, few_score = (
        images[:score_images],
        CategoricalScore([int(c) for c in classes[:score_images]]),
    )
    entries = {}
    for method, cls in (
        ("gradcam", Gradcam),
        ("gradcam++", GradcamPlusPlus),
        ("layercam", Layercam),
    ):
        visualizer = cls(model, model_modifier=ReplaceToLinear())
        entries[method] = (lambda v=visualizer: v(score, images, **where), len(images))
    scorecam = Scorecam(model)

    def quiet(**kw):  # Keras' predict prints a progress bar per call
        with contextlib.redirect_stdout(io.StringIO()):
            scorecam(few_score, few, **where, **kw)

    entries["scorecam"] = (quiet, len(few))
    entries["faster-scorecam"] = (lambda: quiet(max_N=10), len(few))
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--per_image", type=int, default=16, help="images in the keras.io loop")
    parser.add_argument("--score_images", type=int, default=16, help="images in Score-CAM rows")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="parallel_small")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from cellkeras.explain import default_layer, explain, predict
    from cellkeras.models import create_model

    keras.utils.set_random_seed(0)
    model = create_model(args.model, 4, channels=3)
    layer = default_layer(model)
    images = np.random.default_rng(0).random((args.images, args.size, args.size, 3))
    images = images.astype(np.float32)
    classes = predict(model, images).argmax(-1)
    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    few, score_few = images[: args.per_image], images[: args.score_images]

    def keras_io():
        for image in few:
            heat = keras_io_heatmap(image[None], grad_model)
            cv2.resize(heat, (args.size, args.size), interpolation=cv2.INTER_LINEAR)

    methods = ("gradcam", "gradcam++", "layercam", "scorecam", "faster-scorecam")
    plain = plain_entries(model, images, layer, classes, args.score_images)
    entries = {}
    for method in methods:
        batch = score_few if "scorecam" in method else images
        entries[f"tf-keras-vis {method}"] = plain[method]
        entries[f"cellkeras {method}"] = (
            lambda m=method, b=batch: explain(model, b, m, layer_name=layer),
            len(batch),
        )
    entries["keras.io gradcam"] = (keras_io, len(few))
    rates = best_rates(entries, args.rounds)

    print(f"{args.model} at {args.size} px, layer {layer}, {args.images} images "
          f"(Score-CAM {args.score_images}), best of {args.rounds} interleaved rounds")  # fmt: skip
    print(f"{os.cpu_count()} CPU cores: {cpu_name()}; TensorFlow {tf.__version__}")
    print(f"{'method':<16} {'tf-keras-vis':>13} {'cellkeras':>10} {'x plain':>8} {'keras.io':>9}")
    for method in methods:
        base, ours = rates[f"tf-keras-vis {method}"], rates[f"cellkeras {method}"]
        io_rate = f"{rates['keras.io gradcam']:>9.1f}" if method == "gradcam" else f"{'':>9}"
        print(f"{method:<16} {base:>13.1f} {ours:>10.1f} {ours / base:>7.1f}x {io_rate}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"size": args.size, "model": args.model, "images_per_s": rates}, f, indent=2)


if __name__ == "__main__":
    main()
