"""Would a dense and an ordinal head together do better than either? A diagnostic, not a bench.

For each bench_real run pair (the same set, seed and split trained once with the dense head,
the default, and once with `--ordinal=time`), both final models score the run's validation and
TEST images at the run's final size, alone and combined: the mean of their probabilities and
their normalized geometric mean (a product of experts). It reads TEST, so nothing it prints may
choose a default; it says whether a combined design is worth building and validating.

    python scripts/diagnose_heads.py --dense runs/var/base_here --ordinal runs/var/ordinal3 \
        --sets embryo8:start embryo6:end --seeds 0 1 2 3 4 5 6 7

The control for "two trainings are better than one", whatever their heads: two dense runs of
different seeds (the splits do not depend on the seed), `--ordinal runs/var/base_here
--second_seed_offset 1` (the second model of seed s is the run of the next seed in the list).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def run_folder(root: Path, name: str, seed: int) -> Path:
    return root / "runs" / f"{name.replace(':', '-')}__default__seed{seed}"


def final_size(folder: Path) -> tuple[int, int]:
    last = json.loads((folder / "metrics.json").read_text())["schedule"].split(",")[-1]
    side = last.split(":")[0]
    height, _, width = side.partition("x")
    return int(height), int(width or height)


def split_images(folder: Path):
    """`{split: (paths, class names)}` from the run's split.csv."""
    with (folder / "split.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    parts: dict[str, tuple[list[str], list[str]]] = {}
    for row in rows:
        paths, labels = parts.setdefault(row["split"], ([], []))
        paths.append(row["path"])
        labels.append(row["label"])
    return parts


def predict(models, paths: list[str], labels: list[str], classes, size) -> tuple:
    """Each model's probabilities on the images (decoded once for all), and their labels."""
    from cellkeras.data import make_dataset
    from cellkeras.data.imageset import ImageSet

    index = {name: i for i, name in enumerate(classes)}
    images = ImageSet(classes=list(classes), labels=[index[c] for c in labels], paths=paths)
    dataset = make_dataset(images, size, training=False, channels=3, normalization="range")
    batches = [x for x, _ in dataset]
    probs = [np.concatenate([np.asarray(m(x, training=False)) for x in batches]) for m in models]
    return probs, images.labels


def combined(dense: np.ndarray, ordinal: np.ndarray) -> dict[str, np.ndarray]:
    log = 0.5 * (np.log(np.clip(dense, 1e-12, 1)) + np.log(np.clip(ordinal, 1e-12, 1)))
    product = np.exp(log - log.max(axis=1, keepdims=True))
    return {
        "dense": dense,
        "ordinal": ordinal,
        "mean": 0.5 * (dense + ordinal),
        "product": product / product.sum(axis=1, keepdims=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dense", type=Path, required=True)
    parser.add_argument("--ordinal", type=Path, required=True)
    parser.add_argument("--sets", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--second_seed_offset",
        type=int,
        default=0,
        help="pair seed s's first run with the second folder's run this many seeds later",
    )
    args = parser.parse_args()

    import keras

    import cellkeras.models.registry  # noqa: F401  (registers the custom layers)

    print("| set | seed | split | first (--dense) | second (--ordinal) | mean | product |")
    print("|---|---|---|---|---|---|---|")
    totals: dict[tuple[str, str], list[list[float]]] = {}
    for name in args.sets:
        for i, seed in enumerate(args.seeds):
            second = args.seeds[(i + args.second_seed_offset) % len(args.seeds)]
            folders = [run_folder(args.dense, name, seed), run_folder(args.ordinal, name, second)]
            models = [keras.saving.load_model(f / "model.keras") for f in folders]
            size = final_size(folders[0])
            parts = split_images(folders[0])
            if parts != split_images(folders[1]):
                raise SystemExit(f"{name} seed {seed}: the two runs split the images differently")
            classes = sorted({c for _, labels in parts.values() for c in labels})
            for split in ("val", "test"):
                paths, labels = parts[split]
                (dense, ordinal), truth = predict(models, paths, labels, classes, size)
                scores = {
                    k: float(np.mean(p.argmax(1) == truth))
                    for k, p in combined(dense, ordinal).items()
                }
                totals.setdefault((name, split), []).append(list(scores.values()))
                cells = " | ".join(f"{v:.3f}" for v in scores.values())
                print(f"| {name} | {seed} | {split} | {cells} |")
    for (name, split), rows in totals.items():
        cells = " | ".join(f"{v:.3f}" for v in np.mean(rows, axis=0))
        print(f"| {name} | mean | {split} | {cells} |")


if __name__ == "__main__":
    main()
