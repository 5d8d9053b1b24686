"""Figures of explanations: one image's overlays in a row (what `cellkeras explain` writes),
overlay grids per branch / class / method, first-layer filters and feature maps. The only module of `cellkeras.explain` that touches matplotlib; it draws on Agg
canvases, so it never changes the caller's pyplot backend. Save with
`cellkeras.evaluate.plots.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colorbar import ColorbarBase
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure

from cellkeras.explain.overlay import (
    DISPLAY_MAX_SIDE,
    DISPLAY_MIN_SIDE,
    colormap_colours,
    display_size,
    overlay,
    resize_smooth,
    to_rgb_uint8,
)

# `plot_overlay_row`'s layout in pixels at `ROW_DPI`: panels are drawn one image pixel to one
# PNG pixel, so the file's size follows from the image's (and a test can check it exactly).
ROW_DPI = 100
_MARGIN, _GAP, _TITLE, _BAR, _BAR_TEXT = 10, 12, 46, 16, 74


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def colormap_for_colorbar(colormap: str = "jet") -> ListedColormap:
    """The OpenCV colormap `overlay` blends with, as a matplotlib colormap for a colour bar."""
    return ListedColormap(colormap_colours(colormap), name=f"cv2_{colormap}")


def overlay_row_size(
    image_shape: Sequence[int],
    panels: int,
    min_side: int = DISPLAY_MIN_SIDE,
    max_side: int = DISPLAY_MAX_SIDE,
) -> tuple[int, int]:
    """(height, width) in pixels of `plot_overlay_row`'s PNG for an image of `image_shape`
    and `panels` panels (the image and its overlays), saved at `ROW_DPI`."""
    height, width = display_size(int(image_shape[0]), int(image_shape[1]), min_side, max_side)
    return (
        _TITLE + height + _MARGIN,
        _MARGIN + panels * width + panels * _GAP + _BAR + _BAR_TEXT,
    )


def plot_overlay_row(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    image_title: str = "image",
    colormap: str = "jet",
    colorbar_label: str = "heat (1 = the map's peak)",
    vmax: float | None = None,
    min_side: int = DISPLAY_MIN_SIDE,
    max_side: int = DISPLAY_MAX_SIDE,
) -> Figure:
    """One image and its heatmap overlays side by side, each panel titled, with a colour bar.

    Panels keep the image's aspect; image and maps are resized together (`resize_smooth`) so
    the short side is at least `min_side` pixels, and a map of another size than the image
    (the model's input size, say) is stretched onto it. Save at `ROW_DPI` (`save_figure(fig,
    path, dpi=ROW_DPI)`) for a PNG of `overlay_row_size(...)`.

    Args:
        image: (H, W[, C]) the image as shown (floats in [0, 1] or integers).
        maps: (h, w) heatmaps in [0, 1] (or raw, up to `vmax`), one per overlay panel.
        titles: one title per map (e.g. "edge branch\nneutrophil 0.93"); "\n" breaks lines.
        image_title: the first panel's title.
        colormap: an OpenCV colormap name (see `cellkeras.explain.overlay.COLORMAPS`).
        colorbar_label: what the colour bar's scale means.
        vmax: the value shown as the hottest colour (None: 1, a normalized map).
    """
    if len(maps) != len(titles):
        raise ValueError(f"{len(maps)} maps but {len(titles)} titles")
    size = display_size(image.shape[0], image.shape[1], min_side, max_side)
    shown = resize_smooth(to_rgb_uint8(image), size)
    panels = [shown] + [
        overlay(shown, resize_smooth(np.asarray(m, np.float32), size), colormap=colormap,
                vmax=vmax)
        for m in maps
    ]  # fmt: skip
    fig_h, fig_w = overlay_row_size(image.shape, len(panels), min_side, max_side)
    fig = Figure(figsize=(fig_w / ROW_DPI, fig_h / ROW_DPI), dpi=ROW_DPI)
    FigureCanvasAgg(fig)
    bottom = _MARGIN / fig_h
    for k, (panel, title) in enumerate(zip(panels, [image_title, *titles], strict=True)):
        left = _MARGIN + k * (size[1] + _GAP)
        ax = fig.add_axes((left / fig_w, bottom, size[1] / fig_w, size[0] / fig_h))
        ax.imshow(panel, interpolation="none")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=10, linespacing=1.1)
    bar_left = _MARGIN + len(panels) * (size[1] + _GAP)
    bar_ax = fig.add_axes((bar_left / fig_w, bottom, _BAR / fig_w, size[0] / fig_h))
    bar = ColorbarBase(
        bar_ax,
        cmap=colormap_for_colorbar(colormap),
        norm=Normalize(0.0, vmax or 1.0),
        orientation="vertical",
    )
    bar.set_label(colorbar_label, fontsize=9)
    bar_ax.tick_params(labelsize=8)
    return fig


def plot_explanation_panels(
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    row_labels: Sequence[str] | None = None,
    column_subtitles: Mapping[str, Sequence[str]] | None = None,
    title: str | None = None,
    colormap: str = "jet",
    colorbar_label: str | None = None,
) -> Figure:
    """A grid: one row per image, the image then one overlay per named set of maps.

    Args:
        images: (N, H, W, C) in [0, 1].
        maps: column name (a branch, class or method) -> (N, H, W) maps in [0, 1].
        row_labels: one label per image (e.g. the true class), shown left of the row.
        column_subtitles: column name -> one line per image (e.g. "blast 0.97").
        title: figure title.
        colormap: an OpenCV colormap name (see `cellkeras.explain.overlay.COLORMAPS`).
        colorbar_label: when given, a colour bar of the maps' 0-1 scale with this label.
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
    if colorbar_label:
        scale = ScalarMappable(Normalize(0.0, 1.0), colormap_for_colorbar(colormap))
        fig.colorbar(scale, ax=axes[:, 1:].ravel().tolist() or axes.ravel().tolist(),
                     shrink=0.8, label=colorbar_label)  # fmt: skip
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


def plot_maps_under_images(
    images: np.ndarray,
    maps: np.ndarray,
    titles: Sequence[str],
    colormap: str = "jet",
    colorbar_label: str = "heat (1 = the map's peak)",
    title: str | None = None,
    tile_inches: float = 1.9,
) -> Figure:
    """A few images in a row, each with its heatmap overlay under it and a title over it, and
    one colour bar for the maps' 0-1 scale.

    Args:
        images: (N, H, W, C) in [0, 1].
        maps: (N, H, W) in [0, 1].
        titles: one per image (e.g. "true neutrophil\\npredicted neutrophil 0.98").
        colormap: an OpenCV colormap name (see `cellkeras.explain.overlay.COLORMAPS`).
        colorbar_label: what the colour bar's scale means.
        title: figure title.
    """
    n = len(images)
    if not (len(maps) == len(titles) == n):
        raise ValueError(f"{n} images, {len(maps)} maps and {len(titles)} titles")
    fig = _figure(tile_inches * max(n, 1) + 1.0, 2 * tile_inches + 0.8)
    axes = fig.subplots(2, max(n, 1), squeeze=False)
    for k in range(n):
        top, bottom = axes[0, k], axes[1, k]
        top.imshow(to_rgb_uint8(images[k]), interpolation="bicubic")
        bottom.imshow(overlay(images[k], maps[k], colormap=colormap), interpolation="bicubic")
        top.set_title(titles[k], fontsize=8, linespacing=1.15)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=9)
    axes[1, 0].set_ylabel("map over the image", fontsize=9)
    scale = ScalarMappable(Normalize(0.0, 1.0), colormap_for_colorbar(colormap))
    fig.colorbar(scale, ax=axes.ravel().tolist(), shrink=0.6, label=colorbar_label)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
