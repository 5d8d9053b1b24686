"""Multi-worker training throughput: one worker against two localhost workers, same data.

Three runs of `trainer.task.run` on the same synthetic images, model, image size and
per-replica batch, each in fresh processes:

- fit: one process, Keras `fit` (the single-machine path), batch B;
- 1 worker: `--distribution=multi_worker` with a one-task TF_CONFIG (the custom loop,
  MultiWorkerMirroredStrategy), batch B;
- 2 workers: two processes on localhost ports, one replica each, global batch 2B.

Throughput is training images per second of the *training part* of each epoch (from the
epoch's start to the start of its validation; first epoch excluded, it holds the tracing),
for the whole cluster: images in the epoch's full global batches / seconds, median over the
timed epochs. Two workers on one machine share its cores, so on a small CPU machine expect at
most the one-worker rate; the ratio shows the cost of the collectives, not the speed-up
machines with their own cores would give.

    python scripts/bench_multi_worker.py                     # ~3 minutes on a 2-core CPU
    python scripts/bench_multi_worker.py --images 256 --epochs 2   # quicker

Machine for the numbers in docs/BENCHMARKS.md: the project's 2-core x86-64 CPU VM, no GPU.
Writes runs/bench_multi_worker/results.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _worker(args: argparse.Namespace) -> None:
    """One process of a run: `trainer.task.run` with a callback timing each epoch."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from trainer.config import build_config
    from trainer.task import run

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    config = build_config(
        "default",
        {
            "data.synthetic_images": args.images,
            "data.synthetic_size": args.size,
            "train.model": args.model,
            "train.augment": "none",
            "train.schedule": f"{args.size}:{args.epochs}",
            "train.batch_size": args.batch_size,
            "train.distribution": args.distribution,
            "train.mixed_precision": "off",
        },
    )
    config.output_dir = args.output_dir
    timer = EpochTimer()
    metrics = run(config, verbose=0, callbacks=[timer])
    global_batch = args.batch_size * metrics["replicas"]
    # The custom loop trains on full global batches only; fit also trains the partial one.
    images = metrics["train_images"]
    if args.distribution == "multi_worker":
        images = images // global_batch * global_batch
    Path(args.result).write_text(
        json.dumps({"epoch_seconds": timer.seconds, "images_per_epoch": images, **metrics})
    )


def _launch(args: argparse.Namespace, name: str, workers: int, out: Path) -> dict:
    """Runs one configuration (`workers` = 0 for fit) and returns the chief's result."""
    import portpicker

    distribution = "multi_worker" if workers else "one"
    ports = [portpicker.pick_unused_port() for _ in range(max(workers, 1))]
    processes = []
    for index in range(max(workers, 1)):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        if workers:
            cluster = {"worker": [f"localhost:{p}" for p in ports]}
            env["TF_CONFIG"] = json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            )
        command = [
            sys.executable, __file__, "--worker",
            f"--distribution={distribution}", f"--output_dir={out / name}",
            f"--result={out / f'{name}-{index}.json'}", f"--images={args.images}",
            f"--size={args.size}", f"--epochs={args.epochs}", f"--batch_size={args.batch_size}",
            f"--model={args.model}",
        ]  # fmt: skip
        log = (out / f"{name}-{index}.log").open("w")
        processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        for process in processes:
            if process.wait(timeout=args.timeout) != 0:
                raise RuntimeError(f"{name} failed; see {out}/{name}-*.log")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return json.loads((out / f"{name}-0.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--distribution", default="one", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=480, help="synthetic images (80%% train)")
    parser.add_argument("--size", type=int, default=48, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=3, help="epochs; the first is not timed")
    parser.add_argument("--batch_size", type=int, default=32, help="per-replica batch")
    parser.add_argument("--model", default="parallel_small")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per configuration")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_multi_worker")
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not timed)")

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, workers in (("fit", 0), ("1-worker", 1), ("2-workers", 2)):
        result = _launch(args, name, workers, args.out)
        timed = result["epoch_seconds"][1:]
        seconds = statistics.median(timed)
        rows.append(
            {
                "run": name,
                "processes": max(workers, 1),
                "global_batch": args.batch_size * result["replicas"],
                "images_per_epoch": result["images_per_epoch"],
                "epoch_train_seconds": [round(s, 3) for s in timed],
                "images_per_second": result["images_per_epoch"] / seconds,
                "val_accuracy": result["val_accuracy"],
            }
        )
        print(f"{name}: {rows[-1]['images_per_second']:.1f} images/s", flush=True)
    base = rows[1]["images_per_second"]
    for row in rows:
        row["vs_1_worker"] = row["images_per_second"] / base
    settings = {k: getattr(args, k) for k in ("images", "size", "epochs", "batch_size", "model")}
    (args.out / "results.json").write_text(
        json.dumps({"settings": settings, "load_average": os.getloadavg(), "rows": rows}, indent=2)
        + "\n"
    )
    print(f"\nsettings: {settings} · load average now {os.getloadavg()[0]:.1f}\n")
    print(
        "| run | processes | global batch | images/epoch | train s/epoch (timed epochs) | images/s | vs 1 worker |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['run']} | {row['processes']} | {row['global_batch']} | "
            f"{row['images_per_epoch']} | {', '.join(f'{s:.2f}' for s in row['epoch_train_seconds'])} | "
            f"{row['images_per_second']:.1f} | {row['vs_1_worker']:.2f}x |"
        )


if __name__ == "__main__":
    main()
