"""Figures of explanations: overlay panels per branch / class / method, first-layer filters and
feature maps. The only module of `cellkeras.explain` that touches matplotlib; it draws on Agg
canvases, so it never changes the caller's pyplot backend. Save with
`cellkeras.evaluate.plots.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cellkeras.explain.overlay import overlay, to_rgb_uint8


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_explanation_panels(
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    row_labels: Sequence[str] | None = None,
    column_subtitles: Mapping[str, Sequence[str]] | None = None,
    title: str | None = None,
    colormap: str = "jet",
) -> Figure:
    """A grid: one row per image, the image then one overlay per named set of maps.

    Args:
        images: (N, H, W, C) in [0, 1].
        maps: column name (a branch, class or method) -> (N, H, W) maps in [0, 1].
        row_labels: one label per image (e.g. the true class), shown left of the row.
        column_subtitles: column name -> one line per image (e.g. "blast 0.97").
        title: figure title.
        colormap: an OpenCV colormap name (see `cellkeras.explain.overlay.COLORMAPS`).
    """
    n, columns = len(images), ["image", *maps]
    fig = _figure(1.6 * len(columns) + 0.4, 1.75 * n + 0.5)
    axes = fig.subplots(n, len(columns), squeeze=False)
    for i in range(n):
        for j, name in enumerate(columns):
            ax = axes[i, j]
            shown = (
                to_rgb_uint8(images[i])
                if j == 0
                else overlay(images[i], maps[name][i], colormap=colormap)
            )
            ax.imshow(shown)
            ax.set_xticks([])
            ax.set_yticks([])
            text = name if i == 0 else ""
            sub = (column_subtitles or {}).get(name)
            if sub is not None:
                text = f"{text}\n{sub[i]}" if text else sub[i]
            ax.set_title(text, fontsize=8)
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def plot_filters(kernels: np.ndarray, title: str | None = None, max_filters: int = 64) -> Figure:
    """First-layer conv kernels (kh, kw, in, out), one tile per filter.

    Three input channels are shown as colour, any other count as the channel mean in grey; each
    tile is stretched to its own range (a kernel's pattern, not its scale, is what one reads).
    """
    count = min(kernels.shape[-1], max_filters)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    fig = _figure(0.9 * cols + 0.4, 0.9 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if k >= count:
            continue
        tile = kernels[..., k]
        tile = tile if tile.shape[-1] == 3 else tile.mean(axis=-1)
        low, high = tile.min(), tile.max()
        ax.imshow((tile - low) / (high - low + 1e-12), cmap=None if tile.ndim == 3 else "gray")
        ax.set_title(str(k), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_feature_maps(
    maps: np.ndarray, title: str | None = None, max_maps: int = 32, cmap: str = "viridis"
) -> Figure:
    """One image's feature maps (h, w, K) of a layer, one tile per channel."""
    count = min(maps.shape[-1], max_maps)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    fig = _figure(1.0 * cols + 0.4, 1.0 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if k < count:
            ax.imshow(maps[..., k], cmap=cmap)
            ax.set_title(str(k), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
