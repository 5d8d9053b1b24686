"""Custom layers the model graphs use: in-graph edge detection and the learned branch weighting.

They are registered with Keras so a `.keras` file loads in safe mode, and they are plain
`keras.ops` code so the edges are computed inside the exported SavedModel (no OpenCV at serving).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from cellkeras.io.images import LUMA_WEIGHTS as _LUMA_RGB

# Largest Sobel gradient magnitude of an image in [0, 1]: |gx| and |gy| are each at most 4.
_SOBEL_MAX = 4.0 * math.sqrt(2.0)
# tan(22.5 deg): a gradient within 22.5 deg of an axis is treated as lying on that axis.
_TAN_22_5 = math.tan(math.pi / 8.0)


def _gaussian_kernel_1d(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def _shift(x, dy: int, dx: int):
    """x[:, i + dy, j + dx] with edge replication, for any (None, None) spatial size."""
    padded = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="symmetric")
    height, width = ops.shape(x)[1], ops.shape(x)[2]
    return ops.slice(padded, [0, 1 + dy, 1 + dx, 0], [ops.shape(x)[0], height, width, 1])


@keras.saving.register_keras_serializable(package="cellkeras")
class SobelEdges(keras.layers.Layer):
    """Edge map of an image batch, computed in the graph (Sobel, or a Canny-like thinning).

    The image is first reduced to one intensity channel (BT.601 luma for 3 channels, the mean
    otherwise). `mode="sobel"` returns the Sobel gradient magnitude; `mode="canny"` adds what
    makes Canny's edges thin and clean without its non-differentiable, iterative hysteresis:
    Gaussian smoothing first, non-maximum suppression along the gradient direction, and a
    threshold. Borders are mirrored like OpenCV's default `BORDER_REFLECT_101`, so with
    `normalize=False` the Sobel magnitude equals `hypot(cv2.Sobel(dx), cv2.Sobel(dy))`.

    Args:
        mode: "sobel" or "canny".
        sigma: standard deviation in pixels of the Gaussian smoothing; 0 disables it. Used by
            both modes (default: none for "sobel", 1.0 for "canny").
        threshold: magnitudes below it (after normalization) are set to zero ("canny" only).
        normalize: divide the magnitude by its largest possible value (4 * sqrt(2) for inputs
            in [0, 1]) so the output lies in [0, 1].
        keep_image: also return the intensity channel, so later layers see edges and shading.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Input: (B, H, W, C) float images in [0, 1]. Output: (B, H, W, 1), or (B, H, W, 2) with
    `keep_image` (intensity first).
    """

    def __init__(
        self,
        mode: str = "sobel",
        sigma: float | None = None,
        threshold: float = 0.05,
        normalize: bool = True,
        keep_image: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("sobel", "canny"):
            raise ValueError(f"SobelEdges mode must be 'sobel' or 'canny', got {mode!r}.")
        self.mode = mode
        self.sigma = (1.0 if mode == "canny" else 0.0) if sigma is None else float(sigma)
        self.threshold = float(threshold)
        self.normalize = bool(normalize)
        self.keep_image = bool(keep_image)
        sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)
        # Kernel (3, 3, in=1, out=2): channel 0 is d/dx, channel 1 is d/dy.
        self._sobel = np.stack([sobel_x, sobel_x.T], axis=-1)[:, :, None, :]
        self._gauss = _gaussian_kernel_1d(self.sigma) if self.sigma > 0 else None

    def _intensity(self, images):
        channels = images.shape[-1]
        if channels == 1:
            return images
        if channels == 3:
            weights = ops.convert_to_tensor(np.array(_LUMA_RGB, np.float32), dtype=images.dtype)
            return ops.sum(images * weights, axis=-1, keepdims=True)
        return ops.mean(images, axis=-1, keepdims=True)

    def _blur(self, gray):
        radius = len(self._gauss) // 2
        # Separable: a row pass then a column pass, each a (k, 1) / (1, k) convolution.
        for kernel_shape, pad in (
            ((len(self._gauss), 1, 1, 1), [[0, 0], [radius, radius], [0, 0], [0, 0]]),
            ((1, len(self._gauss), 1, 1), [[0, 0], [0, 0], [radius, radius], [0, 0]]),
        ):
            kernel = ops.convert_to_tensor(self._gauss.reshape(kernel_shape), dtype=gray.dtype)
            gray = ops.conv(ops.pad(gray, pad, mode="reflect"), kernel, padding="valid")
        return gray

    def _non_max_suppression(self, magnitude, gx, gy):
        ax, ay = ops.abs(gx), ops.abs(gy)
        horizontal = ay <= _TAN_22_5 * ax  # gradient along x: compare left and right
        vertical = ax <= _TAN_22_5 * ay  # gradient along y: compare up and down
        same_sign = gx * gy > 0  # gradient along the main diagonal (y grows with x)

        def is_peak(dy, dx):
            # Strict on one side only: a plateau two pixels wide keeps exactly one of them.
            return ops.logical_and(
                magnitude > _shift(magnitude, dy, dx), magnitude >= _shift(magnitude, -dy, -dx)
            )

        peak = ops.where(
            horizontal,
            is_peak(0, 1),
            ops.where(
                vertical,
                is_peak(1, 0),
                ops.where(same_sign, is_peak(1, 1), is_peak(1, -1)),
            ),
        )
        return ops.where(peak, magnitude, ops.zeros_like(magnitude))

    def call(self, images):
        gray = self._intensity(ops.cast(images, self.compute_dtype))
        if self._gauss is not None:
            gray = self._blur(gray)
        kernel = ops.convert_to_tensor(self._sobel, dtype=gray.dtype)
        grad = ops.conv(
            ops.pad(gray, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect"),
            kernel,
            padding="valid",
        )
        gx, gy = grad[..., :1], grad[..., 1:]
        magnitude = ops.sqrt(gx * gx + gy * gy)
        if self.normalize:
            magnitude = magnitude / _SOBEL_MAX
        if self.mode == "canny":
            magnitude = self._non_max_suppression(magnitude, gx, gy)
            magnitude = ops.where(magnitude >= self.threshold, magnitude, ops.zeros_like(magnitude))
        if self.keep_image:
            return ops.concatenate([gray, magnitude], axis=-1)
        return magnitude

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2 if self.keep_image else 1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            mode=self.mode,
            sigma=self.sigma,
            threshold=self.threshold,
            normalize=self.normalize,
            keep_image=self.keep_image,
        )
        return config


@keras.saving.register_keras_serializable(package="cellkeras")
class WeightedAverage(keras.layers.Layer):
    """Learned convex combination of N probability vectors: sum_i softmax(w)_i * p_i.

    The weights start equal (w = 0), so an untrained merge is the plain average; the result is
    still a probability distribution, whatever w becomes.

    Input: a list of N tensors (B, K). Output: (B, K).
    """

    def build(self, input_shape) -> None:
        self.branch_logits = self.add_weight(
            name="branch_logits", shape=(len(input_shape),), initializer="zeros"
        )

    def branch_weights(self):
        """The current mixing weights, shape (N,), summing to 1."""
        return ops.softmax(self.branch_logits)

    def call(self, inputs):
        stacked = ops.stack([ops.cast(x, self.compute_dtype) for x in inputs], axis=1)
        weights = ops.cast(self.branch_weights(), self.compute_dtype)
        return ops.einsum("bnk,n->bk", stacked, weights)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="cellkeras")
class StackedMerge(keras.layers.Layer):
    """The branches' log-probabilities, weighted and summed, then a softmax:
    `softmax(sum_i w_i * log_softmax(z_i))` over N branch logits z_i (B, K).

    The weights w_i >= 0 are not trained by gradient: they start equal (the branches'
    geometric mean, which ranks classes as their product does) and are set afterwards from
    held-out predictions (`cellkeras.training.fit_stacking`), where a branch's accuracy says
    something about new images, unlike on the training images it has memorised.

    Gradients flow through it (a plain single-loss `fit` trains the branches as a product of
    experts, and Grad-CAM of the merged output reaches every branch); joint training gives the
    merged output no loss weight instead (`cellkeras.training.joint_trainer`), so that each
    branch trains exactly as it would alone, by its own loss, and the merge cannot drag the
    better branch towards the worse.
    """

    def build(self, input_shape) -> None:
        count = len(input_shape)
        self.branch_weights = self.add_weight(
            name="branch_weights",
            shape=(count,),
            initializer=keras.initializers.Constant(1.0 / count),
            trainable=False,
        )

    def call(self, inputs):
        parts = [ops.cast(x, "float32") for x in inputs]
        stacked = ops.stack([ops.log_softmax(x, axis=-1) for x in parts], axis=1)
        weights = ops.cast(self.branch_weights, "float32")
        return ops.softmax(ops.einsum("bnk,n->bk", stacked, weights), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="cellkeras")
class OrdinalLogits(keras.layers.Layer):
    """Class logits for ordered classes: one position u per image on the classes' order, and
    class k (rank r_k) scores `-spread * (r_k - u)**2 + c_k`.

    u says how far along the order an image is, and the most likely class moves up the order
    one class at a time as u grows (the logits have increasing differences in r and u, so
    their argmax never moves back), whatever the offsets c_k become. A dense head has a
    separate direction per class and nothing tells it what lies beyond the training images;
    here an image further along than any training image of the last class (or before the
    first) still scores as that class, and two classes far apart in the order cannot be
    confused without the ones between. Stages of a time-lapse are such classes: on the embryo
    cuts the first frames of a stage show fewer nuclei than any of its training frames
    (docs/BENCHMARKS.md, "Nuclei per frame").

    u is in rank units (it starts at the middle of the order) and `spread` sets how sharply
    the classes fall off around it, so neither has to grow with the class count: with plain
    offsets placing the boundaries, those grow with its square (tens of nats for eight
    stages) while Adam moves a scalar by about the learning rate a step, and a few hundred
    steps left most stages unreachable. `spread` is `exp(SPREAD_GAIN * log_spread)` from 1, so
    Adam can sharpen it tenfold within a short schedule.

    Measured (docs/BENCHMARKS.md, "An ordinal head for stages"): one position per image
    behaves like a clock, right where a stage's boundaries lie midway in time between its
    training frames and its neighbours', wrong where they do not; so it is an option
    (`--ordinal=time`), not the default.

    A class's logit peaks where u sits on its rank, so its gradient there is about zero:
    explain an ordinal model through its probabilities (or `position`), not a class logit.

    Args:
        ranks: each class's place in the order (class index -> rank), a permutation of
            0..K-1; the class names' alphabetical order need not be the time order.

    Input: (..., F) features. Output: (..., K) logits for a softmax.
    """

    SPREAD_GAIN = 4.0

    def __init__(self, ranks, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ranks = [int(r) for r in ranks]
        if sorted(self.ranks) != list(range(len(self.ranks))):
            raise ValueError(
                f"OrdinalLogits {self.name!r}: class_ranks must be a permutation of 0..K-1, "
                f"got {self.ranks}."
            )

    def build(self, input_shape) -> None:
        count = len(self.ranks)
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], 1), initializer="glorot_uniform"
        )
        self.position_bias = self.add_weight(
            name="position_bias",
            shape=(),
            initializer=keras.initializers.Constant((count - 1) / 2.0),
        )
        self.log_spread = self.add_weight(name="log_spread", shape=(), initializer="zeros")
        self.class_bias = self.add_weight(name="class_bias", shape=(count,), initializer="zeros")

    def spread(self):
        return ops.exp(self.SPREAD_GAIN * self.log_spread)

    def position(self, inputs):
        """u: each image's place on the order, in ranks (..., 1)."""
        kernel = ops.cast(self.kernel, inputs.dtype)
        return ops.matmul(inputs, kernel) + ops.cast(self.position_bias, inputs.dtype)

    def call(self, inputs):
        ranks = ops.convert_to_tensor(np.asarray(self.ranks, np.float32), dtype=inputs.dtype)
        spread = ops.cast(self.spread(), inputs.dtype)
        distance = ranks - self.position(inputs)
        return ops.cast(self.class_bias, inputs.dtype) - spread * distance**2

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.ranks))

    def get_config(self) -> dict:
        return {**super().get_config(), "ranks": self.ranks}
