"""The run report: per-class results, images per split, mistakes, Grad-CAM samples, captions,
glossary and provenance, on a run folder written without training (tiny model, 16 px images),
and the page as headless Chromium renders it."""

import csv
import html
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support

from cellkeras.evaluate import compare_models, reliability_bins
from cellkeras.evaluate import plots as evaluate_plots
from tests.conftest import TINY_CLASSES, tiny_model
from trainer.config import build_config
from trainer.report import write_report
from trainer.report_examples import (
    AUGMENT_PNG,
    GRADCAM_PNG,
    MISTAKES_PNG,
    collect_examples,
    pick_mistakes,
    pick_samples,
)
from trainer.report_text import reproduce_command

CHROMIUM = Path("/usr/bin/chromium")
N_VAL, N_TEST = 30, 12


def _scores(rng, n):
    labels = rng.integers(0, len(TINY_CLASSES), n)
    probs = rng.random((n, len(TINY_CLASSES))) + 1.5 * np.eye(len(TINY_CLASSES))[labels]
    return labels, (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def _metrics(analysis, test):
    return {
        "classes": TINY_CLASSES,
        "val_accuracy": analysis["models"]["merged"]["accuracy"],
        "per_branch_val_accuracy": {},
        "stages": [
            {
                "size": [16, 16],
                "epochs": 1,
                "seconds": 1.0,
                "trains": "joint",
                "val_accuracy": 0.5,
                "augment_strength": 1.0,
            }
        ],  # fmt: skip
        "total_seconds": 1.0,
        "train_images": 40,
        "val_images": N_VAL,
        "model": "tiny",
        "parameters": 123,
        "dtype_policy": "float32",
        "replicas": 1,
        "final_size": [16, 16],
        "best": None,
        "test_images": N_TEST,
        "test_accuracy": test["models"]["merged"]["accuracy"],
        "test_accuracy_ci": [0.4, 0.9],
        "per_branch_test_accuracy_ci": {},
        "test_source": "test_fraction 0.15 of synthetic",
        "test_ci_method": "percentile bootstrap, 1000 resamples, 95 %",
    }


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder as the trainer leaves it (split.csv, figures, report.html), from a tiny
    conv model's real predictions on random 16 px images: no training."""
    out = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    model = tiny_model()
    images = rng.random((N_VAL, 16, 16, 3), dtype=np.float32)
    labels, _ = _scores(rng, N_VAL)
    probs = model.predict(images, verbose=0)
    test_labels, test_probs = _scores(rng, N_TEST)
    analysis = compare_models(labels, {"merged": probs}, TINY_CLASSES)
    test = compare_models(test_labels, {"merged": test_probs}, TINY_CLASSES)
    with (out / "split.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for split, names in (("train", rng.integers(0, 3, 40)), ("val", labels),
                             ("test", test_labels)):  # fmt: skip
            writer.writerows(
                [f"synthetic:{i}", TINY_CLASSES[k], split] for i, k in enumerate(names)
            )
    bins = {"merged": reliability_bins(labels, probs)}
    evaluate_plots.save_figure(evaluate_plots.plot_reliability(bins), out / "reliability.png")
    batches = [(images[i : i + 8], labels[i : i + 8]) for i in range(0, N_VAL, 8)]
    examples = collect_examples(model, batches, labels, probs, TINY_CLASSES, out, "basic")
    config = build_config(
        "smoke", {"train.seed": 3, "data.balance": "oversample", "train.augment": "basic"}
    )
    config.output_dir = str(out)
    write_report(out, config, _metrics(analysis, test), analysis, [], test, examples)
    return {"out": out, "labels": labels, "probs": probs, "examples": examples,
            "test": (test_labels, test_probs), "config": config}  # fmt: skip


def _text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_report_has_per_class_results_split_counts_and_provenance(run_folder):
    page = (run_folder["out"] / "report.html").read_text()
    text = " ".join(_text(page).split())
    for labels, probs in ((run_folder["labels"], run_folder["probs"]), run_folder["test"]):
        precision, recall, f1, support = precision_recall_fscore_support(
            labels, probs.argmax(1), labels=range(3), zero_division=0
        )
        for k, name in enumerate(TINY_CLASSES):
            row = f"{name} {precision[k]:.3f} {recall[k]:.3f} {f1[k]:.3f} {support[k]}"
            assert row in text, row
    counts = np.bincount(run_folder["labels"], minlength=3)
    assert "class training validation test total" in text
    assert f"all 40 {N_VAL} {N_TEST} {40 + N_VAL + N_TEST}" in text
    assert f"{TINY_CLASSES[0]} " in text and str(counts[0]) in text
    for term in ("ECE", "Brier score", "double fault", "oracle accuracy", "bootstrap interval"):
        assert term in text, term
    assert re.search(r"Report written 20\d\d-\d\d-\d\d \d\d:\d\d UTC", text)
    for package in ("cellkeras", "tensorflow", "keras", "keras-cv", "tf-keras-vis", "python"):
        assert re.search(rf"{package} \d+\.\d+", text), package
    command = reproduce_command(run_folder["config"])
    assert html.escape(command) in page
    # Every figure and table has words under it.
    figures = re.findall(r"<figure>.*?</figure>", page, flags=re.S)
    assert len(figures) >= 6  # reliability, mistakes, Grad-CAM, augmentation, test x2
    assert all(len(_text(re.search(r"<figcaption>(.*?)</figcaption>", f).group(1))) > 60
               for f in figures)  # fmt: skip
    # ... and every table but the test scores (explained by the paragraph before it).
    assert page.count("<table") == 7
    assert len(re.findall(r'</table>(?!<p class="caption">)', page)) == 1


def test_report_galleries_show_mistakes_and_gradcam(run_folder):
    out, examples = run_folder["out"], run_folder["examples"]
    labels, probs = run_folder["labels"], run_folder["probs"]
    wrong = int(np.sum(probs.argmax(1) != labels))
    assert examples.images == N_VAL and examples.mistakes == wrong > 12
    assert examples.shown_mistakes == 12
    assert examples.samples == TINY_CLASSES  # one per class
    assert not __import__("tensorflow").config.functions_run_eagerly()  # put back
    page = (out / "report.html").read_text()
    assert f'src="{MISTAKES_PNG}"' in page and f'src="{GRADCAM_PNG}"' in page
    assert f'src="{AUGMENT_PNG}"' in page and "--augment=basic" in page
    assert f"of {wrong} wrong in {N_VAL}" in page
    with Image.open(out / AUGMENT_PNG) as sheet:  # a row per sample image: itself + 5 draws
        assert sheet.height > 3 * 16 and sheet.width > 6 * 16
    for name in (MISTAKES_PNG, GRADCAM_PNG):
        with Image.open(out / name) as image:
            assert image.width > 400 and np.asarray(image.convert("L")).std() > 10


def test_pick_mistakes_and_samples():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.3, 0.6], [0, 1, 0], [0, 0.95, 0.05], [1, 0, 0]]
    )
    assert pick_mistakes(labels, probs).tolist() == [5, 4, 1, 2]  # most confident first
    assert pick_mistakes(labels, probs, limit=2).tolist() == [5, 4]
    assert pick_samples(labels, probs, 3).tolist() == [0, 3, 4]  # class 2: none right, its first
    assert pick_samples(labels, probs, 3, limit=2).tolist() == [0, 3]


