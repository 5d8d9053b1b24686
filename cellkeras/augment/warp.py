"""The kernel behind `FluidDistortion`: one source-coordinate field per image, one gather.

Every geometric step of the layer is folded into

    source(p) = M @ (p + D(p)) + e

with `p` an output pixel (centred), `D` a smooth random displacement field, `M` a 2x2 matrix
(flips, rotation, crop zoom) and `e` an offset (crop position, translation), and the batch is
resampled once with one bilinear gather. `D` is interpolated from a small grid of random
control displacements by two tiny matrix products (separable interpolation), so building it
costs a few multiply-adds per pixel; the gather and blend then run as one fused XLA loop.
`forward_map_points` inverts the warp for bounding boxes.

Two displacement modes:
  - "mesh": Augmentor-style. A `grid` of cells whose interior vertices move by
    U(-magnitude, magnitude) x image size along x and y independently; border vertices stay
    put; displacement is bilinear inside each cell (what PIL's MESH/QUAD transform does).
  - "elastic": a smooth Gaussian field. Every control point of a lattice with spacing
    `smoothness` x image size draws N(0, 1); a cubic B-spline interpolates it and each pixel's
    displacement is rescaled to std `magnitude` x image size exactly (per axis).
"""

from __future__ import annotations

import functools
import math

import tensorflow as tf

MODES = ("mesh", "elastic")
FILL_MODES = ("reflect", "nearest", "constant")

# Fixed-point iterations used to invert the warp for boxes; the displacement's slope is well
# below 1 at sane magnitudes, so the error shrinks by that factor per step.
_INVERSE_ITERATIONS = 12


def num_control_points(mode: str, grid: tuple[int, int], smoothness: float) -> tuple[int, int]:
    """Control lattice size (rows, cols) for a mode; independent of the image size."""
    if mode == "mesh":
        return grid[1] + 1, grid[0] + 1
    # Cubic B-spline support is 4 knots, so the lattice reaches one knot before the first pixel
    # and two past the last.
    n = math.ceil(1.0 / smoothness) + 3
    return n, n


def control_weights(
    pos: tf.Tensor, extent: tf.Tensor, n: int, mode: str, smoothness: float
) -> tf.Tensor:
    """Interpolation weights of `n` control points at pixel positions `pos`.

    Args:
        pos: float pixel-index positions along one axis, any shape.
        extent: float scalar, (size - 1) of that axis.
        n: number of control points on the axis.
        mode: "mesh" (hat weights, lattice spans the image corner to corner) or "elastic"
            (cubic B-spline, rows normalised to unit L2 norm so the field's variance is the
            same at every pixel).
        smoothness: control spacing as a fraction of the axis (elastic only).

    Returns:
        float32 weights, shape `pos.shape + (n,)`.
    """
    extent = tf.maximum(extent, 1.0)
    knots = tf.range(n, dtype=tf.float32)
    if mode == "mesh":
        t = pos / extent * float(n - 1)
        return tf.nn.relu(1.0 - tf.abs(t[..., None] - knots))
    t = pos / (extent * smoothness) + 1.0
    u = tf.abs(t[..., None] - knots)
    w = tf.where(
        u < 1.0,
        2.0 / 3.0 - u * u + 0.5 * u * u * u,
        tf.where(u < 2.0, (2.0 - u) ** 3 / 6.0, tf.zeros_like(u)),
    )
    return w * tf.math.rsqrt(tf.reduce_sum(w * w, axis=-1, keepdims=True))


