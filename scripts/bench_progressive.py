"""Progressive image-size training against fixed-size training at a final size >= 128 px,
through the real trainer.

For each data set and seed, one fixed-size run at the final size and one run per progressive
schedule, all through `trainer.task.run` with the same model, data, split, batch size, peak
learning rate and augmentation preset; only `--schedule` differs. Augmentation strength grows
with the stage's image size (`--stage_strength START:END`, EfficientNetV2's progressive
learning): a progressive run's small first stages get START, its final stage END, and the
fixed run END throughout, so both end regularized alike.

Data sets (`DATASETS`):
- `embryo`: the devolearn embryo stages as a user's TRAIN/TEST tree (`scripts/real_sets.py
  embryo6 --cut end`), 188x128 RGB frames trained at their full size, 128x188 (height x width);
  validation comes out of TRAIN by time blocks, TEST is a held-out time block.
- `synthetic`: the trainer's generated cells at `--synthetic_size` px (default 160), with a
  test fraction carved off.

Reported per schedule: final test accuracy (mean ± sd over seeds), training wall time (first
epoch's start to last epoch's end: data preparation excluded, identical for every arm; stage
switches, retracing and validation included) and its ratio to the same seed's fixed run. The
goal: the fixed run's mean test accuracy in <= 0.4x its time. Where the time goes: seconds per
epoch at each stage size (later epochs of a stage; its first epoch carries the retrace for the
new shape), against the share of pixels.

Every finished run is appended to `OUT/runs.jsonl`, keyed by data set, schedule, seed, the
settings and the code (git tree hashes of `cellkeras/` and `trainer/` plus any uncommitted
diff), so a rerun after a crash or kill picks up where it stopped, and a code change reruns.
Runs of one seed go one after the other (fixed, then each progressive schedule) before the
next seed, so machine load falls on all arms alike. Every run is `--deterministic`.

    nice -n 10 python scripts/bench_progressive.py                        # embryo + synthetic
    nice -n 10 python scripts/bench_progressive.py --datasets embryo --seeds 0 1 2
    python scripts/bench_progressive.py --table                           # cached runs only

Machine for the numbers in docs/BENCHMARKS.md: the project's 2-core x86-64 CPU VM, no GPU,
shared with other jobs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(1, str(REPO))

import numpy as np  # noqa: E402

# Per data set: the fixed schedule, the progressive ones, and trainer overrides every arm
# shares. Batch 16: about 10 optimizer steps per epoch on the embryo tree's ~165 training
# frames, where the trainer's 32 gives 5.
DATASETS = {
    "embryo": {
        "fixed": "128x188:10",
        "progressive": ["64x94:6,128x188:2"],
        "overrides": {"train.batch_size": 16},
    },
    "synthetic": {
        "fixed": "160:6",
        "progressive": ["80:5,160:1"],
        "overrides": {"data.test_fraction": 0.2, "train.batch_size": 16},
    },
}


def code_version() -> str:
    """What the runs were trained with: the committed trees of the code plus any uncommitted
    change to them (a cached run of other code is not reused)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        ).stdout

    trees = git("rev-parse", "HEAD:cellkeras", "HEAD:trainer")
    diff = git("diff", "HEAD", "--", "cellkeras", "trainer")
    return hashlib.sha1((trees + diff).encode()).hexdigest()[:12]


def run_key(dataset: str, schedule: str, seed: int, settings: dict, code: str) -> str:
    return json.dumps(
        {"dataset": dataset, "schedule": schedule, "seed": seed, **settings, "code": code},
        sort_keys=True,
    )


def load_cache(path: Path) -> dict[str, dict]:
    """Finished runs by key; a torn last line (a kill mid-write) is dropped."""
    runs = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            runs[row["key"]] = row
    return runs


