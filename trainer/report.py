"""The run's pictures and its one-page report: `training_curves.png` and `report.html`.

The page is written for the biologist who ran the trainer as much as for the engineer: it opens
with the result in plain words, gives per-class numbers and the images per split, shows the
model's mistakes and where it looks (`trainer.report_examples`), puts a caption under every
figure and table, explains its terms in a glossary, and ends with the software and the command
that make the run again (`trainer.report_text`).
"""

from __future__ import annotations

import csv
import html
import itertools
import json
from pathlib import Path
from typing import Any

from cellkeras.augment.study import answer, load_published
from cellkeras.augment.study import figure as study_figure
from cellkeras.evaluate.plots import plot_training_curves, save_figure
from cellkeras.training import JOINT, Phase
from trainer.config import RunConfig
from trainer.report_examples import AUGMENT_PNG, GRADCAM_PNG, MISTAKES_PNG, Examples
from trainer.report_text import (
    CONFUSION_CAPTION,
    RELIABILITY_CAPTION,
    STYLE,
    caption,
    figure,
    glossary,
    per_class_table,
    provenance,
    split_counts_table,
    table,
)

AUGMENT_STUDY_PNG = "augment_study.png"


def write_report(
    out: Path,
    config: RunConfig,
    metrics: dict[str, Any],
    analysis: dict[str, Any],
    skipped: list[dict[str, str]],
    test_analysis: dict[str, Any] | None = None,
    examples: Examples | None = None,
) -> Path:
    """`report.html`: the whole run on one page (summary, data, per-class results, figures,
    mistakes, Grad-CAM, stages, branches, best model, test, export, glossary, provenance)."""
    classes = metrics["classes"]
    tested = "test_accuracy" in metrics and test_analysis is not None
    per_class = per_class_table(analysis["models"]["merged"], classes, "validation")
    if tested:
        per_class += "<h3>Test images</h3>" + per_class_table(
            test_analysis["models"]["merged"], classes, "test"
        )
    name = html.escape(out.name)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>cellkeras run {name}</title>
<style>{STYLE}</style></head><body>
<h1>cellkeras run <code>{name}</code></h1>
{_summary(metrics, analysis)}
<p><b>validation accuracy {metrics["val_accuracy"]:.4f}</b>{_test_headline(metrics)} ·
model {html.escape(metrics["model"])} ({metrics["parameters"]:,} parameters) ·
{metrics["train_images"]} training / {metrics["val_images"]} validation images ·
classes {html.escape(", ".join(classes))} · {metrics["total_seconds"]:.0f} s ·
policy {html.escape(metrics["dtype_policy"])} · {metrics["replicas"]} replica(s)</p>
<h2>Images per class and split</h2>{split_counts_table(out / "split.csv", classes, config.data.val_blocks)}
<h2>Results per class</h2>{per_class}
{_figures(out)}
<h2>Mistakes</h2>{_mistakes_section(examples)}
<h2>Where the model looks</h2>{_gradcam_section(examples)}
<h2>Augmentation</h2>{_augmentation_section(out, config.train.augment)}
<h2>Stages</h2>{_stages(metrics)}
<h2>Branches and merge (validation, final size)</h2>{_branches(analysis)}
<h2>Best model (<code>best.keras</code>)</h2>{_best_section(metrics)}
<h2>Test</h2>{_test_section(metrics, test_analysis)}
<h2>Export</h2>{_export(metrics, config)}
<h2>Skipped inputs</h2>{_skipped(skipped)}
<h2>Glossary</h2>{glossary()}
<h2>How this run was made</h2>{provenance(config)}
<h3>Configuration</h3><pre>{html.escape(json.dumps(config.to_dict(), indent=2))}</pre>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _summary(metrics: dict[str, Any], analysis: dict[str, Any]) -> str:
    classes = metrics["classes"]
    merged = analysis["models"]["merged"]
    scored = analysis["num_samples"]
    wrong = round(scored * (1 - merged["accuracy"]))
    text = (
        f"The model sorts images into {len(classes)} classes "
        f"({html.escape(', '.join(classes))}). On the {scored} validation images, which it "
        f"did not learn from, it named the right class for {merged['accuracy'] * 100:.1f} % "
        f"of them ({wrong} wrong)."
    )
    if "test_accuracy" in metrics:
        low, high = metrics["test_accuracy_ci"]
        text += (
            f" On the {metrics['test_images']} test images, kept apart until the end, it was "
            f"right for {metrics['test_accuracy'] * 100:.1f} % (95 % interval "
            f"{low * 100:.1f}-{high * 100:.1f} %): the fairest estimate for new images like "
            "these."
        )
    text += f" Training took {metrics['total_seconds']:.0f} s."
    return f'<p class="summary">{text}</p>'


