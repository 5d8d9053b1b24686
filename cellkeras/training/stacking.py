"""Stacking: the "stacked" merge's branch weights fitted on held-out images.

A merge fitted on the training images learns which branch has memorised them best, which says
little about new images (the trainer's stage-wise head, trained so, falls below its own best
branch). `fit_stacking` fits the weights of a `StackedMerge` on images no branch trained on,
the validation split, by the merged log-loss, and then keeps whichever of the fitted weights,
the plain average and each branch alone is most accurate on those images (ties by log-loss),
so on them the merge is never below its best branch. The fitted weights compete with their
out-of-fold score, so fitting the held-out images' noise does not win them the choice.

```
report = fit_stacking(model, val_batches)   # sets model's merge weights in place
report["chosen"], report["weights"]
```
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from scipy.special import logsumexp

from cellkeras.models.layers import StackedMerge
from cellkeras.models.parallel import branch_names

# Upper bound of each weight: a weight also sharpens or softens its branch (a temperature),
# and unbounded weights on a few dozen images would chase a zero log-loss.
MAX_WEIGHT = 4.0
# Pulls the weights gently towards the average, which matters when the held-out images are
# too few or too easy to tell the branches apart (every branch right on every image).
RIDGE = 1e-3
# Folds for scoring the fitted weights on images they were not fitted on.
CROSS_FIT_FOLDS = 5


def stacked_merge(model: keras.Model) -> StackedMerge | None:
    """The model's `StackedMerge` layer, or None when its merge is another kind."""
    try:
        layer = model.get_layer("probs")
    except ValueError:
        return None
    return layer if isinstance(layer, StackedMerge) else None


def branch_log_probs(model: keras.Model, batches: Any) -> tuple[np.ndarray, np.ndarray]:
    """`(labels (N,), log-probabilities (N, branches, K))` of every branch over `batches`
    of `(images, one_hot)`."""
    names = branch_names(model)
    logits = keras.Model(model.inputs, [model.get_layer(f"{n}_logits").output for n in names])
    labels, parts = [], []
    for images, one_hot in batches:
        outputs = logits(images, training=False)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        stacked = np.stack([np.asarray(o, dtype=np.float64) for o in outputs], axis=1)
        parts.append(stacked - logsumexp(stacked, axis=-1, keepdims=True))
        labels.append(np.argmax(np.asarray(one_hot), axis=-1))
    return np.concatenate(labels), np.concatenate(parts)


def merged_scores(
    labels: np.ndarray, log_probs: np.ndarray, weights: np.ndarray
) -> tuple[float, float]:
    """`(accuracy, mean log-loss)` of the merge with `weights` on these predictions."""
    return _scores(labels, _merged_log_probs(log_probs, weights))


