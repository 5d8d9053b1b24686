"""The report's pictures of single images: the model's mistakes, and a few images with their
Grad-CAM maps.

Both come from the validation images at the final size, as the final model saw them, and use
the predictions the final evaluation already made (`collect_examples` takes them), so the
report costs one pass of the validation input without the model and one Grad-CAM call on at
most `MAX_SAMPLES` images, run eagerly (`eager_functions`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from cellkeras.evaluate.plots import plot_image_gallery, save_figure

MAX_MISTAKES = 12
MAX_SAMPLES = 4
MISTAKES_PNG = "misclassified.png"
GRADCAM_PNG = "gradcam_samples.png"
AUGMENT_PNG = "augmentation.png"
GALLERY_MIN_SIDE = 96
GALLERY_ROW_GAP = 2  # cellkeras.augment.preview's gap under each row


@dataclasses.dataclass
class Examples:
    """What the report says about the pictures `collect_examples` drew.

    Attributes:
        images: how many validation images were scored.
        mistakes: how many of them the model got wrong.
        shown_mistakes: how many of those `MISTAKES_PNG` shows (the most confident first).
        samples: the true class of each image in `GRADCAM_PNG`.
        explained: what the maps explain ("the merged model, every branch's last conv layer").
        skipped: why there are no pictures (empty when there are).
    """

    images: int = 0
    mistakes: int = 0
    shown_mistakes: int = 0
    samples: list[str] = dataclasses.field(default_factory=list)
    explained: str = ""
    skipped: str = ""


def pick_mistakes(labels: np.ndarray, probs: np.ndarray, limit: int = MAX_MISTAKES) -> np.ndarray:
    """Indices of the wrongly predicted images, the most confident mistakes first (those are
    the ones to look at: a mislabelled image, or a class the model confuses with certainty)."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = np.argsort(-probs[wrong, predicted[wrong]], kind="stable")
    return wrong[order][:limit]


def pick_samples(
    labels: np.ndarray, probs: np.ndarray, num_classes: int, limit: int = MAX_SAMPLES
) -> np.ndarray:
    """One image per class (the first of that class the model gets right, else its first),
    for at most `limit` classes, in class order."""
    right = probs.argmax(axis=1) == labels
    chosen = []
    for k in range(num_classes):
        of_class = np.flatnonzero(labels == k)
        if of_class.size:
            correct = of_class[right[of_class]]
            chosen.append(int(correct[0] if correct.size else of_class[0]))
        if len(chosen) == limit:
            break
    return np.asarray(chosen, dtype=np.int64)


def _gather(batches: Any, wanted: np.ndarray) -> dict[int, np.ndarray]:
    """The images at `wanted` positions of a dataset of (images, labels) batches, read in
    order and no further than the last one needed."""
    found: dict[int, np.ndarray] = {}
    remaining = set(int(i) for i in wanted)
    start = 0
    for images, _ in batches:
        images = np.asarray(images)
        for i in [i for i in remaining if start <= i < start + len(images)]:
            found[i] = images[i - start]
            remaining.discard(i)
        start += len(images)
        if not remaining:
            break
    return found


@contextlib.contextmanager
def eager_functions():
    """TensorFlow functions run as plain Python while it lasts, as they were set after.

    For a handful of images tracing Grad-CAM's compiled function (both branches' gradients,
    the edge branch's Canny layer) costs several times running it once eagerly (13.9 s against
    5.6 s on the loaded 2-core machine, maps equal to 4e-7); the setting is process-wide, so
    it is put back however the call ends.
    """
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(before)


def _gradcam_figure(model, images, labels, probs, classes, out: Path) -> str:
    from cellkeras.explain.cam import compute_explanation
    from cellkeras.explain.methods import MERGED
    from cellkeras.explain.plots import plot_maps_under_images
    from cellkeras.explain.targets import branch_names

    merged = MERGED if branch_names(model) else None
    with eager_functions():
        result = compute_explanation(
            model, images, "gradcam", branch=merged, batch_size=len(images)
        )
    titles = [
        f"true {classes[t]}\npredicted {classes[int(probs[i].argmax())]} "
        f"{float(probs[i].max()):.2f}"
        for i, t in enumerate(labels)
    ]
    figure = plot_maps_under_images(
        images,
        result.maps,
        titles,
        colorbar_label="Grad-CAM heat (1 = peak)",
        title="What the model looks at (Grad-CAM of the predicted class)",
    )
    save_figure(figure, out / GRADCAM_PNG)
    layers = ", ".join(result.layers)
    return (
        f"the merged model's prediction, through every branch's last conv layer ({layers})"
        if merged
        else f"the model's prediction, through its layer {layers}"
    )