def _figures(out: Path) -> str:
    parts = []
    if (out / "confusion_matrices.png").is_file():
        parts.append(
            figure("confusion_matrices.png", CONFUSION_CAPTION, "confusion matrices, validation")
        )
    if (out / "reliability.png").is_file():
        parts.append(figure("reliability.png", RELIABILITY_CAPTION, "reliability diagram"))
    if (out / "training_curves.png").is_file():
        parts.append(
            figure(
                "training_curves.png",
                "Loss (lower is better) and accuracy for each epoch, on the training images "
                "(which the model learns from, augmented if the run augments) and on the "
                "validation images. Dashed lines mark where the image size changes. Validation well below training means "
                "the model memorises its training images instead of learning the classes.",
                "training curves",
            )
        )
    return "<h2>Figures</h2>" + "".join(parts) if parts else ""


def _mistakes_section(examples: Examples | None) -> str:
    if examples is None or examples.skipped:
        why = examples.skipped if examples else "not collected for this run"
        return f"<p>no gallery: {html.escape(why)}</p>"
    if not examples.shown_mistakes:
        return f"<p>none: every one of the {examples.images} validation images is right.</p>"
    return figure(
        MISTAKES_PNG,
        f"The {examples.shown_mistakes} validation images the model got wrong with the "
        f"highest confidence, of {examples.mistakes} wrong in {examples.images}, as the model "
        "saw them (at the final training size): the true class, the predicted class and the "
        "confidence in it. A confident mistake is worth a look: the label may be wrong, the "
        "image unusual, or two classes may look alike at this size.",
        "misclassified validation images",
    )


def _gradcam_section(examples: Examples | None) -> str:
    if examples is None or examples.skipped or not examples.samples:
        why = examples.skipped if examples and examples.skipped else "no validation images"
        return f"<p>not drawn: {html.escape(why)}</p>"
    return figure(
        GRADCAM_PNG,
        f"One validation image of each of {len(examples.samples)} classes (the first the model "
        "gets right) and, under it, where the evidence for the predicted class lies: red is "
        "strong, blue none (Grad-CAM of "
        f"{html.escape(examples.explained)}). Each map is scaled to its own peak, so compare "
        "where the heat is, not how much, between images. Heat on the background or on a "
        "neighbouring cell is a warning that the model uses something other than the cell. "
        "<code>cellkeras explain IMAGE --model RUN_FOLDER --branches</code> draws the same "
        "for any image, per branch.",
        "Grad-CAM maps of sample images",
    )


def _augmentation_section(out: Path, preset: str) -> str:
    study = (
        "<code>cellkeras augment-preview</code> draws every preset; "
        "<code>scripts/experiment_augment.py</code> measures them (docs/BENCHMARKS.md, "
        '"Augmentation study").'
    )
    if preset == "none":
        gallery = "<p>This run trained on the images as they are (<code>--augment=none</code>).</p>"
    elif (out / AUGMENT_PNG).is_file():
        caption = (
            f"Five random draws of this run's augmentation (<code>{html.escape(preset)}</code>) "
            "on each sample image: what training images looked like to the model."
        )
        gallery = figure(AUGMENT_PNG, caption, f"augmentation {preset}")
    else:
        gallery = f"<p>This run trained with <code>--augment={html.escape(preset)}</code>.</p>"
    return gallery + _augmentation_study(out, preset) + f"<p>{study}</p>"


def _augmentation_study(out: Path, preset: str) -> str:
    """The published augmentation study's figure with this run's preset marked, and what it
    found for that preset in words; nothing when the package carries no study."""
    published = load_published()
    if published is None or not published["runs"]:
        return ""
    runs = published["runs"]
    study_figure(runs, out / AUGMENT_STUDY_PNG, highlight=preset)
    found = html.escape(answer(runs, preset)) or (
        f"<code>{html.escape(preset)}</code> was not in the study"
    )
    seeds = len({r["seed"] for r in runs})
    text = (
        "Which augmentation helps cell images: every preset trained through this trainer at its "
        f"defaults on real sets and synthetic cells, {seeds} seeds each "
        f"({html.escape(published['machine'])}). Test accuracy of this run's preset, per set: "
        f"{found}. The default preset is the one with the best validation "
        "accuracy (test images were not used to choose)."
    )
    return figure(AUGMENT_STUDY_PNG, text, "augmentation study")


def _stages(metrics: dict[str, Any]) -> str:
    rows = [
        [i + 1, s.get("trains", JOINT), "x".join(map(str, s["size"])), s["epochs"],
         s["seconds"], f"{s['val_accuracy']:.4f}", f"{s['augment_strength']:.2f}"]
        for i, s in enumerate(metrics["stages"])
    ]  # fmt: skip
    header = ["stage", "trains", "size", "epochs", "seconds", "val accuracy", "augment strength"]
    return table(header, rows, first_left=False) + caption(
        "Training moves through image sizes (the schedule); each row is one size, with the "
        "validation accuracy at its end, measured at that size."
    )


