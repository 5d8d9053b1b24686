"""The augmentation study's results: summary, the choice of a default, and its figure.

`scripts/experiment_augment.py` trains every preset through the trainer on real sets over
seeds and publishes its runs as `study_results.json` beside this module; the trainer's report
draws the same figure from that file with the run's own preset marked, so a user sees what the
study found for the preset they chose.

A run is a dict with at least ``set``, ``preset``, ``seed``, ``val_accuracy``,
``test_accuracy``, ``test_accuracy_ci`` (two floats) and ``seconds``.

The default is chosen on **validation** accuracy only (the test blocks are for reporting):
the preset with the highest mean over sets of its mean validation accuracy over seeds. Presets
within `TIE` of the best count as tied, and a tie that `none` is in goes to `none`: it costs
nothing and assumes nothing about the images (measured seconds do not decide: on a shared
machine they move more than the presets' real costs differ).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

PUBLISHED = Path(__file__).with_name("study_results.json")
# Validation accuracies closer than this are less than one image apart on the embryo's
# validation blocks (~56 images) and a few on the larger sets: not a difference to choose by.
TIE = 0.01


def summarize(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (set, preset): seeds, mean and sd of test and validation accuracy, the mean of the
    runs' test bootstrap intervals, mean seconds, and the paired difference to `none` (same
    seeds) with how many seeds it was positive."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["set"], run["preset"]), []).append(run)
    stats = {}
    for (set_name, preset), members in groups.items():
        test = [m["test_accuracy"] for m in members]
        val = [m["val_accuracy"] for m in members]
        none = {m["seed"]: m["test_accuracy"] for m in groups.get((set_name, "none"), [])}
        paired = [m["test_accuracy"] - none[m["seed"]] for m in members if m["seed"] in none]
        stats[set_name, preset] = {
            "n": len(test),
            "mean": statistics.fmean(test),
            "sd": statistics.stdev(test) if len(test) > 1 else float("nan"),
            "val_mean": statistics.fmean(val),
            "ci": [statistics.fmean(m["test_accuracy_ci"][k] for m in members) for k in (0, 1)],
            "seconds": statistics.fmean(m["seconds"] for m in members),
            "vs_none": statistics.fmean(paired) if paired and preset != "none" else None,
            "wins": sum(d > 0 for d in paired),
            "paired": len(paired),
        }
    return stats


def choose_default(stats: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """The preset the study's validation accuracy picks (module docstring), with the score of
    every preset that ran on every set: ``{"preset", "scores": {preset: (val, seconds)},
    "tied": [...]}``. Only presets present on all the study's sets compete."""
    sets = sorted({s for s, _ in stats})
    presets = sorted({p for _, p in stats})
    complete = [p for p in presets if all((s, p) in stats for s in sets)]
    if not complete:
        raise ValueError("no preset ran on every set of the study: nothing to choose from")
    scores = {
        p: (
            statistics.fmean(stats[s, p]["val_mean"] for s in sets),
            statistics.fmean(stats[s, p]["seconds"] for s in sets),
        )
        for p in complete
    }
    best = max(v for v, _ in scores.values())
    tied = sorted(
        (p for p, (v, _) in scores.items() if v >= best - TIE), key=lambda p: -scores[p][0]
    )
    preset = "none" if "none" in tied else tied[0]
    return {"preset": preset, "scores": scores, "tied": tied, "sets": sets}


def load_published(path: Path = PUBLISHED) -> dict[str, Any] | None:
    """The published study (``{"runs": [...], "commits": [...], "machine": ...}``) or None."""
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def figure(
    runs: list[dict[str, Any]],
    path: Path,
    presets: list[str] | None = None,
    highlight: str | None = None,
) -> Path:
    """One panel per set: each preset's mean test accuracy ± sd over seeds (fluid presets blue),
    each seed's run with its bootstrap interval beside it, and validation means as open
    circles. `highlight` (a run's own preset) is drawn in orange and named in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarize(runs)
    sets = list(dict.fromkeys(r["set"] for r in runs))
    order = presets or list(dict.fromkeys(r["preset"] for r in runs))
    # One y range for every panel, from just under the lowest interval, so that presets a few
    # points apart are seen apart (from 0, everything above 0.7 looks level).
    lowest = min(min(r["test_accuracy_ci"][0], r["val_accuracy"]) for r in runs)
    bottom = max(0.0, math.floor(lowest * 20) / 20 - 0.05)
    fig, axes = plt.subplots(
        1, len(sets), figsize=(4.2 * len(sets), 4.4), squeeze=False, sharey=True
    )
    for ax, set_name in zip(axes[0], sets, strict=True):
        names = [p for p in order if (set_name, p) in stats]
        for x, preset in enumerate(names):
            st = stats[set_name, preset]
            color = "tab:blue" if preset.startswith("fluid") else "tab:gray"
            if preset == highlight:
                color = "tab:orange"
                ax.axvspan(x - 0.4, x + 0.45, color="tab:orange", alpha=0.12, lw=0)
            sd = 0 if st["n"] < 2 else st["sd"]
            ax.errorbar(x, st["mean"], yerr=sd, fmt="o", color=color, capsize=4, markersize=7)
            ax.plot(x, st["val_mean"], "o", mfc="none", mec=color, markersize=9, alpha=0.8)
            seeds = [r for r in runs if r["set"] == set_name and r["preset"] == preset]
            for k, run in enumerate(seeds):
                lo, hi = run["test_accuracy_ci"]
                acc = run["test_accuracy"]
                ax.errorbar(
                    x + 0.12 + 0.07 * k,
                    acc,
                    yerr=[[acc - lo], [hi - acc]],
                    fmt=".",
                    color="black",
                    alpha=0.45,
                    elinewidth=0.8,
                    markersize=4,
                )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_xlim(-0.5, len(names) - 0.3)
        ax.set_title(set_name)
        ax.set_ylim(bottom, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    fig.text(
        0.5,
        0.01,
        "filled dot: mean test accuracy over seeds ± sd; open circle: mean validation accuracy; "
        "small dots: each seed with its 95 % bootstrap interval on the test set",
        ha="center",
        fontsize=8,
    )
    title = "Augmentation presets through the trainer at its defaults (blue: fluidity)"
    if highlight:
        title += f"; orange: this run's --augment={highlight}"
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def answer(runs: list[dict[str, Any]], preset: str) -> str:
    """One plain sentence per set on how `preset` did against `none` in the study (test)."""
    stats = summarize(runs)
    parts = []
    for set_name in dict.fromkeys(r["set"] for r in runs):
        st, base = stats.get((set_name, preset)), stats.get((set_name, "none"))
        if st is None or base is None:
            continue
        if preset == "none":
            parts.append(f"{set_name}: {st['mean']:.3f} over {st['n']} seeds")
        else:
            parts.append(
                f"{set_name}: {st['mean']:.3f} against none's {base['mean']:.3f} "
                f"({st['wins']} of {st['paired']} seeds better)"
            )
    return "; ".join(parts)
