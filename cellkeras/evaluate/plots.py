"""Figures for evaluation results. The only module of `cellkeras.evaluate` that touches
matplotlib; it draws on Agg canvases, so it never changes the caller's pyplot backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as PNG (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_confusion_matrices(
    matrices: Mapping[str, Any],
    classes: Sequence[str],
    subtitles: Mapping[str, str] | None = None,
    title: str | None = None,
) -> Figure:
    """Confusion matrices side by side, as the seed compared its branches and their merge.

    Cells are coloured by the row-normalized rate (recall per true class) and annotated with
    the counts, so classes of different sizes compare fairly.

    Args:
        matrices: name -> (K, K) counts, row = true class.
        classes: class names (axis ticks).
        subtitles: optional name -> second title line (e.g. "acc 0.91").
        title: figure title.
    """
    n = len(matrices)
    k = len(classes)
    side = 1.2 + 0.55 * k
    fig = _figure(side * n + 0.8, side + 1.4)
    axes = fig.subplots(1, n, squeeze=False)[0]
    image = None
    for ax, (name, matrix) in zip(axes, matrices.items(), strict=True):
        counts = np.asarray(matrix, dtype=np.float64)
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        image = ax.imshow(rates, vmin=0.0, vmax=1.0, cmap="Blues")
        for i in range(k):
            for j in range(k):
                ax.text(
                    j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.6 else "black",
                )  # fmt: skip
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes if ax is axes[0] else [""] * k, fontsize=8)
        ax.set_xlabel("predicted")
        if ax is axes[0]:
            ax.set_ylabel("true")
        sub = (subtitles or {}).get(name)
        ax.set_title(f"{name}\n{sub}" if sub else name, fontsize=10)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="fraction of true class")
    if title:
        fig.suptitle(title)
    return fig


def plot_reliability(
    bins_by_model: Mapping[str, Mapping[str, Any]], title: str | None = None
) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, one line per model, over
    a bar chart of how many images fall in each bin (a point made of 3 images says little).

    The last model's counts (the merged model's, in `evaluate_branches`' order) are written
    on its bars.

    Args:
        bins_by_model: name -> `cellkeras.evaluate.classification.reliability_bins(...)` output.
        title: figure title.
    """
    fig = _figure(4.8, 5.6)
    ax, counts_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.25))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    names = list(bins_by_model)
    edges = np.asarray(next(iter(bins_by_model.values()))["edges"]) if names else np.zeros(2)
    width = (edges[1] - edges[0]) * 0.8 / max(len(names), 1)
    for k, (name, bins) in enumerate(bins_by_model.items()):
        count = np.asarray(bins["count"])
        filled = count > 0
        xs = np.asarray(bins["confidence"])[filled]
        ys = np.asarray(bins["accuracy"])[filled]
        (line,) = ax.plot(xs, ys, marker="o", label=name)
        centres = (edges[:-1] + edges[1:]) / 2 + (k - (len(names) - 1) / 2) * width
        bars = counts_ax.bar(centres, count, width, color=line.get_color())
        if k == len(names) - 1:
            counts_ax.bar_label(bars, [str(c) if c else "" for c in count], fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "reliability")
    highest = max((int(np.max(b["count"])) for b in bins_by_model.values()), default=1)
    counts_ax.set_ylim(0, max(highest, 1) * 1.3)  # room for the numbers on the bars
    counts_ax.set_ylabel("images", fontsize=8)
    counts_ax.set_xlabel("confidence (top class)")
    counts_ax.tick_params(labelsize=7)
    return fig


def plot_image_gallery(
    images: Sequence[np.ndarray] | np.ndarray,
    captions: Sequence[str],
    title: str | None = None,
    columns: int = 6,
    tile_inches: float = 1.45,
) -> Figure:
    """Images in a grid, each with a caption under it (e.g. the true and predicted class).

    Args:
        images: (H, W[, C]) images, shown by `cellkeras.io.display.to_display_rgb`'s rules.
        captions: one per image; "\n" breaks lines.
        title: figure title.
        columns: tiles per row at most.
        tile_inches: a tile's side.
    """
    from cellkeras.io.display import to_display_rgb

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    count = max(len(images), 1)
    columns = min(columns, count)
    rows = int(np.ceil(count / columns))
    lines = max((c.count("\n") + 1 for c in captions), default=1)
    fig = _figure(tile_inches * columns + 0.3, (tile_inches + 0.14 * lines) * rows + 0.5)
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(images):
            ax.set_axis_off()
            continue
        ax.imshow(to_display_rgb(np.asarray(images[k])), interpolation="bicubic")
        # An x label, not a title moved down: the layout then keeps it clear of the image.
        ax.set_xlabel(captions[k], fontsize=7, linespacing=1.15)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_accuracy_comparison(
    results: Mapping[str, Mapping[str, Sequence[float]]], title: str | None = None
) -> Figure:
    """Grouped bars of accuracy (mean and min-max over seeds) per dataset and model.

    Args:
        results: dataset name -> {model name -> accuracies, one per seed}.
        title: figure title.
    """
    datasets = list(results)
    models = list(dict.fromkeys(m for d in datasets for m in results[d]))
    fig = _figure(1.6 + 1.1 * len(models) * len(datasets) ** 0.5 + 1.5, 4.0)
    ax = fig.subplots()
    width = 0.8 / len(datasets)
    for d, dataset in enumerate(datasets):
        xs, means, lows, highs = [], [], [], []
        for m, model in enumerate(models):
            values = np.asarray(results[dataset].get(model, []), dtype=np.float64)
            if values.size == 0:
                continue
            xs.append(m + (d - (len(datasets) - 1) / 2) * width)
            means.append(values.mean())
            lows.append(values.mean() - values.min())
            highs.append(values.max() - values.mean())
        ax.bar(xs, means, width * 0.9, yerr=[lows, highs], capsize=3, label=dataset)
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig


def plot_training_curves(
    history: Sequence[Mapping[str, Any]],
    stage_boundaries: Sequence[int] = (),
    stage_labels: Sequence[str] = (),
    title: str | None = None,
) -> Figure:
    """Loss and accuracy per epoch (train and validation) with the schedule's stages marked.

    Args:
        history: one mapping per epoch with `epoch`, `loss`, `accuracy`, `val_loss`,
            `val_accuracy` (the rows of Keras' CSVLogger file; values may be strings).
        stage_boundaries: epoch counts after which a new stage begins.
        stage_labels: one label per stage (e.g. its image size), written at its start.
    """
    epochs = np.array([int(row["epoch"]) + 1 for row in history])

    def series(key):
        return np.array([float(row[key]) for row in history if key in row])

    fig = _figure(10, 3.6)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-o"), (f"val_{metric}", "-s")):
            values = series(key)
            if len(values) == len(epochs):
                ax.plot(epochs, values, style, markersize=4, label=key)
        starts = [0, *stage_boundaries]
        for start in stage_boundaries:
            ax.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
        # Side by side, more than three labels collide (stage-wise runs have a phase per
        # branch and size): then each stands upright along its stage's start.
        upright = len(stage_labels) > 3
        for start, label in zip(starts, stage_labels, strict=False):
            ax.annotate(
                f"{label} px",
                xy=(start + (0.6 if upright else 0.8), 0.98),
                xycoords=("data", "axes fraction"),
                va="top",
                ha="left",
                rotation=90 if upright else 0,
                fontsize=8,
                color="dimgrey",
            )
        ax.set_xlim(0.5, max(epochs[-1], 1) + 0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