def _source_coordinates(
    shape: tf.Tensor,
    ctrl: tf.Tensor,
    affine: tf.Tensor,
    magnitude: tf.Tensor,
    mode: str,
    smoothness: float,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Source pixel coordinates (sx, sy), each (B, H, W), for every output pixel."""
    h = tf.cast(shape[1], tf.float32)
    w = tf.cast(shape[2], tf.float32)
    cx, cy = (w - 1.0) * 0.5, (h - 1.0) * 0.5
    ys = tf.range(h)
    xs = tf.range(w)
    ny, nx = ctrl.shape[1], ctrl.shape[2]
    wy = control_weights(ys, h - 1.0, ny, mode, smoothness)  # (H, ny)
    wx = control_weights(xs, w - 1.0, nx, mode, smoothness)  # (W, nx)
    # Separable interpolation. Along x it is a tiny matmul, (B, 2, ny, W). Along y it is
    # unrolled over the ny control rows into plain broadcast multiply-adds: XLA then fuses the
    # field into the gather loop instead of materialising (B, H, W, 2) through a batched dot,
    # which measured 7x slower than everything else in the kernel together.
    t = tf.einsum("bijc,wj->bciw", ctrl, wx)
    dx = dy = 0.0
    for i in range(ny):
        dx += wy[None, :, i, None] * t[:, 0, i, None, :]
        dy += wy[None, :, i, None] * t[:, 1, i, None, :]
    qx = (xs - cx)[None, None, :] + dx * (magnitude * w)
    qy = (ys - cy)[None, :, None] + dy * (magnitude * h)
    a, b, c, dd, ox, oy = (affine[:, i, None, None] for i in range(6))
    sx = a * qx + b * qy + (ox * w + cx)
    sy = c * qx + dd * qy + (oy * h + cy)
    return sx, sy


def _fold(v: tf.Tensor, size: tf.Tensor, fill_mode: str) -> tf.Tensor:
    """Map coordinates into [0, size - 1] by mirror reflection or clamping."""
    m = tf.cast(size, tf.float32) - 1.0
    if fill_mode == "reflect":
        # One mirror at each border covers warps up to a full image out, far more than any
        # preset asks for; floormod would be exact for any distance but is a libm call per
        # pixel and made the whole kernel 2x slower.
        v = m - tf.abs(m - tf.abs(v))
    return tf.clip_by_value(v, 0.0, m)


def _warp(
    images: tf.Tensor,
    ctrl: tf.Tensor,
    affine: tf.Tensor,
    magnitude: tf.Tensor,
    fill_value: tf.Tensor,
    *,
    mode: str,
    smoothness: float,
    fill_mode: str,
    interpolation: str,
) -> tf.Tensor:
    """Resample a float32 batch (B, H, W, C) through the random warp, in one gather."""
    shape = tf.shape(images)
    bsz, h, w, c = shape[0], shape[1], shape[2], shape[3]
    sx, sy = _source_coordinates(shape, ctrl, affine, magnitude, mode, smoothness)
    inside = None
    if fill_mode == "constant":
        wf, hf = tf.cast(w, tf.float32), tf.cast(h, tf.float32)
        inside = (sx > -0.5) & (sx < wf - 0.5) & (sy > -0.5) & (sy < hf - 0.5)
    sx = _fold(sx, w, fill_mode)
    sy = _fold(sy, h, fill_mode)
    flat = tf.reshape(images, [-1, c])
    base = (tf.range(bsz) * (h * w))[:, None, None]
    if interpolation == "nearest":
        idx = base + tf.cast(tf.round(sy), tf.int32) * w + tf.cast(tf.round(sx), tf.int32)
        out = tf.gather(flat, idx)
    else:
        x0f, y0f = tf.floor(sx), tf.floor(sy)
        fx, fy = (sx - x0f)[..., None], (sy - y0f)[..., None]
        x0, y0 = tf.cast(x0f, tf.int32), tf.cast(y0f, tf.int32)
        # Offsets to the right/lower neighbour: 0 on the last column/row, where fx/fy is 0.
        dx = tf.minimum(x0 + 1, w - 1) - x0
        dy = (tf.minimum(y0 + 1, h - 1) - y0) * w
        i00 = base + y0 * w + x0
        # Four gathers of C-float rows beat one gather of a 2x2-neighbourhood tensor: building
        # that tensor costs a full extra pass over the batch (measured, XLA CPU).
        p00 = tf.gather(flat, i00)
        p01 = tf.gather(flat, i00 + dx)
        p10 = tf.gather(flat, i00 + dy)
        p11 = tf.gather(flat, i00 + dx + dy)
        top = p00 + (p01 - p00) * fx
        bottom = p10 + (p11 - p10) * fx
        out = top + (bottom - top) * fy
        # Rounding can push a lerp an ulp past its end points; clipping to the four sources
        # keeps the value range exactly (uint8 stays in 0..255, [0, 1] stays in [0, 1]) without
        # an extra pass over the batch.
        lo = tf.minimum(tf.minimum(p00, p01), tf.minimum(p10, p11))
        hi = tf.maximum(tf.maximum(p00, p01), tf.maximum(p10, p11))
        out = tf.clip_by_value(out, lo, hi)
    if inside is not None:
        out = tf.where(inside[..., None], out, fill_value)
    return out


@functools.lru_cache(maxsize=64)
def compiled_warp(
    mode: str, smoothness: float, fill_mode: str, interpolation: str, jit_compile: bool
) -> tf.types.experimental.GenericFunction:
    """One compiled warp per static configuration, shared by all layers that use it."""
    fn = functools.partial(
        _warp, mode=mode, smoothness=smoothness, fill_mode=fill_mode, interpolation=interpolation
    )
    return tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)


def forward_map_points(
    points: tf.Tensor,
    ctrl: tf.Tensor,
    affine: tf.Tensor,
    magnitude: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    *,
    mode: str,
    smoothness: float,
) -> tf.Tensor:
    """Where source pixel positions land in the warped image.

    The warp is defined backwards (output pixel -> source position), so this inverts it: the
    affine part exactly, the displacement by fixed-point iteration `p <- q - D(p)`, which
    converges because the displacement's slope is below 1 for any warp that does not fold.

    Args:
        points: (B, N, 2) float32 `(x, y)` pixel-index positions in the source images.
        ctrl, affine, magnitude: the transformation, as drawn by `FluidDistortion`.
        height, width: image size.
        mode, smoothness: as the layer's.

    Returns:
        (B, N, 2) float32 positions in the output images.
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    cx, cy = (w - 1.0) * 0.5, (h - 1.0) * 0.5
    a, b, c, d, ox, oy = (affine[:, i, None] for i in range(6))
    u = points[..., 0] - (ox * w + cx)
    v = points[..., 1] - (oy * h + cy)
    det = a * d - b * c
    qx = (d * u - b * v) / det
    qy = (a * v - c * u) / det
    ny, nx = ctrl.shape[1], ctrl.shape[2]
    px, py = qx, qy
    for _ in range(_INVERSE_ITERATIONS):
        wy = control_weights(py + cy, h - 1.0, ny, mode, smoothness)  # (B, N, ny)
        wx = control_weights(px + cx, w - 1.0, nx, mode, smoothness)  # (B, N, nx)
        disp = tf.einsum("bni,bijc,bnj->bnc", wy, ctrl, wx)
        px = qx - disp[..., 0] * (magnitude * w)
        py = qy - disp[..., 1] * (magnitude * h)
    return tf.stack([px + cx, py + cy], axis=-1)
