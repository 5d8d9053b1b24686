"""The run's pictures and its one-page report: `training_curves.png` and `report.html`."""

from __future__ import annotations

import csv
import html
import itertools
import json
from pathlib import Path
from typing import Any

from cellkeras.evaluate.plots import plot_training_curves, save_figure
from cellkeras.training import JOINT, Phase
from trainer.config import RunConfig


def write_report(
    out: Path,
    config: RunConfig,
    metrics: dict[str, Any],
    analysis: dict[str, Any],
    skipped: list[dict[str, str]],
    test_analysis: dict[str, Any] | None = None,
) -> Path:
    """`report.html`: the whole run on one page (figures, stages, branches, best model, test,
    export)."""

    def table(header: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    stages = table(
        ["stage", "trains", "size", "epochs", "seconds", "val accuracy", "augment strength"],
        [
            [i + 1, s.get("trains", JOINT), "x".join(map(str, s["size"])), s["epochs"],
             s["seconds"], f"{s['val_accuracy']:.4f}", f"{s['augment_strength']:.2f}"]
            for i, s in enumerate(metrics["stages"])
        ],
    )  # fmt: skip
    models = table(
        ["model", "accuracy", "ECE", "Brier"],
        [
            [name, f"{m['accuracy']:.4f}", f"{m['ece']:.4f}", f"{m['brier']:.4f}"]
            for name, m in analysis["models"].items()
        ],
    )  # fmt: skip
    pairs = table(
        ["pair", "disagreement", "double fault", "oracle accuracy"],
        [
            [" + ".join(p["models"]), f"{p['disagreement']:.4f}", f"{p['double_fault']:.4f}",
             f"{p['oracle_accuracy']:.4f}"]
            for p in analysis["pairs"]
        ],
    )  # fmt: skip
    best = _best_section(metrics)
    test = _test_section(metrics, test_analysis, table)
    figures = "".join(
        f'<figure><img src="{name}" alt="{name}"><figcaption>{name}</figcaption></figure>'
        for name in ("training_curves.png", "confusion_matrices.png", "reliability.png")
        if (out / name).is_file()
    )
    skipped_html = (
        table(["input", "reason"], [[s["input"], s["reason"]] for s in skipped])
        if skipped
        else "<p>none</p>"
    )
    export = (
        f"<p>SavedModel: <code>{html.escape(metrics['export'])}</code> — check it with "
        f"<code>cellkeras serve-check {html.escape(str(config.export_dir))}</code></p>"
        if "export" in metrics
        else "<p>not exported (pass <code>--export_dir</code>)</p>"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>cellkeras run {html.escape(out.name)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f0f0f0; }} img {{ max-width: 100%; }} figure {{ margin: 1em 0; }}
code, pre {{ background: #f6f6f6; }}
</style></head><body>
<h1>cellkeras run <code>{html.escape(out.name)}</code></h1>
<p><b>validation accuracy {metrics["val_accuracy"]:.4f}</b>{_test_headline(metrics)} ·
model {html.escape(metrics["model"])} ({metrics["parameters"]:,} parameters) ·
{metrics["train_images"]} training / {metrics["val_images"]} validation images ·
classes {html.escape(", ".join(metrics["classes"]))} · {metrics["total_seconds"]:.0f} s ·
policy {html.escape(metrics["dtype_policy"])} · {metrics["replicas"]} replica(s)</p>
<h2>Stages</h2>{stages}
<h2>Branches and merge (validation, final size)</h2>{models}{pairs}
{figures}
<h2>Best model (<code>best.keras</code>)</h2>{best}
<h2>Test</h2>{test}
<h2>Export</h2>{export}
<h2>Skipped inputs</h2>{skipped_html}
<h2>Configuration</h2><pre>{html.escape(json.dumps(config.to_dict(), indent=2))}</pre>
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


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


def _test_section(metrics: dict[str, Any], analysis: dict[str, Any] | None, table) -> str:
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
    figures = "".join(
        f'<figure><img src="test/{name}" alt="test {name}"><figcaption>test: {name}'
        "</figcaption></figure>"
        for name in ("confusion_matrices.png", "reliability.png")
    )
    return (
        f"<p>{metrics['test_images']} images from {html.escape(metrics['test_source'])}, "
        "scored once, at the end, by the final model at the final size; they chose nothing "
        "in this run (not <code>best.keras</code>, not a stage, not a learning rate). "
        f"The intervals ({html.escape(metrics['test_ci_method'])}) resample the test images: "
        "they cover the sampling noise of a test set this size, not a shift in the data.</p>"
        + table(["model", "accuracy", "95 % CI", "ECE", "Brier"], rows)
        + figures
    )


def plot_curves(out: Path, phases: list[Phase]) -> None:
    with (out / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    boundaries = list(itertools.accumulate(phase.stage.epochs for phase in phases))[:-1]
    labels = [str(phase).rsplit(":", 1)[0] for phase in phases]
    figure = plot_training_curves(rows, boundaries, labels, title=f"{out.name}: training curves")
    save_figure(figure, out / "training_curves.png")
