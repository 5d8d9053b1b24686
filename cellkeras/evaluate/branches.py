"""Per-branch analysis of a multi-branch model: accuracy, confusion matrices, diversity,
calibration, written as JSON + PNG into a run folder."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import cellkeras.evaluate.classification as classification
import cellkeras.evaluate.plots as plots


def predict_branches(
    model: Any, data: Any, batch_size: int = 64
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Probabilities of the merged model and of every branch, in one pass.

    Args:
        model: a Keras model; branches are found as `<branch>_probs` layers (a `ParallelCNN`).
        data: a `tf.data.Dataset` of (images, one-hot) batches, or an `(images, labels)` tuple
            of arrays (labels as indices or one-hot).
        batch_size: for array input.

    Returns:
        `(labels, probs)`: int labels (N,) and {"merged": (N, K), <branch>: (N, K), ...}. A
        single-branch model gives only "merged".
    """
    from cellkeras.models import analysis_model

    multi = analysis_model(model)
    if isinstance(data, tuple):
        images, labels = data
        outputs = multi.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0)
        return classification.to_labels(labels), _unique(outputs)
    labels, chunks = [], []
    for images, batch_labels in data:
        chunks.append(multi.predict_on_batch(images))
        labels.append(classification.to_labels(np.asarray(batch_labels)))
    outputs = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    return np.concatenate(labels), _unique(outputs)


def _unique(outputs: dict[str, Any]) -> dict[str, np.ndarray]:
    outputs = {k: np.asarray(v, np.float32) for k, v in outputs.items()}
    if len(outputs) == 2:  # a single branch *is* the merged output
        return {"merged": outputs["merged"]}
    return outputs


def evaluate_branches(
    model: Any,
    data: Any,
    classes: Sequence[str],
    out_dir: str | Path,
    batch_size: int = 64,
    title: str | None = None,
    combine: Callable[[np.ndarray, dict[str, np.ndarray]], tuple[np.ndarray, dict[str, np.ndarray]]]
    | None = None,
) -> dict[str, Any]:
    """Score the merged model and each branch on `data`; write the results into `out_dir`.

    Writes `branches.json` (see `classification.compare_models`, plus `per_branch_accuracy`),
    `confusion_matrices.png` (branches then merge, side by side) and `reliability.png`.

    Args:
        model: a `ParallelCNN` (or any model with `<branch>_probs` layers).
        data: a `tf.data.Dataset` of (images, one-hot) batches or an `(images, labels)` tuple.
        classes: class names.
        out_dir: the run folder.
        batch_size: for array input.
        title: figure title.
        combine: takes this process's `(labels, probs)` (as `predict_branches` returns them)
            and returns the set to score, e.g. every worker's of a multi-worker run whose
            workers each hold part of the validation data.

    Returns:
        The dict written to `branches.json`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, probs = predict_branches(model, data, batch_size)
    if combine is not None:
        labels, probs = combine(labels, probs)
    # Branches first and the merge last, the order the seed's figure read in.
    ordered = {k: probs[k] for k in probs if k != "merged"} | {"merged": probs["merged"]}
    result = classification.compare_models(labels, ordered, classes)
    result["per_branch_accuracy"] = {
        k: v["accuracy"] for k, v in result["models"].items() if k != "merged"
    }
    (out_dir / "branches.json").write_text(json.dumps(result, indent=2))
    fig = plots.plot_confusion_matrices(
        {k: v["confusion_matrix"] for k, v in result["models"].items()},
        classes,
        subtitles={k: f"accuracy {v['accuracy']:.3f}" for k, v in result["models"].items()},
        title=title,
    )
    plots.save_figure(fig, out_dir / "confusion_matrices.png")
    bins = {k: classification.reliability_bins(labels, p) for k, p in ordered.items()}
    plots.save_figure(plots.plot_reliability(bins, title=title), out_dir / "reliability.png")
    return result