def _merged_log_probs(log_probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The stacked merge's log-softmax: the branches' log-probabilities weighted and summed,
    then normalized (what `StackedMerge` computes)."""
    mixed = np.einsum("bnk,n->bk", log_probs, weights)
    return mixed - logsumexp(mixed, axis=-1, keepdims=True)


def _scores(labels: np.ndarray, mixed: np.ndarray) -> tuple[float, float]:
    """`(accuracy, mean log-loss)` of merged log-probabilities."""
    accuracy = float(np.mean(np.argmax(mixed, axis=-1) == labels))
    return accuracy, float(-np.mean(mixed[np.arange(len(labels)), labels]))


def fit_weights(labels: np.ndarray, log_probs: np.ndarray) -> np.ndarray:
    """The weights in [0, MAX_WEIGHT] minimizing the merged log-loss (plus a small ridge
    towards the average), by L-BFGS-B from the average."""
    from scipy.optimize import minimize

    count = log_probs.shape[1]
    start = np.full(count, 1.0 / count)
    rows = np.arange(len(labels))

    def loss_and_grad(weights: np.ndarray) -> tuple[float, np.ndarray]:
        mixed = _merged_log_probs(log_probs, weights)
        probs = np.exp(mixed)
        # d(-log p_y)/dw_n = E_p[log p_n] - log p_n(y), averaged over the images.
        grad = np.einsum("bk,bnk->bn", probs, log_probs) - log_probs[rows, :, labels]
        value = -mixed[rows, labels].mean() + RIDGE * np.sum((weights - start) ** 2)
        return value, grad.mean(axis=0) + 2 * RIDGE * (weights - start)

    result = minimize(
        loss_and_grad, start, jac=True, method="L-BFGS-B", bounds=[(0.0, MAX_WEIGHT)] * count
    )
    return np.asarray(result.x, dtype=np.float64)


def cross_fitted_scores(
    labels: np.ndarray, log_probs: np.ndarray, folds: int = CROSS_FIT_FOLDS
) -> tuple[float, float]:
    """`(accuracy, mean log-loss)` of fitted weights scored out of fold: each of `folds`
    contiguous runs of the images is merged with weights fitted on the others.

    Contiguous, because held-out images come in time blocks whose neighbouring frames are
    near-copies: folds dealt out image by image would fit on a frame and score its twin."""
    parts = np.array_split(np.arange(len(labels)), min(folds, len(labels)))
    if len(parts) < 2:
        return merged_scores(labels, log_probs, fit_weights(labels, log_probs))
    mixed = np.empty((len(labels), log_probs.shape[2]))
    for part in parts:
        rest = np.setdiff1d(np.arange(len(labels)), part)
        weights = fit_weights(labels[rest], log_probs[rest])
        mixed[part] = _merged_log_probs(log_probs[part], weights)
    return _scores(labels, mixed)


def choose_merge(
    labels: np.ndarray,
    log_probs: np.ndarray,
    names: list[str] | None = None,
    cross_fit: bool = True,
) -> tuple[str, np.ndarray, dict[str, tuple[float, float]]]:
    """The merge weights to keep: `(chosen, weights, scores)` where `scores` maps each
    candidate (fitted weights, the average, each branch alone) to `(accuracy, log-loss)` on
    these held-out predictions. The most accurate wins, ties going to the lower log-loss (then
    to that order).

    `cross_fit`: the fitted weights are scored out of fold (`cross_fitted_scores`), like the
    candidates that fit nothing; scored on the images they were fitted on, they win every
    log-loss tie, even when they only fit those images' noise. Their weights are then fitted
    on all the images."""
    count = log_probs.shape[1]
    names = names or [f"branch {i}" for i in range(count)]
    candidates = {"fitted": fit_weights(labels, log_probs), "average": np.full(count, 1 / count)}
    for index, name in enumerate(names):
        candidates[f"{name} alone"] = np.eye(count)[index]
    scores = {k: merged_scores(labels, log_probs, w) for k, w in candidates.items()}
    if cross_fit:
        scores["fitted"] = cross_fitted_scores(labels, log_probs)
    order = list(candidates)
    chosen = min(order, key=lambda k: (-scores[k][0], scores[k][1], order.index(k)))
    return chosen, candidates[chosen], scores


def fit_stacking(model: keras.Model, batches: Any) -> dict[str, Any]:
    """Sets the `StackedMerge` weights of `model` from held-out `batches` of
    `(images, one_hot)`, and says what it chose (`choose_merge`).

    Returns:
        `{"chosen", "weights" (branch -> weight), "images", "candidates" (name ->
        {"accuracy", "log_loss"}, the fitted weights' out of fold)}`.

    Raises:
        ValueError: the model has no stacked merge, or `batches` holds no images.
    """
    layer = stacked_merge(model)
    if layer is None:
        raise ValueError(f"{model.name!r} has no stacked merge (merge='stacked')")
    names = branch_names(model)
    labels, log_probs = branch_log_probs(model, batches)
    if not len(labels):
        raise ValueError("fit_stacking needs held-out images; the batches are empty")
    chosen, weights, scores = choose_merge(labels, log_probs, names)
    layer.branch_weights.assign(weights.astype("float32"))
    return {
        "chosen": chosen,
        "weights": {n: round(float(w), 4) for n, w in zip(names, weights, strict=True)},
        "images": int(len(labels)),
        "candidates": {
            k: {"accuracy": round(a, 4), "log_loss": round(loss, 4)}
            for k, (a, loss) in scores.items()
        },
    }
