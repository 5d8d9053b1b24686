"""What `--deterministic` costs: the same trainer command with and without it, in turns.

Each run is a fresh `python -m trainer.task` process (op determinism is process-global, and
each run then pays the same start-up and tracing), on the smoke preset grown a little so that
training, not start-up, takes most of the time: 400 synthetic images, schedule `32:2,48:1`,
`basic` augmentation (the fluid warp with flips, rotation and shifts). Runs alternate (off, on,
off, on, ...) for `--rounds` rounds so that load on a shared machine falls on both alike; the
table gives each setting's fastest run, as training seconds (`metrics.json`'s
`total_seconds`, the epochs alone) and wall seconds (the whole process), and each run's
validation accuracy (identical across the deterministic runs by construction).

    python scripts/bench_deterministic.py              # 2 rounds, about 2-3 minutes
    python scripts/bench_deterministic.py --rounds 3 --args=--preset=default

Machine for docs/BENCHMARKS.md: the project's 2-core x86-64 CPU VM, no GPU.
Writes runs/bench_deterministic/results.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARGS = "--preset=smoke --synthetic_images=400 --schedule=32:2,48:1 --augment=basic"


def one_run(args: list[str], deterministic: bool, out: Path) -> dict:
    command = [sys.executable, "-m", "trainer.task", *args, f"--output_dir={out}"]
    if deterministic:
        command.append("--deterministic")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "deterministic": deterministic,
        "wall_seconds": round(wall, 1),
        "train_seconds": metrics["total_seconds"],
        "val_accuracy": metrics["val_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--args", default=DEFAULT_ARGS, help="trainer flags for every run")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_deterministic")
    args = parser.parse_args()

    runs = []
    for index in range(args.rounds):
        for deterministic in (False, True):
            folder = args.out / f"{'on' if deterministic else 'off'}-{index}"
            runs.append(one_run(shlex.split(args.args), deterministic, folder))
            print(json.dumps(runs[-1]), flush=True)
    best = {
        mode: {
            key: min(r[key] for r in runs if r["deterministic"] == mode)
            for key in ("train_seconds", "wall_seconds")
        }
        for mode in (False, True)
    }
    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "command_args": args.args,
        "runs": runs,
        "best": {str(k): v for k, v in best.items()},
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n`{args.args}`, fastest of {args.rounds}:\n")
    print("| | training s | wall s | val accuracy of each run |")
    print("|---|---|---|---|")
    for mode, name in ((False, "default"), (True, "`--deterministic`")):
        accuracies = ", ".join(
            f"{r['val_accuracy']:.4f}" for r in runs if r["deterministic"] == mode
        )
        print(
            f"| {name} | {best[mode]['train_seconds']:.1f} | {best[mode]['wall_seconds']:.1f} "
            f"| {accuracies} |"
        )
    ratio = best[True]["train_seconds"] / best[False]["train_seconds"]
    print(f"\ncost: {ratio:.2f}x the training time")


if __name__ == "__main__":
    main()
