"""Batched Grad-CAM throughput against per-image loops of the keras.io algorithm and of
tf-keras-vis, on the same model and images.

Command (the numbers in docs/BENCHMARKS.md, "## Explain"):

    python scripts/bench_explain.py --size 64 --images 64

Machine: the project's 2-core CPU VM (no GPU), TensorFlow 2.21 CPU build, Python 3.11.

What is timed (images per second, after one warm-up call of each, so tracing is excluded):
  - cellkeras: `gradcam(model, images, batch_size=64)`: one compiled forward + GradientTape
    over the whole batch, maps resized to the input in the same graph, normalized.
  - keras.io: the `make_gradcam_heatmap` function of keras-io `examples/vision/grad_cam.py`
    called once per image (its grad model built once, as in the example), plus the resize to
    the input size (cv2, bilinear) the example does before drawing.
  - tf-keras-vis 0.8.7: `Gradcam(model)(CategoricalScore([c]), image, penultimate_layer=...)`
    once per image (its documented use; it resizes with scipy itself).
All three explain the same layer (the first branch's last conv) of an untrained
`parallel_small` (speed does not depend on the weights) for the predicted class.
The issue's target: cellkeras >= 5x the per-image keras.io reference.
"""

from __future__ import annotations

import argparse
import json
import os
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


def rate(fn, count: int, seconds: float) -> float:
    """Images per second of `fn` (which explains `count` images), repeated for `seconds`."""
    fn()  # warm-up: tracing and first-call costs
    done, start = 0, time.perf_counter()
    while True:
        fn()
        done += count
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--per_image", type=int, default=16, help="images in the per-image loops")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--model", default="parallel_small")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import CategoricalScore

    from cellkeras.explain import default_layer, gradcam, predict
    from cellkeras.models import create_model

    keras.utils.set_random_seed(0)
    model = create_model(args.model, 4, channels=3)
    layer = default_layer(model)
    images = np.random.default_rng(0).random((args.images, args.size, args.size, 3))
    images = images.astype(np.float32)
    few = images[: args.per_image]
    classes = predict(model, few).argmax(-1)
    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    visualizer = Gradcam(model, clone=False)

    def ours():
        gradcam(model, images, layer_name=layer, batch_size=64, score="probability")

    def reference():
        for image in few:
            heat = keras_io_heatmap(image[None], grad_model)
            cv2.resize(heat, (args.size, args.size), interpolation=cv2.INTER_LINEAR)

    def tf_keras_vis():
        for image, c in zip(few, classes, strict=True):
            visualizer(CategoricalScore([int(c)]), image[None], penultimate_layer=layer,
                       seek_penultimate_conv_layer=False)  # fmt: skip

    results = {
        "cellkeras batched (batch 64)": rate(ours, len(images), args.seconds),
        "keras.io per image": rate(reference, len(few), args.seconds),
        "tf-keras-vis per image": rate(tf_keras_vis, len(few), args.seconds),
    }
    base = results["cellkeras batched (batch 64)"]
    print(f"Grad-CAM, {args.model} at {args.size} px, layer {layer}, {os.cpu_count()} CPU cores")
    print(f"{'method':<30} {'images/s':>9} {'cellkeras x':>12}")
    for name, value in results.items():
        print(f"{name:<30} {value:>9.1f} {base / value:>12.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"size": args.size, "model": args.model, "images_per_s": results}, f, indent=2
            )


if __name__ == "__main__":
    main()
