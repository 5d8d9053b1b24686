"""Example explanation figures for the README, and a faithfulness comparison of the methods.

Command:

    python -m trainer.task        # the main job: runs/default/model.keras
    python scripts/make_explain_figures.py --model runs/default/model.keras --size 96

or, without a trained model, `python scripts/make_explain_figures.py --epochs 6` trains
`parallel_small` briefly at 64 px first (weakly: some panels then explain wrong predictions).
Machine: the project's 2-core CPU VM (no GPU), TensorFlow 2.21 CPU build (3-5 minutes).

The images are synthetic blood-smear cells from a generator seed the trainer never uses. Writes
  docs/images/explain_branches.png      Grad-CAM per branch and merged, one row per class
  docs/images/explain_methods.png       Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM, occlusion
  docs/images/explain_filters.png       first-layer kernels of the raw-image branch
  docs/images/explain_feature_maps.png  one image's deep_narrow last-conv feature maps
and prints (and writes to docs/images/explain_faithfulness.json) each method's average drop and
deletion-curve AUC on validation images.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a trained .keras classifier of the synthetic cells")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train", type=int, default=800)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", default="docs/images")
    parser.add_argument("--faithfulness_images", type=int, default=32)
    args = parser.parse_args()

    from cellkeras.data.synthetic import generate_cells
    from cellkeras.evaluate.plots import save_figure
    from cellkeras.explain import (
        average_drop,
        compute_explanation,
        deletion_curve,
        feature_maps,
        first_conv_kernels,
    )
    from cellkeras.explain.plots import plot_explanation_panels, plot_feature_maps, plot_filters
    from cellkeras.models import create_model
    from cellkeras.training import compile_classifier

    keras.utils.set_random_seed(0)
    # Seed 7919: images no training run here has seen (the trainer generates with its seed, 0).
    data = generate_cells(args.train + 200, image_size=args.size, seed=7919)
    images = data.images.astype(np.float32) / 255.0
    labels = keras.utils.to_categorical(data.labels, len(data.classes))
    train, val = slice(0, args.train), slice(args.train, None)
    if args.model:
        model = keras.models.load_model(args.model)
    else:
        model = compile_classifier(create_model("parallel_small", len(data.classes), channels=3))
        start = time.perf_counter()
        model.fit(images[train], labels[train], validation_data=(images[val], labels[val]),
                  epochs=args.epochs, batch_size=32, verbose=2)  # fmt: skip
        print(f"trained in {time.perf_counter() - start:.0f} s")

    val_images, val_labels = images[val], data.labels[val]
    picks = [int(np.flatnonzero(val_labels == k)[0]) for k in range(len(data.classes))]
    shown = val_images[picks]
    rows = [f"true: {data.classes[val_labels[i]]}" for i in picks]
    out = Path(args.out)

    def subtitles(result):
        return [
            f"{data.classes[c]} {p:.2f}"
            for c, p in zip(result.class_index, result.probability, strict=True)
        ]

    maps, subs = {}, {}
    for branch in ("edge", "deep_narrow", "merged"):
        result = compute_explanation(model, shown, "gradcam", branch=branch)
        maps[branch], subs[branch] = result.maps, subtitles(result)
    fig = plot_explanation_panels(
        shown, maps, rows, subs, title="Grad-CAM per branch (predicted class)"
    )
    print(save_figure(fig, out / "explain_branches.png"))

    methods = ("gradcam", "gradcam++", "layercam", "scorecam", "occlusion")
    maps, subs = {}, {}
    for method in methods:
        result = compute_explanation(
            model, shown, method, branch="merged" if method != "occlusion" else None
        )
        maps[method], subs[method] = result.maps, subtitles(result)
    fig = plot_explanation_panels(shown, maps, rows, subs, title="Methods on the merged model")
    print(save_figure(fig, out / "explain_methods.png"))

    name, kernels = first_conv_kernels(model)
    raw_branch = [layer.name for layer in model.layers if layer.name == "deep_narrow_conv1"]
    if raw_branch:
        name, kernels = raw_branch[0], np.asarray(model.get_layer(raw_branch[0]).kernel)
    print(
        save_figure(
            plot_filters(kernels, f"first-layer kernels: {name}"), out / "explain_filters.png"
        )
    )
    fm = feature_maps(model, shown[:1], "deep_narrow_last_conv")[0]
    fig = plot_feature_maps(fm, f"deep_narrow_last_conv, {rows[0]}")
    print(save_figure(fig, out / "explain_feature_maps.png"))

    subset = val_images[: args.faithfulness_images]
    random_maps = np.random.default_rng(0).random(subset.shape[:3]).astype(np.float32)
    table = {}
    for method in (*methods, "random"):
        t = time.perf_counter()
        if method == "random":
            heat = random_maps
        else:
            branch = "merged" if method != "occlusion" else None
            heat = compute_explanation(model, subset, method, branch=branch).maps
        seconds = time.perf_counter() - t
        drop = average_drop(model, subset, heat, fraction=0.2)
        curve = deletion_curve(model, subset, heat, steps=10)
        table[method] = {
            "average_drop": round(drop["average_drop"], 4),
            "increase_rate": round(drop["increase_rate"], 4),
            "deletion_auc": round(curve["mean_auc"], 4),
            "seconds": round(seconds, 2),
        }
        print(method, table[method])
    accuracy = float(np.mean(model.predict(val_images, verbose=0).argmax(-1) == val_labels))
    report = {"val_accuracy": accuracy, "images": len(subset), "size": args.size, "methods": table}
    (out / "explain_faithfulness.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
