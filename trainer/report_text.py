"""The words and tables of `report.html` that a reader without machine-learning training needs:
per-class results, images per split, captions, a glossary, and how to run it again.

HTML fragments as strings; `trainer.report` puts them on the page.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import html
import importlib.metadata
import os
import platform
import shlex
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.config import RunConfig, build_config

SPLITS = ("train", "val", "test", "gap")
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test", "gap": "guard gap"}
# The distributions whose versions decide what a run computes (and the Python running them).
PACKAGES = ("cellkeras", "tensorflow", "keras", "keras-cv", "tf-keras-vis")

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
table.names td:first-child { text-align: left; }
th { background: #f0f0f0; } img { max-width: 100%; } figure { margin: 1.2em 0; }
figcaption, .caption { color: #444; font-size: 0.92em; max-width: 900px; margin: 0.3em 0 1.4em; }
code, pre { background: #f6f6f6; } pre { padding: 0.5em; white-space: pre-wrap; }
.summary { font-size: 1.1em; background: #f4f8fb; padding: 0.8em 1em; border-left: 4px solid #4a7ab0; }
dt { font-weight: bold; margin-top: 0.5em; } dd { margin-left: 1.5em; }
"""

CONFUSION_CAPTION = (
    "Each row is a true class and each column the class the model predicted; the number in a "
    "square counts images and its colour is the share of that row. A perfect model has every "
    "image on the diagonal; a number off it says which class is taken for which. One matrix "
    "per branch, then the merged model, the one that is saved and exported."
)
RELIABILITY_CAPTION = (
    "Is the model's confidence honest? Images are grouped by the confidence of their top "
    "class (across), and each point shows how often that class was right (up). On the dashed "
    "line a confidence of 0.9 means right 9 times in 10; below it the model is over-confident. "
    "The bars underneath count the images in each group (the numbers are the merged model's): "
    "a point made of a few images is mostly chance. ECE in the tables sums up the distance "
    "from the line."
)

GLOSSARY = {
    "accuracy": "the share of images whose predicted class is the true class.",
    "precision (of a class)": "of the images the model called that class, the share that "
    "really are.",
    "recall (of a class)": "of the images that really are that class, the share the model found.",
    "F1": "precision and recall in one number (their harmonic mean); 1 is perfect, and it is "
    "low when either is low.",
    "support": "how many images of the class were scored; with few, every number of that "
    "class moves a lot by chance.",
    "training / validation / test images": "the model learns from the training images; the "
    "validation images, never learnt from, choose the best epoch and give this page's "
    "numbers; test images, when there are any, are scored once at the very end and choose "
    "nothing, so their accuracy is the fairest estimate for new images.",
    "confidence": "the probability the model gives its top class.",
    "ECE (expected calibration error)": "how far confidence is from the accuracy actually "
    "reached, averaged over images grouped by confidence: 0.05 means the model's confidence "
    "is off by 5 percentage points on average. 0 is perfectly honest.",
    "Brier score": "the squared distance between the predicted probabilities and the truth "
    "(1 for the true class, 0 for the others), averaged over images: 0 is perfect, 2 the "
    "worst; it falls with both accuracy and honest confidence.",
    "branch": "the model is several small networks (branches) looking at the same image in "
    "different ways; a last layer merges their answers into the merged model, which is the "
    "one saved and exported.",
    "disagreement": "the share of images on which two models predict different classes.",
    "double fault": "the share of images both models of a pair get wrong: low means their "
    "mistakes differ, so merging them can help.",
    "oracle accuracy": "the share of images at least one of the pair gets right: the most a "
    "perfect merge of the two could reach.",
    "bootstrap interval (95 % CI)": "the range the accuracy would likely fall in with another "
    "test set of the same size, from re-drawing the test images with replacement 1,000 "
    "times; it covers the luck of which images were picked, not a change in the images "
    "(another microscope, stain or lab).",
    "epoch": "one pass over all training images.",
    "stage (progressive schedule)": "training starts on small copies of the images and moves "
    "to larger ones; each size is a stage.",
    "augmentation strength": "how strongly the training images are randomly changed (flipped, "
    "rotated, distorted) so the model does not memorise them; it grows with the image size.",
    "Grad-CAM": "a heat map of where in the image the evidence for a class lies, from the "
    "gradients of the class score at the model's last convolution layers.",
}


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]], first_left: bool = True) -> str:
    """An HTML table of escaped cells; the first column left-aligned (names)."""
    style = ' class="names"' if first_left else ""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table{style}><tr>{head}</tr>{body}</table>"


def caption(text: str) -> str:
    """A figure's or table's plain-language explanation (HTML allowed in `text`)."""
    return f'<p class="caption">{text}</p>'


def figure(src: str, text: str, alt: str) -> str:
    return (
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">'
        f"<figcaption>{text}</figcaption></figure>"
    )


def per_class_table(summary: dict[str, Any], classes: Sequence[str], where: str) -> str:
    """Precision, recall, F1 and support per class (scikit-learn's `classification_report`,
    as `cellkeras.evaluate.classification_summary` stores it) with a caption."""
    per_class = summary["per_class"]
    rows = [
        [name, f"{per_class[name]['precision']:.3f}", f"{per_class[name]['recall']:.3f}",
         f"{per_class[name]['f1-score']:.3f}", int(per_class[name]["support"])]
        for name in classes
    ]  # fmt: skip
    weakest = min(classes, key=lambda name: (per_class[name]["recall"], name))
    recall = per_class[weakest]["recall"]
    return table(["class", "precision", "recall", "F1", "support (images)"], rows) + caption(
        f"How well the merged model does on each class of the {where} images. "
        "<b>Precision</b>: of the images it called this class, the share that are. "
        "<b>Recall</b>: of the images of this class, the share it found. <b>F1</b> combines "
        "the two; <b>support</b> is how many images of the class were scored. "
        f"The class found least often is <b>{html.escape(weakest)}</b> "
        f"(recall {recall:.3f}: it finds {recall * 100:.1f} % of its images)."
    )


