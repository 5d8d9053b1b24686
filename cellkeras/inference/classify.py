"""Classify loaded images: one row per image with every class probability (the rows of
`cellkeras classify` and `cellkeras batch`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cellkeras.inference.predict import predict


def classify_images(
    model: Any, info: Any, images: list, batch_size: int = 32
) -> list[dict[str, Any]]:
    """Rows `path, predicted_class, probability, <class>: probability...` for loaded images.

    Images of different sizes (a `.keras` model without a training size) run one at a time.
    """
    names = info.class_names()
    rows = []
    same_size = len({pixels.shape for _, pixels in images}) <= 1
    step = batch_size if same_size else 1
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        probabilities = predict(model, np.stack([p for _, p in chunk]), batch_size)
        for (path, _), probs in zip(chunk, probabilities, strict=True):
            rows.append(prediction_row(path, probs, names))
    return rows


def prediction_row(path: Any, probabilities: Any, names: list[str]) -> dict[str, Any]:
    """One CSV row: `path, predicted_class, probability, <class>: probability...`."""
    best = int(np.argmax(probabilities))
    row = {
        "path": str(path),
        "predicted_class": names[best],
        "probability": float(probabilities[best]),
    }
    row.update({name: float(v) for name, v in zip(names, probabilities, strict=True)})
    return row


def csv_columns(info: Any) -> list[str]:
    """The columns of the `classify` CSV (and of `cellkeras batch`'s predictions)."""
    return ["path", "predicted_class", "probability", *info.class_names()]


def csv_values(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the CSV stores it: probabilities with 6 decimals."""
    return {k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()}