def test_reproduce_command_gives_the_config_back(tmp_path):
    from trainer.cli import _parse

    config = build_config(
        "smoke",
        {"train.schedule": "16:2,24x32:1", "train.deterministic": False, "data.balance": None,
         "data.channels": "0,2", "data.val_fraction": 0.25},
    )  # fmt: skip
    config.output_dir = str(tmp_path / "my run")
    command = reproduce_command(config)
    assert command.startswith("python -m trainer.task --preset=smoke ")
    assert "--nodeterministic" in command and "'--output_dir=" in command
    assert _parse(shlex.split(command)[3:]).to_dict() == config.to_dict()
    assert reproduce_command(build_config("default")) == (
        "python -m trainer.task --output_dir=runs/default"
    )


def test_reliability_plot_shows_bin_counts():
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    probs = np.eye(3)[y] * 0.7 + 0.1
    fig = evaluate_plots.plot_reliability({"merged": reliability_bins(y, probs)})
    _, counts = fig.axes
    assert counts.get_ylabel() == "images"
    assert [t.get_text() for t in counts.texts if t.get_text()] == ["7"]  # all in one bin


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium is not installed "
                    "(apt-get install chromium; .ci/run installs it)")  # fmt: skip
def test_report_renders_in_headless_chromium(run_folder, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "screenshot_report", Path(__file__).parents[1] / "scripts" / "screenshot_report.py"
    )
    script = importlib.util.module_from_spec(spec)
    sys.modules["screenshot_report"] = script
    spec.loader.exec_module(script)
    out = tmp_path / "shot.png"
    assert script.main([str(run_folder["out"]), "--out", str(out), "--height", "9000"]) == 0
    with Image.open(out) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"), np.float32)
    # The whole page, cut below its end: taller than a screen, well short of the window.
    assert width == script.WIDTH and 2000 < height < 9000
    assert pixels.std() > 20  # text, tables and figures, not a blank page
    # The figures were loaded: the Grad-CAM overlay's saturated colours are on the page.
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert np.mean(saturation > 100) > 0.01
    small = tmp_path / "small.png"  # the README's picture: the page's top, scaled down
    small.write_bytes(out.read_bytes())
    script.shrink(small, crop_height=800, width=640)
    assert Image.open(small).size == (640, 400)


def test_split_caption_says_where_a_time_lapse_validated(tmp_path):
    from trainer.report_text import split_counts_table

    rows = ["path,label,split"] + [f"f{i}.png,a,{s}" for i, s in enumerate(
        ["val", "gap", "train", "train", "gap", "val"])]  # fmt: skip
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    edges = " ".join(_text(split_counts_table(tmp_path / "split.csv", ["a"], "edges")).split())
    assert "validation blocks are each class's first and last frames in time" in edges
    spread = " ".join(_text(split_counts_table(tmp_path / "split.csv", ["a"], "spread")).split())
    assert "spread over each class's time range" in spread
    (tmp_path / "split.csv").write_text("path,label,split\nf0.png,a,train\nf1.png,a,val\n")
    assert "validation blocks" not in split_counts_table(tmp_path / "split.csv", ["a"], "edges")
