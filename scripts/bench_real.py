"""Real data through the trainer with defaults only, against baselines, over seeds.

Per real set (`scripts/real_sets.py`: a `TRAIN/TEST` class-folder tree with a frame manifest,
passed as `--data_dir`, TEST a held-out block of time), per seed, each run a fresh process:

- `default`: `python -m trainer.task --data_dir=ROOT --seed=S` and nothing else;
- `<branch>`: the default model's best branch trained alone, `--model=deep_narrow` (the same
  automatic budget: the schedule depends on the data only);
- `mobilenet_v2`: a standard Keras application (MobileNetV2, alpha 0.35, random init), same
  budget;
- `nearest_in_time` (embryo sets): each TEST frame labelled by its nearest TRAIN frame in
  time; not a classifier (it reads frame numbers), it measures how hard a cut is;
- `hog_logreg`: no deep learning: logistic regression on HOG features (scikit-image) of the
  same TRAIN images, scored on the same TEST images (no seed: one run stands for all).

Every finished run is one line of `--out/results.jsonl`; a restarted bench skips what is
there (delete a line to redo that run). The markdown table is printed and written to
`--out/table.md`; `--table` prints it from the results without running anything.

    nice -n 10 python scripts/bench_real.py                       # the grid below, ~1-2 h
    python scripts/bench_real.py --sets embryo6:end --seeds 0     # one set, one seed
    python scripts/bench_real.py --table

Machine: the project's 2-core x86-64 CPU VM, no GPU, shared with other jobs (times are
per run, under that load).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

DEFAULT_SETS = ("embryo6:end", "embryo8:start", "embryo4:middle", "ndev_nuclei")
DEFAULT_MODELS = ("default", "deep_narrow", "mobilenet_v2", "hog_logreg", "nearest_in_time")
# Runs that draw nothing at random: one run stands for every seed.
DETERMINISTIC = ("hog_logreg", "nearest_in_time")
HOG_SIZE = (64, 96)  # embryo frames for HOG (height, width); nucleus patches stay 32 px


def set_root(spec: str) -> tuple[str, Path]:
    import real_sets

    name, _, cut = spec.partition(":")
    return spec, real_sets.build(name, cut or "end")


def run_trainer(
    root: Path, model: str, seed: int, out: Path, trainer_flags: Sequence[str] = ()
) -> dict:
    """One trainer run in a fresh process (op determinism is process-wide); its metrics."""
    folder = out / "runs" / f"{root.name}__{model}__seed{seed}"
    argv = [sys.executable, "-m", "trainer.task", f"--data_dir={root}", f"--seed={seed}"]
    argv += [f"--output_dir={folder}"] + ([] if model == "default" else [f"--model={model}"])
    argv += list(trainer_flags)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    wall = None
    # A run that finished after its bench was stopped is taken as it is; one that was killed
    # resumes from its last epoch (the trainer's checkpoints), since the command is the same.
    if not (folder / "metrics.json").is_file():
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        wall = round(time.perf_counter() - start, 1)
        log = folder.parent / f"{folder.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(done.stdout[-20000:] + done.stderr[-20000:])
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((folder / "metrics.json").read_text())
    return {
        "test_accuracy": metrics["test_accuracy"],
        "test_accuracy_ci": metrics["test_accuracy_ci"],
        "val_accuracy": metrics["val_accuracy"],
        "per_branch_test_accuracy": metrics.get("per_branch_test_accuracy"),
        "stacking": (metrics.get("stacking") or {}).get("chosen"),
        "schedule": metrics.get("schedule"),
        "model_name": metrics["model"],
        "train_seconds": metrics["total_seconds"],
        "wall_seconds": wall,  # None: finished outside this bench process
    }


def _tree(root: Path, split: str) -> tuple[list[Path], list[str]]:
    paths = sorted(p for p in (root / split).rglob("*") if p.is_file())
    return paths, [p.parent.name for p in paths]


def hog_features(paths: list[Path]) -> np.ndarray:
    import cv2
    from skimage.feature import hog

    from cellkeras.io.images import decode_image

    features = []
    for path in paths:
        image = decode_image(path.read_bytes(), channels=1, normalization="percentile")[..., 0]
        if min(image.shape) > 48:
            image = cv2.resize(image, HOG_SIZE[::-1], interpolation=cv2.INTER_AREA)
        features.append(hog(image, pixels_per_cell=(8, 8), cells_per_block=(2, 2)))
    return np.array(features)


def run_hog(root: Path) -> dict:
    """Standardized HOG features -> logistic regression, fitted on TRAIN, scored on TEST."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cellkeras.evaluate import bootstrap_accuracy_interval

    start = time.perf_counter()
    train_paths, train_labels = _tree(root, "TRAIN")
    test_paths, test_labels = _tree(root, "TEST")
    classes = sorted(set(train_labels))
    y_train = np.array([classes.index(c) for c in train_labels])
    y_test = np.array([classes.index(c) for c in test_labels])
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    classifier.fit(hog_features(train_paths), y_train)
    predicted = classifier.predict(hog_features(test_paths))
    low, high = bootstrap_accuracy_interval(y_test, predicted, resamples=1000, seed=0)
    seconds = round(time.perf_counter() - start, 1)
    return {
        "test_accuracy": float(np.mean(predicted == y_test)),
        "test_accuracy_ci": [round(low, 4), round(high, 4)],
        "train_seconds": seconds,
        "wall_seconds": seconds,
        "model_name": "hog_logreg",
    }