def _branches(analysis: dict[str, Any]) -> str:
    models = table(
        ["model", "accuracy", "ECE", "Brier"],
        [
            [name, f"{m['accuracy']:.4f}", f"{m['ece']:.4f}", f"{m['brier']:.4f}"]
            for name, m in analysis["models"].items()
        ],
    )
    pairs = table(
        ["pair", "disagreement", "double fault", "oracle accuracy"],
        [
            [" + ".join(p["models"]), f"{p['disagreement']:.4f}", f"{p['double_fault']:.4f}",
             f"{p['oracle_accuracy']:.4f}"]
            for p in analysis["pairs"]
        ],
    )  # fmt: skip
    return (
        models
        + caption(
            "Each branch on its own and the merged model. ECE: how far confidence is from "
            "accuracy (0 is honest); Brier score: error of the probabilities (0 is perfect)."
        )
        + pairs
        + caption(
            "How the mistakes of two models overlap. Disagreement: images they answer "
            "differently; double fault: images both get wrong (low is good for merging); "
            "oracle accuracy: images at least one gets right, the most a merge could reach."
        )
    )


def _best_section(metrics: dict[str, Any]) -> str:
    best = metrics.get("best")
    final = "x".join(map(str, metrics["final_size"]))
    why = (
        f"<p>Chosen by {html.escape(best['rule'] if best else 'validation accuracy')}: "
        f"{final} px. Validation accuracy at a smaller stage size is measured on smaller images "
        "than the model is exported and evaluated at, so it is not comparable with accuracy at "
        "the final size, and those epochs do not compete. <code>model.keras</code> and the "
        "export hold the last epoch's weights, not these.</p>"
    )
    if not best:
        return "<p>none: no epoch at the final size had a validation accuracy</p>" + why
    size = "x".join(map(str, best["size"]))
    return (
        f"<p>epoch {best['epoch']} of {sum(s['epochs'] for s in metrics['stages'])} "
        f"(counted over the run), at {size} px, validation accuracy "
        f"{best['val_accuracy']:.4f}.</p>" + why
    )


def _test_headline(metrics: dict[str, Any]) -> str:
    if "test_accuracy" not in metrics:
        return ""
    low, high = metrics["test_accuracy_ci"]
    return f" · <b>test accuracy {metrics['test_accuracy']:.4f}</b> (95 % CI {low:.3f}-{high:.3f})"


def _test_section(metrics: dict[str, Any], analysis: dict[str, Any] | None) -> str:
    if "test_accuracy" not in metrics or analysis is None:
        return (
            "<p>no test split: every number above is on the validation images, which chose "
            "<code>best.keras</code>. Give a TEST folder, <code>--test_dir</code>, "
            "<code>--test_labels_csv</code>, <code>--test_tfrecords</code> or "
            "<code>--test_fraction</code> for an unbiased score.</p>"
        )
    intervals = {"merged": metrics["test_accuracy_ci"], **metrics["per_branch_test_accuracy_ci"]}
    rows = [
        [name, f"{m['accuracy']:.4f}", "{:.3f}-{:.3f}".format(*intervals[name]),
         f"{m['ece']:.4f}", f"{m['brier']:.4f}"]
        for name, m in analysis["models"].items()
    ]  # fmt: skip
    figures = figure(
        "test/confusion_matrices.png", "test: " + CONFUSION_CAPTION, "test confusion_matrices"
    ) + figure("test/reliability.png", "test: " + RELIABILITY_CAPTION, "test reliability")
    return (
        f"<p>{metrics['test_images']} images from {html.escape(metrics['test_source'])}, "
        "scored once, at the end, by the final model at the final size; they chose nothing "
        "in this run (not <code>best.keras</code>, not a stage, not a learning rate). "
        f"The intervals ({html.escape(metrics['test_ci_method'])}) resample the test images: "
        "they cover the sampling noise of a test set this size, not a shift in the data.</p>"
        + table(["model", "accuracy", "95 % CI", "ECE", "Brier"], rows)
        + figures
    )


def _export(metrics: dict[str, Any], config: RunConfig) -> str:
    if "export" not in metrics:
        return "<p>not exported (pass <code>--export_dir</code>)</p>"
    return (
        f"<p>SavedModel: <code>{html.escape(metrics['export'])}</code> — check it with "
        f"<code>cellkeras serve-check {html.escape(str(config.export_dir))}</code></p>"
    )


def _skipped(skipped: list[dict[str, str]]) -> str:
    if not skipped:
        return "<p>none</p>"
    return table(["input", "reason"], [[s["input"], s["reason"]] for s in skipped])


def plot_curves(out: Path, phases: list[Phase]) -> None:
    with (out / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    boundaries = list(itertools.accumulate(phase.stage.epochs for phase in phases))[:-1]
    labels = [str(phase).rsplit(":", 1)[0] for phase in phases]
    figure = plot_training_curves(rows, boundaries, labels, title=f"{out.name}: training curves")
    save_figure(figure, out / "training_curves.png")
