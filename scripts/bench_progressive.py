"""Progressive image-size training against fixed-size training, through the real trainer.

For each data set and seed, two runs of `trainer.task.run` with the same model, data, split,
batch size, learning rate and augmentation:

- fixed: every epoch at the final size (`--fixed`, default `96:6`);
- progressive: small images first (`--progressive`, default `48:3,64:2,96:2`).

The target is the fixed run's final validation accuracy. "Time to target" is the wall time of
training (data preparation excluded, identical for both) until the first epoch whose validation
accuracy, measured at the final size, reaches the target; epochs of earlier, smaller stages do
not count, because a model is used at the size it is evaluated at. Runs alternate (fixed,
progressive, fixed, ...) so machine load falls on both alike. Every run is `--deterministic` (TensorFlow's op
determinism; `--no-deterministic` turns it off), so a rerun gives the same accuracies.

    python scripts/bench_progressive.py --seeds 0 1 2                 # synthetic + embryo
    python scripts/bench_progressive.py --datasets synthetic --seeds 0  # one quick pair

Machine for the numbers in docs/BENCHMARKS.md: the project's 2-core x86-64 CPU VM, no GPU.
Writes runs/bench_progressive/results.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from cellkeras.training.schedule import parse_schedule  # noqa: E402
from trainer.config import build_config  # noqa: E402
from trainer.task import run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

DATASETS = {
    # The main job's data; final size 96 px.
    "synthetic": {"data.synthetic_images": 2000},
    # The real embryo stages, grayscale, split by time blocks; 64x96 keeps the video's aspect.
    "embryo": {"data.source": "embryo", "data.channels": 1, "train.batch_size": 16},
}


class EpochClock(keras.callbacks.Callback):
    """Wall time since the first epoch began, and validation accuracy (at that epoch's image
    size), after every epoch."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[float, float]] = []
        self._start: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._start is None:
            self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append((time.perf_counter() - self._start, float(logs["val_accuracy"])))


def plot_runs(results: list[dict], path: Path) -> None:
    """Validation accuracy against training time, fixed vs progressive, one panel per data
    set, one line per seed; hollow markers are epochs at a smaller size than the final one."""
    from cellkeras.evaluate.plots import _figure, save_figure

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    fig = _figure(5.2 * len(datasets), 3.8)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets, strict=True):
        for r in (r for r in results if r["dataset"] == dataset):
            for kind, color in (("fixed", "tab:blue"), ("progressive", "tab:orange")):
                run = r[kind]
                rows = run.get("epochs") or run["final_size_epochs"]
                seconds, accuracy = zip(*rows, strict=True)
                final_from = len(rows) - len(run["final_size_epochs"])
                label = f"{kind} `{run['schedule']}`" if r["seed"] == results[0]["seed"] else None
                ax.plot(seconds, accuracy, color=color, alpha=0.8, label=label)
                ax.scatter(seconds[:final_from], accuracy[:final_from], s=18,
                           facecolors="none", edgecolors=color)  # fmt: skip
                ax.scatter(seconds[final_from:], accuracy[final_from:], s=18, color=color)
        ax.set_title(f"{dataset}: {len([r for r in results if r['dataset'] == dataset])} seeds")
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def train(dataset: str, schedule: str, seed: int, out: Path, deterministic: bool = True) -> dict:
    overrides = {
        **DATASETS[dataset],
        "train.schedule": schedule,
        "train.seed": seed,
        "train.deterministic": deterministic,
    }
    config = build_config("default", overrides)
    config.output_dir = str(out)
    clock = EpochClock()
    metrics = run(config, verbose=0, callbacks=[clock])
    stages = parse_schedule(schedule)
    final_epochs = stages[-1].epochs
    total = sum(s.epochs for s in stages)
    return {
        "schedule": schedule,
        "val_accuracy": metrics["val_accuracy"],
        "seconds": clock.rows[-1][0],
        # (seconds, val_accuracy) after every epoch, at that epoch's size
        "epochs": clock.rows,
        # (seconds, val_accuracy) of the epochs evaluated at the final size
        "final_size_epochs": clock.rows[total - final_epochs :],
    }