def read_split_counts(path: Path) -> dict[str, Counter]:
    """{class: Counter(split -> images)} from a run folder's `split.csv`."""
    counts: dict[str, Counter] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            counts.setdefault(row["label"], Counter())[row["split"]] += 1
    return counts


VAL_BLOCK_WORDS = {
    "edges": "each class's first and last frames in time, so they measure frames before and "
    "after every frame it trained on, as a new recording's are",
    "spread": "spread over each class's time range",
}


def split_counts_table(path: Path, classes: Sequence[str], val_blocks: str | None = None) -> str:
    """Images of each class in each split, with totals and a caption; a note without
    `split.csv`. `val_blocks`: where a time-lapse's validation blocks were placed."""
    if not path.is_file():
        return "<p>no <code>split.csv</code> in the run folder</p>"
    counts = read_split_counts(path)
    used = [s for s in SPLITS if any(c[s] for c in counts.values())]
    names = [*classes, *sorted(set(counts) - set(classes))]
    rows = [[name, *(counts.get(name, Counter())[s] for s in used),
             sum(counts.get(name, Counter())[s] for s in used)] for name in names]  # fmt: skip
    rows.append(["all", *(sum(r[k + 1] for r in rows) for k in range(len(used) + 1))])
    training = {name: counts.get(name, Counter())["train"] for name in classes}
    smallest = min(classes, key=lambda name: (training[name], name))
    fewest = (
        f"Every class has {training[smallest]} training images"
        if len(set(training.values())) == 1
        else f"The class with the fewest training images is {html.escape(smallest)} "
        f"({training[smallest]})"
    )
    return table(["class", *(SPLIT_NAMES[s] for s in used), "total"], rows) + caption(
        "How many images of each class went where (every image is listed in "
        "<code>split.csv</code>). The model learnt from the training images only; the "
        "validation images chose the best epoch and the merge's weights and give the numbers "
        "on this page"
        + (", and the test images were scored once, at the end" if "test" in used else "")
        + (
            "; guard-gap frames sit between training and validation blocks of a time-lapse "
            "and are in no split, so near-identical neighbouring frames cannot leak"
            if "gap" in used
            else ""
        )
        + (
            f"; the validation blocks are {VAL_BLOCK_WORDS[val_blocks]}"
            if "gap" in used and val_blocks in VAL_BLOCK_WORDS
            else ""
        )
        + f". {fewest}; a class with few images is learnt, and measured, less reliably."
    )


def glossary(terms: Sequence[str] | None = None) -> str:
    chosen = GLOSSARY if terms is None else {t: GLOSSARY[t] for t in terms}
    items = "".join(
        f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>" for term, text in chosen.items()
    )
    return f"<dl>{items}</dl>"


def package_versions() -> dict[str, str]:
    """The installed version of each of `PACKAGES`, and Python's."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def _flag(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return shlex.quote(f"--{name}={'none' if value is None else value}")


def reproduce_command(config: RunConfig) -> str:
    """The `python -m trainer.task` command line that gives `config` again: its preset and
    every setting that differs from the preset's."""
    base = build_config(config.preset)
    parts = ["python -m trainer.task"]
    if config.preset != "default":
        parts.append(_flag("preset", config.preset))
    for section in ("data", "train"):
        mine, theirs = getattr(config, section), getattr(base, section)
        for field in dataclasses.fields(mine):
            value = getattr(mine, field.name)
            if value != getattr(theirs, field.name):
                parts.append(_flag(field.name, value))
    # The run folder always: where the rerun writes is the first thing a reader looks for.
    parts.append(_flag("output_dir", config.output_dir))
    for name in ("export_dir", "worker_dir"):
        value = getattr(config, name)
        if value and value != getattr(base, name):
            parts.append(_flag(name, value))
    return " ".join(parts)


def provenance(config: RunConfig) -> str:
    """When the report was written, with what software, and the command that runs it again."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(f"{name} {version}" for name, version in package_versions().items())
    same = (
        "With <code>--deterministic</code> (set here) the same machine and software give the "
        "same weights and numbers."
        if config.train.deterministic
        else "Without <code>--deterministic</code> a rerun gives close but not identical "
        "numbers (add it for identical ones, at a few per cent more time)."
    )
    return (
        f"<p>Report written {now} on {html.escape(platform.node() or 'this machine')} "
        f"({html.escape(platform.platform(terse=True))}).</p>"
        f"<p>Software: {html.escape(versions)}.</p>"
        f"<p>To run it again, from <code>{html.escape(os.getcwd())}</code>:</p>"
        f"<pre>{html.escape(reproduce_command(config))}</pre>"
        + caption(
            "Every setting that differs from the preset's defaults is spelt out; the full "
            "configuration is below and in <code>config.json</code>. Rerun into the same "
            "<code>--output_dir</code> and the trainer resumes this run instead of starting "
            f"again: give a new folder to train from scratch. {same}"
        )
    )
