"""Merge rules compared offline on finished trainer runs: which one a run should have chosen.

Per run folder (`config.json` + `model.keras` + `metrics.json`, e.g. from
`scripts/bench_real.py`), the branches' log-probabilities on the run's own validation and test
images are computed once (cached as `branch_log_probs.npz` in the folder), and then every rule
picks merge weights from validation alone and is scored on test:

- `in-sample` (the trainer's rule up to this round): fitted weights, the average and each
  branch alone compete on validation accuracy, ties by log-loss, all scored on the images the
  weights were fitted on;
- `cross-fitted` (`cellkeras.training.stacking`'s rule now): the same, the fitted weights
  scored out of fold;
- `average`, `fitted`, each branch `alone`, and `oracle` (the best of those on test, a bound).

`--seed_ensembles` instead groups the runs that differ only in their seed (`NAME__seedK`),
merges each run as the trainer did (the cross-fitted rule), and scores the average of the
group's test probabilities: what an ensemble of those seeds would have scored, with no new
training.

    python scripts/experiment_stacking.py runs/var/*/runs/*__seed*   # prints the table
    python scripts/experiment_stacking.py --seed_ensembles runs/var/edges/runs/*__seed*
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_log_probs(folder: Path) -> dict[str, np.ndarray]:
    """`{val_labels, val_log_probs, test_labels, test_log_probs, names}` of one run (cached)."""
    cache = folder / "branch_log_probs.npz"
    if cache.is_file():
        return dict(np.load(cache))
    import keras

    from cellkeras.models import branch_names
    from cellkeras.training.schedule import parse_schedule
    from cellkeras.training.stacking import branch_log_probs
    from trainer.config import DataConfig, TrainConfig, build_config
    from trainer.inputs import Inputs
    from trainer.runtime import resolve_runtime

    saved = json.loads((folder / "config.json").read_text())
    # Fields a later version dropped are left out (the bench's variants added some).
    known = {
        s: {f.name for f in dataclasses.fields(c)}
        for s, c in (("data", DataConfig), ("train", TrainConfig))
    }
    overrides = {
        f"{s}.{k}": v for s in ("data", "train") for k, v in saved[s].items() if k in known[s]
    }
    config = build_config("default", overrides)
    config.output_dir = str(folder)
    runtime = resolve_runtime(config.train, config.output_dir)
    inputs = Inputs.load(config, runtime)
    metrics = json.loads((folder / "metrics.json").read_text())
    final_size = parse_schedule(metrics["schedule"])[-1].size
    model = keras.models.load_model(folder / "model.keras", compile=False)
    result = {"names": np.asarray(branch_names(model))}
    for split, subset in (("val", inputs.val_set), ("test", inputs.test_set)):
        labels, log_probs = branch_log_probs(
            model, inputs.dataset(subset, final_size, training=False)
        )
        result[f"{split}_labels"], result[f"{split}_log_probs"] = labels, log_probs
    np.savez(cache, **result)
    return result


def rule_weights(labels: np.ndarray, log_probs: np.ndarray) -> dict[str, np.ndarray]:
    """Each rule's weights, chosen from these (validation) predictions alone."""
    from cellkeras.training.stacking import choose_merge, fit_weights

    count = log_probs.shape[1]
    rules = {
        "in-sample": choose_merge(labels, log_probs, cross_fit=False)[1],
        "cross-fitted": choose_merge(labels, log_probs, cross_fit=True)[1],
        "average": np.full(count, 1 / count),
        "fitted": fit_weights(labels, log_probs),
    }
    for index in range(count):
        rules[f"branch {index} alone"] = np.eye(count)[index]
    return rules


def trainer_merged_probs(data: dict[str, np.ndarray]) -> np.ndarray:
    """(B, K) test probabilities of a run merged as the trainer merges it (cross-fitted)."""
    from scipy.special import softmax

    from cellkeras.training.stacking import choose_merge

    log_probs = data["test_log_probs"]
    weights = np.ones(1)
    if log_probs.shape[1] > 1:
        weights = choose_merge(data["val_labels"], data["val_log_probs"], cross_fit=True)[1]
    return softmax(np.einsum("bnk,n->bk", log_probs, weights), axis=-1)


def seed_ensembles(folders: list[Path]) -> None:
    groups: dict[str, list[Path]] = {}
    for folder in folders:
        groups.setdefault(re.sub(r"__seed\d+$", "", folder.name), []).append(folder)
    print("| runs | seeds | test accuracy per seed | mean | ensemble of the seeds |")
    print("|---|---|---|---|---|")
    for name, members in sorted(groups.items()):
        data = [run_log_probs(folder) for folder in members]
        labels = data[0]["test_labels"]
        probs = [trainer_merged_probs(d) for d in data]
        each = [float(np.mean(p.argmax(-1) == labels)) for p in probs]
        together = float(np.mean(np.mean(probs, axis=0).argmax(-1) == labels))
        print(
            f"| {name} | {len(members)} | {' / '.join(f'{a:.3f}' for a in each)} | "
            f"{np.mean(each):.3f} | {together:.3f} |",
            flush=True,
        )


def main() -> None:
    from cellkeras.training.stacking import merged_scores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--seed_ensembles", action="store_true")
    args = parser.parse_args()
    finished = sorted(f for f in args.folders if (f / "model.keras").is_file())
    if args.seed_ensembles:
        seed_ensembles(finished)
        return
    table: dict[str, list[float]] = {}
    for folder in finished:
        data = run_log_probs(folder)
        if data["val_log_probs"].shape[1] < 2:
            continue
        rules = rule_weights(data["val_labels"], data["val_log_probs"])
        test = {
            name: merged_scores(data["test_labels"], data["test_log_probs"], w)[0]
            for name, w in rules.items()
        }
        test["oracle"] = max(test.values())
        for name, value in test.items():
            table.setdefault(name, []).append(value)
        shown = " ".join(f"{k}={v:.3f}" for k, v in test.items())
        print(f"{folder.name} ({', '.join(map(str, data['names']))}): {shown}", flush=True)
    print("\n| rule | runs | mean test accuracy | wins vs in-sample | losses |")
    print("|---|---|---|---|---|")
    base = np.asarray(table.get("in-sample", []))
    for name, values in table.items():
        values = np.asarray(values)
        print(
            f"| {name} | {len(values)} | {values.mean():.3f} | "
            f"{int(np.sum(values > base + 1e-9))} | {int(np.sum(values < base - 1e-9))} |"
        )


if __name__ == "__main__":
    main()
