"""Do two different branches make different mistakes, and does merging them help?

The seed's "parallel CNNs" claim (88 % and 91 % alone, 99 % merged), re-run on cellkeras'
`parallel_small` (the seed's pair: a wide-shallow branch on in-graph Canny-like edges, and a
deep-narrow branch with 5x5 kernels), on two data sets, for several seeds:

- synthetic: `cellkeras.data.synthetic.generate_cells`, 4 white-cell classes, separate seeds for
  training and validation images;
- embryo: the real devolearn C. elegans time-lapse cut into 8 stages
  (`cellkeras.data.samples.embryo_stages`), split by contiguous time blocks
  (`split_imageset`, guard gap), training classes balanced by over-sampling.

Per seed, two trainings of the same architecture:
1. stage-wise (the seed's recipe, `fit_stagewise`): each branch trained alone, then frozen, then
   the merge head trained. Its branches *are* independently trained single-branch models, so
   the same run gives "each branch alone", "average of the independent branches' probabilities"
   and "stage-wise merge".
2. joint (`fit_joint`): the whole model at once, with auxiliary per-branch losses.

Outputs in `--out` (default runs/experiment_parallel): results.json, a per-run folder with
`evaluate_branches` reports, table.md (the markdown table), and the figures docs/images/parallel_accuracy.png and
docs/images/parallel_confusion_<dataset>.png (seed 0). The markdown table is printed.

Command (the numbers in docs/BENCHMARKS.md, ~25 min):
    python scripts/experiment_parallel.py --seeds 0 1 2

Machine: 2-core x86-64 CPU, no GPU, TensorFlow 2.21 / Keras 3.15.1, float32, shared with other
jobs. A quick check: `--seeds 0 --datasets synthetic --epochs 2 --num_train 200`. The
whole script runs under TensorFlow's op determinism (`--no-deterministic` turns it off), so a
rerun gives the same table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np

from cellkeras.data import make_dataset
from cellkeras.data.splits import split_imageset
from cellkeras.evaluate import (
    accuracy,
    compare_models,
    evaluate_branches,
    plots,
    predict_branches,
)
from cellkeras.models import create_model
from cellkeras.training import fit_joint, fit_stagewise

REPO = Path(__file__).resolve().parents[1]
# Rows of the table, in order; "alone:<branch>" rows are added per branch.
MERGED_ROWS = ("average of independent branches", "stage-wise merge", "joint merge")


def load_data(name: str, seed: int, args: argparse.Namespace):
    """(train_ds, val_ds, classes) for one data set and seed."""
    if name == "synthetic":
        from cellkeras.data.synthetic import generate_cells

        # Validation images come from another generator seed: no image is in both sets.
        train = generate_cells(args.num_train, image_size=96, seed=1000 + seed)
        val = generate_cells(args.num_val, image_size=96, seed=2000 + seed)
        size, balance = (args.size, args.size), None
    elif name == "embryo":
        from cellkeras.data.samples import embryo_stages

        frames = embryo_stages(max_side=160, channels=1)
        train, val = split_imageset(frames, val_fraction=0.25, seed=seed)
        # The video is 752x512: keep its aspect ratio at about `size` pixels of height.
        size, balance = (args.size, round(args.size * 752 / 512 / 8) * 8), "oversample"
    else:
        raise ValueError(f"unknown dataset {name!r}; known: synthetic, embryo")
    train_ds = make_dataset(
        train, size, training=True, batch_size=args.batch_size, balance=balance, seed=seed
    )
    val_ds = make_dataset(val, size, training=False, batch_size=64)
    return train_ds, val_ds, train, val


def run_seed(name: str, seed: int, args: argparse.Namespace) -> dict:
    train_ds, val_ds, train, val = load_data(name, seed, args)
    channels = train.images.shape[-1]
    out = args.out / name / f"seed{seed}"
    result = {
        "seed": seed,
        "num_train": len(train),
        "num_val": len(val),
        "classes": train.classes,
        "image_shape": list(next(iter(val_ds))[0].shape[1:]),
    }
    epochs = args.epochs if name == "synthetic" else args.embryo_epochs
    head_epochs = args.head_epochs if name == "synthetic" else args.embryo_head_epochs

    def adam():
        return keras.optimizers.Adam(args.learning_rate)

    # 1. Stage-wise: branches alone (= independent single-branch models), then the head.
    keras.utils.set_random_seed(seed)
    model = create_model(args.model, train.num_classes, channels=channels)
    start = time.perf_counter()
    fit_stagewise(model, train_ds, None, epochs, head_epochs, adam, verbose=0)
    result["stagewise_seconds"] = time.perf_counter() - start
    labels, probs = predict_branches(model, val_ds)
    branches = [k for k in probs if k != "merged"]
    averaged = np.mean([probs[b] for b in branches], axis=0)
    stagewise = {**{f"alone:{b}": probs[b] for b in branches}}
    stagewise["average of independent branches"] = averaged
    stagewise["stage-wise merge"] = probs["merged"]
    evaluate_branches(model, val_ds, train.classes, out / "stagewise", title=f"{name} stage-wise")

    # 2. Joint training of a fresh model.
    keras.utils.set_random_seed(seed)
    joint = create_model(args.model, train.num_classes, channels=channels)
    start = time.perf_counter()
    fit_joint(joint, train_ds, None, epochs, adam(), verbose=0)
    result["joint_seconds"] = time.perf_counter() - start
    _, joint_probs = predict_branches(joint, val_ds)
    evaluate_branches(joint, val_ds, train.classes, out / "joint", title=f"{name} joint")

    all_probs = {**stagewise, "joint merge": joint_probs["merged"]}
    all_probs.update({f"joint:{b}": joint_probs[b] for b in branches})
    result["accuracy"] = {k: accuracy(labels, p) for k, p in all_probs.items()}
    report = compare_models(labels, all_probs, train.classes)
    result["models"] = {
        k: {m: v[m] for m in ("accuracy", "ece", "brier", "confusion_matrix")}
        for k, v in report["models"].items()
    }
    pair = next(p for p in report["pairs"] if p["models"] == [f"alone:{b}" for b in branches[:2]])
    result["independent_pair"] = pair
    print(
        f"{name} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in result["accuracy"].items())
    )
    return result


def summarize(runs: list[dict]) -> dict:
    keys = list(runs[0]["accuracy"])
    table = {}
    for k in keys:
        values = np.array([r["accuracy"][k] for r in runs])
        table[k] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()),
            "max": float(values.max()),
            "values": values.tolist(),
        }
    for k in ("disagreement", "double_fault", "oracle_accuracy"):
        values = np.array([r["independent_pair"][k] for r in runs])
        table[f"branch pair {k}"] = {"mean": float(values.mean()), "values": values.tolist()}
    return table


def markdown(summary: dict[str, dict], seeds: list[int]) -> str:
    datasets = list(summary)
    rows = list(dict.fromkeys(k for d in datasets for k in summary[d] if "pair" not in k))
    lines = [
        "| model | " + " | ".join(f"{d} (mean ± sd, n={len(seeds)})" for d in datasets) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for row in rows:
        cells = []
        for d in datasets:
            s = summary[d].get(row)
            cells.append(f"{s['mean']:.3f} ± {s['std']:.3f}" if s else "")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    for k in ("disagreement", "double_fault", "oracle_accuracy"):
        key = f"branch pair {k}"
        cells = [f"{summary[d][key]['mean']:.3f}" for d in datasets]
        lines.append(f"| independent branches: {k.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="*", default=["synthetic", "embryo"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--model", default="parallel_small")
    parser.add_argument("--size", type=int, default=64, help="image side (embryo: height)")
    parser.add_argument("--num_train", type=int, default=1200, help="synthetic training images")
    parser.add_argument("--num_val", type=int, default=400, help="synthetic validation images")
    parser.add_argument("--epochs", type=int, default=6, help="per branch and joint, synthetic")
    parser.add_argument("--embryo_epochs", type=int, default=10)
    parser.add_argument("--head_epochs", type=int, default=2, help="merge head, synthetic")
    # ~170 training frames are ~6 steps an epoch: two epochs leave the merge head near chance.
    parser.add_argument("--embryo_head_epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "experiment_parallel")
    parser.add_argument("--images", type=Path, default=REPO / "docs" / "images")
    # On by default: the table compares recipes at one run per seed, which means something
    # only when a rerun gives the same numbers (docs/BENCHMARKS.md says what it costs).
    parser.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="TensorFlow op determinism for the whole script (--no-deterministic: off)",
    )
    args = parser.parse_args()
    if args.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()  # process-global: every run below

    # Data sets not re-run keep their earlier results, so one data set can be redone alone.
    results_file = args.out / "results.json"
    results, summary = {}, {}
    if results_file.exists():
        earlier = json.loads(results_file.read_text())
        results = {k: v for k, v in earlier["runs"].items() if k not in args.datasets}
        summary = {k: v for k, v in earlier["summary"].items() if k not in args.datasets}
    for name in args.datasets:
        results[name] = [run_seed(name, seed, args) for seed in args.seeds]
        summary[name] = summarize(results[name])
        first = results[name][0]
        shown = [k for k in first["models"] if not k.startswith("joint:")]
        shown = [k for k in shown if k != "average of independent branches"]
        fig = plots.plot_confusion_matrices(
            {k.replace("alone:", ""): first["models"][k]["confusion_matrix"] for k in shown},
            first["classes"],
            subtitles={
                k.replace("alone:", ""): f"accuracy {first['accuracy'][k]:.3f}" for k in shown
            },
            title=f"{name}, seed {first['seed']}: branches alone, stage-wise and joint merges",
        )
        plots.save_figure(fig, args.images / f"parallel_confusion_{name}.png")
        args.out.mkdir(parents=True, exist_ok=True)
        results_file.write_text(
            json.dumps(
                {"args": _jsonable(vars(args)), "runs": results, "summary": summary}, indent=2
            )
        )
    fig = plots.plot_accuracy_comparison(
        {d: {k: v["values"] for k, v in s.items() if "pair" not in k} for d, s in summary.items()},
        title=f"{args.model}: validation accuracy over seeds {args.seeds}",
    )
    plots.save_figure(fig, args.images / "parallel_accuracy.png")
    table = markdown(summary, args.seeds)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


def _jsonable(d: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


if __name__ == "__main__":
    main()