def time_to(target: float, run_result: dict) -> float | None:
    for seconds, accuracy in run_result["final_size_epochs"]:
        if accuracy >= target - 1e-9:
            return seconds
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--fixed", default="96:6")
    parser.add_argument("--progressive", default="48:3,64:2,96:2")
    parser.add_argument("--embryo_fixed", default="64x96:8")
    parser.add_argument("--embryo_progressive", default="32x48:4,48x72:2,64x96:2")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_progressive")
    parser.add_argument(
        "--figure", type=Path, default=REPO / "docs" / "images" / "progressive_vs_fixed.png"
    )
    # On by default: a comparison of two settings at one run each means something only when
    # a rerun of either gives the same number (docs/BENCHMARKS.md says what it costs).
    parser.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorFlow op determinism in every run (--no-deterministic: off)",
    )
    args = parser.parse_args()

    results = []
    for dataset in args.datasets:
        fixed, progressive = (
            (args.embryo_fixed, args.embryo_progressive)
            if dataset == "embryo"
            else (args.fixed, args.progressive)
        )
        for seed in args.seeds:
            base = args.out / f"{dataset}-{seed}"
            a = train(dataset, fixed, seed, base / "fixed", args.deterministic)
            b = train(dataset, progressive, seed, base / "progressive", args.deterministic)
            reached = time_to(a["val_accuracy"], b)
            row = {
                "dataset": dataset,
                "seed": seed,
                "fixed": a,
                "progressive": b,
                "progressive_seconds_to_target": reached,
                "time_ratio": None if reached is None else reached / a["seconds"],
            }
            results.append(row)
            print(
                f"{dataset} seed {seed}: fixed {a['val_accuracy']:.3f} in {a['seconds']:.0f} s; "
                f"progressive {b['val_accuracy']:.3f} in {b['seconds']:.0f} s; "
                + (
                    f"reached the fixed accuracy after {reached:.0f} s "
                    f"({reached / a['seconds']:.2f}x the fixed time)"
                    if reached is not None
                    else "did not reach the fixed accuracy at the final size"
                ),
                flush=True,
            )
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    plot_runs(results, args.figure)
    print(
        "\n| data | seed | fixed: schedule, val acc, s | progressive: schedule, val acc, s "
        "| progressive time to the fixed accuracy |"
    )
    print("|---|---|---|---|---|")
    for r in results:
        a, b = r["fixed"], r["progressive"]
        reached = (
            f"{r['progressive_seconds_to_target']:.0f} s ({r['time_ratio']:.2f}x)"
            if r["time_ratio"] is not None
            else "not reached"
        )
        print(
            f"| {r['dataset']} | {r['seed']} | `{a['schedule']}` {a['val_accuracy']:.3f}, "
            f"{a['seconds']:.0f} | `{b['schedule']}` {b['val_accuracy']:.3f}, {b['seconds']:.0f} "
            f"| {reached} |"
        )
    for dataset in args.datasets:
        rows = [r for r in results if r["dataset"] == dataset]
        ratios = [r["time_ratio"] for r in rows if r["time_ratio"] is not None]
        fixed_acc = np.array([r["fixed"]["val_accuracy"] for r in rows])
        prog_acc = np.array([r["progressive"]["val_accuracy"] for r in rows])
        print(
            f"{dataset}: fixed {fixed_acc.mean():.3f} ± {fixed_acc.std():.3f}, progressive "
            f"{prog_acc.mean():.3f} ± {prog_acc.std():.3f}; reached target in "
            f"{len(ratios)}/{len(rows)} seeds"
            + (f", median time ratio {np.median(ratios):.2f}x" if ratios else "")
        )


if __name__ == "__main__":
    main()