def run_nearest_in_time(root: Path) -> dict:
    """Each TEST frame gets the stage of the TRAIN frame nearest to it in time (ties shared).

    Not a classifier: it reads the frame numbers, which no model sees. It is the accuracy of
    placing each stage boundary midway between the training frames on either side, i.e. of a
    model that reads the time off the image perfectly and knows nothing else, so it says
    how hard a cut is for anything that learns what the frames around a stage look like."""
    import real_sets

    rows = real_sets.read_manifest(root)
    train = [(seq, frame, name.split("/")[1]) for name, seq, frame in rows if name[:6] == "TRAIN/"]
    test = [(seq, frame, name.split("/")[1]) for name, seq, frame in rows if name[:5] == "TEST/"]
    hits = []
    for sequence, frame, stage in test:
        distance = {}
        for other_seq, other_frame, other_stage in train:
            if other_seq == sequence:
                gap = abs(other_frame - frame)
                distance[other_stage] = min(gap, distance.get(other_stage, gap))
        nearest = min(distance.values())
        tied = [name for name, gap in distance.items() if gap == nearest]
        hits.append(float(stage in tied) / len(tied))
    return {
        "test_accuracy": float(np.mean(hits)),
        "test_accuracy_ci": [float(np.mean(hits))] * 2,
        "train_seconds": 0.0,
        "wall_seconds": 0.0,
        "model_name": "nearest_in_time",
    }


def load_results(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["key"]: row for row in rows}


def _stats(values: list[float]) -> str:
    values = np.array(values)
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {sd:.3f}", f"{values.min():.3f}"


def _mean_or_dash(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{np.mean(known):.0f}" if known else "–"


def markdown(results: dict[str, dict], sets: list[str], models: list[str]) -> str:
    lines = [
        "| set (TEST block) | model | test accuracy mean ± sd | worst seed | per-seed values | "
        "mean 95 % bootstrap CI | branches inside (mean) | s per run (train / wall) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for spec in sets:
        for model in models:
            rows = [r for r in results.values() if r["set"] == spec and r["model"] == model]
            if not rows:
                continue
            rows.sort(key=lambda r: r["seed"])
            accuracy = [r["test_accuracy"] for r in rows]
            mean_sd, worst = _stats(accuracy)
            lows = np.mean([r["test_accuracy_ci"][0] for r in rows])
            highs = np.mean([r["test_accuracy_ci"][1] for r in rows])
            inside = ""
            if model == "default" and rows[0].get("per_branch_test_accuracy"):
                names = list(rows[0]["per_branch_test_accuracy"])
                inside = ", ".join(
                    f"{n} {np.mean([r['per_branch_test_accuracy'][n] for r in rows]):.3f}"
                    for n in names
                )
            seeds = "n/a (deterministic)" if model in DETERMINISTIC else f"n={len(rows)}"
            lines.append(
                f"| {spec} | {model} | {mean_sd} ({seeds}) | {worst} | "
                + " / ".join(f"{a:.3f}" for a in accuracy)
                + f" | [{lows:.3f}, {highs:.3f}] | {inside} | "
                + f"{np.mean([r['train_seconds'] for r in rows]):.0f} / "
                + _mean_or_dash([r["wall_seconds"] for r in rows])
                + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="*", default=list(DEFAULT_SETS), help="NAME[:CUT]")
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_real")
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    parser.add_argument(
        "--trainer_flags",
        nargs="*",
        default=[],
        help="extra trainer flags for every run of a variant (e.g. --trainer_flags=--precise_bn); "
        "give the variant its own --out",
    )
    args = parser.parse_args()
    args.trainer_flags = [flag for text in args.trainer_flags for flag in shlex.split(text)]
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.jsonl"
    results = load_results(results_path)
    if not args.table:
        roots = dict(set_root(spec) for spec in args.sets)
        # Seeds outermost: a bench stopped early still has every set and model at some seeds.
        for seed in args.seeds:
            for spec in args.sets:
                for model in args.models:
                    if model == "nearest_in_time" and not spec.startswith("embryo"):
                        continue  # the classes are not stages of one time-lapse
                    run_seed = 0 if model in DETERMINISTIC else seed
                    key = f"{spec}|{model}|{run_seed}"
                    if key in results:
                        continue
                    try:
                        if model == "hog_logreg":
                            row = run_hog(roots[spec])
                        elif model == "nearest_in_time":
                            row = run_nearest_in_time(roots[spec])
                        else:
                            row = run_trainer(
                                roots[spec], model, seed, args.out, args.trainer_flags
                            )
                    except RuntimeError as err:  # one failed run should not stop the grid
                        print(f"FAILED {key}: {err}", flush=True)
                        continue
                    row.update(key=key, set=spec, model=model, seed=run_seed)
                    if args.trainer_flags and model not in DETERMINISTIC:
                        row["trainer_flags"] = args.trainer_flags
                    results[key] = row
                    with results_path.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(f"{key}: test {row['test_accuracy']:.3f}", flush=True)
    table = markdown(results, args.sets, args.models)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