def append_run(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:  # one write per run: a kill leaves whole lines
        handle.write(json.dumps(row) + "\n")


def train(overrides: dict, out: Path) -> dict:
    """One trainer run; its metrics and the wall clock of every epoch."""
    import keras

    from trainer.config import build_config
    from trainer.task import run

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows: list[tuple[float, float]] = []
            self.start: float | None = None

        def on_epoch_begin(self, epoch, logs=None):
            if self.start is None:
                self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.rows.append((time.perf_counter() - self.start, float(logs["val_accuracy"])))

    config = build_config("default", overrides)
    config.output_dir = str(out)
    clock = EpochClock()
    began = time.perf_counter()
    metrics = run(config, verbose=0, callbacks=[clock])
    return {
        "test_accuracy": metrics.get("test_accuracy"),
        "val_accuracy": metrics["val_accuracy"],
        "seconds": clock.rows[-1][0],
        "run_seconds": time.perf_counter() - began,
        "epochs": clock.rows,  # (seconds since the first epoch began, val accuracy)
        "stages": [
            {k: s[k] for k in ("size", "epochs", "seconds", "augment_strength")}
            for s in metrics["stages"]
        ],
        "steps_per_epoch": metrics["steps_per_epoch"],
        "splits": metrics["splits"],
        "model": metrics["model"],
    }


def dataset_overrides(dataset: str, args) -> dict:
    if dataset == "embryo":
        from real_sets import build

        root = build("embryo6", args.embryo_cut, REPO / "runs" / "real_sets")
        data = {"data.data_dir": str(root)}
    else:
        data = {"data.synthetic_images": args.synthetic_images,
                "data.synthetic_size": args.synthetic_size}  # fmt: skip
    return {**data, **DATASETS[dataset]["overrides"]}


def epoch_costs(run: dict) -> list[tuple[str, float, float | None]]:
    """(size, first epoch s, median later epoch s) per stage, from the epoch clock."""
    ends = np.cumsum([0] + [s["epochs"] for s in run["stages"]])
    times = np.diff([0.0] + [t for t, _ in run["epochs"]])
    costs = []
    for stage, lo, hi in zip(run["stages"], ends[:-1], ends[1:], strict=True):
        later = times[lo + 1 : hi]
        size = "x".join(map(str, stage["size"]))
        costs.append((size, float(times[lo]), float(np.median(later)) if len(later) else None))
    return costs


def summarize(rows: list[dict], datasets: list[str]) -> str:
    """The markdown table: per data set and schedule, over seeds."""
    lines = [
        "| data | schedule | seeds | test accuracy, mean ± sd (per seed) | training s, mean "
        "| time / fixed time, mean (range) | fixed's mean test accuracy reached |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for dataset in datasets:
        mine = [r for r in rows if r["dataset"] == dataset]
        fixed = {r["seed"]: r for r in mine if r["arm"] == "fixed"}
        if not fixed:
            continue
        fixed_mean = np.mean([r["test_accuracy"] for r in fixed.values()])
        for schedule in dict.fromkeys(r["schedule"] for r in mine):
            arm = [r for r in mine if r["schedule"] == schedule]
            acc = np.array([r["test_accuracy"] for r in arm])
            ratios = [r["seconds"] / fixed[r["seed"]]["seconds"] for r in arm if r["seed"] in fixed]
            reached = "–" if arm[0]["arm"] == "fixed" else (
                f"yes (+{acc.mean() - fixed_mean:.3f})" if acc.mean() >= fixed_mean
                else f"no ({acc.mean() - fixed_mean:+.3f})")  # fmt: skip
            lines.append(
                f"| {dataset} | `{schedule}` | {len(arm)} | {acc.mean():.3f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.3f} "
                f"({' / '.join(f'{a:.3f}' for a in acc)}) | {np.mean([r['seconds'] for r in arm]):.0f} "
                f"| {np.mean(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | {reached} |"
            )  # fmt: skip
            costs = [epoch_costs(r) for r in arm]
            per_size = []
            for i, (size, _, _) in enumerate(costs[0]):
                first = np.median([c[i][1] for c in costs])
                later = [c[i][2] for c in costs if c[i][2] is not None]
                per_size.append(
                    f"{size}: first epoch {first:.0f} s"
                    + (f", later {np.median(later):.0f} s" if later else "")
                )
            notes.append(f"{dataset} `{schedule}`: " + "; ".join(per_size))
    return (
        "\n".join(lines)
        + "\n\nSeconds per epoch (median over seeds):\n"
        + "\n".join(f"- {n}" for n in notes)
    )


def plot_runs(rows: list[dict], path: Path) -> None:
    """Validation accuracy against training time per data set, one line per run; hollow
    markers are epochs before the final size."""
    from cellkeras.evaluate.plots import _figure, save_figure

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig = _figure(5.2 * len(datasets), 3.8)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for ax, dataset in zip(axes, datasets, strict=True):
        mine = [r for r in rows if r["dataset"] == dataset]
        schedules = list(dict.fromkeys(r["schedule"] for r in mine))
        for r in mine:
            color = colors[schedules.index(r["schedule"]) % len(colors)]
            seconds, accuracy = zip(*r["epochs"], strict=True)
            final_from = len(seconds) - r["stages"][-1]["epochs"]
            label = f"`{r['schedule']}`" if r["seed"] == mine[0]["seed"] else None
            ax.plot(seconds, accuracy, color=color, alpha=0.7, label=label)
            ax.scatter(seconds[:final_from], accuracy[:final_from], s=16,
                       facecolors="none", edgecolors=color)  # fmt: skip
            ax.scatter(seconds[final_from:], accuracy[final_from:], s=16, color=color)
        ax.set_title(f"{dataset}: {len({r['seed'] for r in mine})} seeds")
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--stage_strength", default="0.33:1",
                        help="the trainer's --stage_strength for every run")  # fmt: skip
    parser.add_argument("--fixed", help="the fixed schedule instead of the data set's own")
    parser.add_argument("--progressive", nargs="*",
                        help="progressive schedules instead of the data set's own")  # fmt: skip
    parser.add_argument("--embryo_cut", default="end", choices=("end", "start", "middle"))
    parser.add_argument("--synthetic_images", type=int, default=240)
    parser.add_argument("--synthetic_size", type=int, default=160)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_progressive")
    parser.add_argument("--figure", type=Path,
                        default=REPO / "docs" / "images" / "progressive_vs_fixed.png")  # fmt: skip
    parser.add_argument("--table", action="store_true", help="print the cached runs only")
    args = parser.parse_args()

    cache_path = args.out / "runs.jsonl"
    code = code_version()
    rows = []
    for dataset in args.datasets:
        spec = dict(DATASETS[dataset])
        spec["fixed"] = args.fixed or spec["fixed"]
        spec["progressive"] = args.progressive or spec["progressive"]
        settings = {"stage_strength": args.stage_strength, "deterministic": True}
        if dataset == "embryo":
            settings["embryo_cut"] = args.embryo_cut
        else:
            settings.update(images=args.synthetic_images, size=args.synthetic_size)
        for seed in args.seeds:
            for arm, schedule in [("fixed", spec["fixed"])] + [
                ("progressive", s) for s in spec["progressive"]
            ]:
                key = run_key(dataset, schedule, seed, settings, code)
                cached = load_cache(cache_path).get(key)
                if cached is None and not args.table:
                    overrides = {
                        **dataset_overrides(dataset, args),
                        "train.schedule": schedule,
                        "train.seed": seed,
                        "train.stage_strength": args.stage_strength,
                        "train.deterministic": True,
                    }
                    out = args.out / f"{dataset}-{seed}-{schedule.replace(',', '_')}"
                    # Not in the cache: a killed run's checkpoint there would make the
                    # trainer resume it, and its clock would time only the rest.
                    shutil.rmtree(out, ignore_errors=True)
                    result = train(overrides, out)
                    cached = {"key": key, "dataset": dataset, "arm": arm,
                              "schedule": schedule, "seed": seed, "code": code, **result}  # fmt: skip
                    append_run(cache_path, cached)
                    print(
                        f"{dataset} seed {seed} `{schedule}`: test {result['test_accuracy']:.3f}"
                        f", val {result['val_accuracy']:.3f}, {result['seconds']:.0f} s",
                        flush=True,
                    )
                if cached is not None:
                    rows.append(cached)
    if not rows:
        print("no finished runs for this code and these settings")
        return
    plot_runs(rows, args.figure)
    print(f"\ncode {code}, stage strength {args.stage_strength}\n")
    print(summarize(rows, args.datasets))


if __name__ == "__main__":
    main()
