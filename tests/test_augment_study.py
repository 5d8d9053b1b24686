"""The augmentation study's summary, its validation-only choice of a default, its figure, and
the report section that draws it with the run's own preset marked."""

import json

import numpy as np
import pytest
from PIL import Image

from cellkeras.augment import study
from trainer import report


def _run(set_name, preset, seed, val, test, seconds=10.0):
    return {"set": set_name, "preset": preset, "seed": seed, "val_accuracy": val,
            "test_accuracy": test, "test_accuracy_ci": [test - 0.05, min(test + 0.05, 1.0)],
            "seconds": seconds}  # fmt: skip


@pytest.fixture
def runs():
    rows = []
    for seed in range(3):
        for set_name, shift in (("real_a", 0.0), ("real_b", -0.1)):
            rows.append(_run(set_name, "none", seed, 0.95 + shift, 0.80 + 0.02 * seed, 10))
            rows.append(_run(set_name, "basic", seed, 0.90 + shift, 0.70 + 0.05 * seed, 15))
            # Level with none on validation but slower: a tie that `none` wins on cost.
            rows.append(_run(set_name, "mix", seed, 0.955 + shift, 0.99, 20))
    rows.append(_run("real_a", "gridmask", 0, 1.0, 1.0))  # not on every set: cannot be chosen
    return rows


def test_summary_means_sd_and_paired_wins(runs):
    stats = study.summarize(runs)
    basic = stats["real_a", "basic"]
    assert basic["n"] == 3
    assert basic["mean"] == pytest.approx(np.mean([0.70, 0.75, 0.80]))
    assert basic["sd"] == pytest.approx(np.std([0.70, 0.75, 0.80], ddof=1))
    assert basic["val_mean"] == pytest.approx(0.90)
    # basic - none per seed: -0.10, -0.07, -0.04, never better.
    assert basic["vs_none"] == pytest.approx(-0.07)
    assert (basic["wins"], basic["paired"]) == (0, 3)
    assert stats["real_a", "none"]["vs_none"] is None


def test_default_is_chosen_on_validation_with_ties_to_none(runs):
    choice = study.choose_default(study.summarize(runs))
    # mix has the best test accuracy and a validation 0.005 above none: inside TIE.
    assert choice["tied"] == ["mix", "none"]
    assert choice["preset"] == "none"
    assert "gridmask" not in choice["scores"]
    assert choice["scores"]["basic"][0] == pytest.approx(0.85)


def test_a_tie_without_none_goes_to_the_higher_validation(runs):
    for run in runs:
        if run["preset"] == "basic":
            run["val_accuracy"] += 0.062  # 0.007 above mix: tied with it; 0.012 above none
    choice = study.choose_default(study.summarize(runs))
    assert choice["tied"] == ["basic", "mix"]
    assert choice["preset"] == "basic"


def test_a_clear_validation_winner_is_chosen_whatever_the_test_says(runs):
    for run in runs:
        if run["preset"] == "basic":
            run["val_accuracy"] += 0.2
    assert study.choose_default(study.summarize(runs))["preset"] == "basic"


def test_figure_has_a_panel_per_set(runs, tmp_path):
    path = study.figure(runs, tmp_path / "study.png", highlight="basic")
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[1] > 1.5 * pixels.shape[0]  # two panels side by side
    orange = np.all(np.abs(pixels.astype(int) - (255, 127, 14)) < 40, axis=-1)
    assert orange.sum() > 20  # the highlighted preset is drawn


def test_answer_names_every_set(runs):
    text = study.answer(runs, "basic")
    assert "real_a: 0.750 against none's 0.820 (0 of 3 seeds better)" in text
    assert "real_b" in text
    assert study.answer(runs, "randaugment") == ""


def test_report_draws_the_published_study(runs, tmp_path, monkeypatch):
    published = tmp_path / "study_results.json"
    published.write_text(json.dumps({"commits": ["abc"], "machine": "test VM", "runs": runs}))
    monkeypatch.setattr(report, "load_published", lambda: study.load_published(published))
    section = report._augmentation_section(tmp_path, "basic")
    assert (tmp_path / report.AUGMENT_STUDY_PNG).is_file()
    assert 'src="augment_study.png"' in section
    assert "3 seeds" in section and "test VM" in section
    assert "real_a: 0.750 against none" in section


def test_report_without_a_published_study_has_no_study_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "load_published", lambda: None)
    section = report._augmentation_section(tmp_path, "none")
    assert "augment_study.png" not in section
    assert not (tmp_path / report.AUGMENT_STUDY_PNG).exists()
    assert study.load_published(tmp_path / "missing.json") is None