def collect_examples(
    model: Any,
    batches: Any,
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    out: Path,
    augment: str = "none",
) -> Examples:
    """Writes `MISTAKES_PNG`, `GRADCAM_PNG` and (with an augmentation) `AUGMENT_PNG` into
    the run folder `out`.

    Args:
        model: the final classifier.
        batches: the validation images at the final size, as (images, labels) batches in the
            order `labels` and `probs` were scored in.
        labels: (N,) true class indices.
        probs: (N, K) the model's probabilities for those images.
        classes: class names.
        out: the run folder.
        augment: the run's augmentation preset; its gallery shows what training images
            looked like to the model.
    """
    for stale in (MISTAKES_PNG, GRADCAM_PNG, AUGMENT_PNG):  # an earlier run's, in a reused folder
        (out / stale).unlink(missing_ok=True)
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, np.float32)
    examples = Examples(images=len(labels), mistakes=int(np.sum(probs.argmax(1) != labels)))
    mistakes = pick_mistakes(labels, probs)
    samples = pick_samples(labels, probs, len(classes))
    found = _gather(batches, np.concatenate([mistakes, samples]))
    if len(found) < len(set(mistakes.tolist() + samples.tolist())):
        examples.skipped = "the validation input gave fewer images than were scored"
        return examples
    if mistakes.size:
        captions = [
            f"true {classes[labels[i]]}\npredicted {classes[int(probs[i].argmax())]}\n"
            f"confidence {float(probs[i].max()):.2f}"
            for i in mistakes
        ]
        figure = plot_image_gallery(
            [found[int(i)] for i in mistakes],
            captions,
            title=f"{mistakes.size} of the {examples.mistakes} misclassified validation images"
            if mistakes.size < examples.mistakes
            else f"The {mistakes.size} misclassified validation images",
        )
        save_figure(figure, out / MISTAKES_PNG)
        examples.shown_mistakes = int(mistakes.size)
    if samples.size:
        images = np.stack([found[int(i)] for i in samples]).astype(np.float32)
        examples.explained = _gradcam_figure(
            model, images, labels[samples], probs[samples], classes, out
        )
        examples.samples = [classes[labels[i]] for i in samples]
        if augment != "none":
            _augmentation_gallery(images, len(classes), augment, out)
    return examples


def _augmentation_gallery(images: np.ndarray, num_classes: int, preset: str, out: Path) -> None:
    """One row per sample image: the image, then five draws of the run's augmentation; small
    images are enlarged first (as the model's input they may be 16-32 px) so the draws can be
    told apart."""
    import cv2

    from cellkeras.augment.preview import gallery

    side = min(images.shape[1:3])
    if side < GALLERY_MIN_SIDE:
        scale = GALLERY_MIN_SIDE / side
        size = (round(images.shape[2] * scale), round(images.shape[1] * scale))
        images = np.stack([cv2.resize(im, size, interpolation=cv2.INTER_CUBIC) for im in images])
        images = np.clip(images.reshape(len(images), size[1], size[0], -1), 0.0, 1.0)
    one_hot = np.eye(num_classes, dtype=np.float32)[:1]
    rows = [gallery(image[None], one_hot, [preset], n=5) for image in images]
    header = rows[0].shape[0] - images.shape[1] - GALLERY_ROW_GAP  # the column titles, once
    sheet = np.concatenate([rows[0]] + [row[header:] for row in rows[1:]], axis=0)
    cv2.imwrite(str(out / AUGMENT_PNG), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def examples_for_run(
    model: Any, inputs: Any, final_size: tuple[int, int], scored: tuple, out: Path
) -> Examples:
    """`collect_examples` for a trainer run: `scored` is the final evaluation's `(labels,
    merged probabilities)` on `inputs.val_set` at `final_size`."""
    if inputs.runtime.multi_worker:
        # Each worker reads its own share of the images; the scores are everyone's.
        return Examples(images=len(scored[0]), skipped="not drawn in multi-worker runs")
    batches = inputs.dataset(inputs.val_set, final_size, training=False)
    return collect_examples(
        model, batches, *scored, inputs.images.classes, out, inputs.config.train.augment
    )
