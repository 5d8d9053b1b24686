"""`cellkeras batch` (Apache Beam: DirectRunner, Dask runner) against `cellkeras classify` / `detect`.

The same 2,000 synthetic 96x96 cell images (`cellkeras.data.generate_cells`, written as PNGs to
a temporary folder) go through:

* `cellkeras classify FOLDER --csv ...` (one process, batches of 32);
* `cellkeras batch --input 'FOLDER/*.png'` on the DirectRunner with `multi_processing` and 2
  worker processes, and with `in_memory` and 1 worker (batches of 32, 4 shards);
* the same on Beam's Dask runner (`-- --runner=DaskRunner --dask_client_address=...
  --dask_npartitions=4`) against a `dask.distributed.LocalCluster` of `--dask_workers` (2) worker
  processes of one thread each on 127.0.0.1, started once before (its start-up is printed
  apart, and so is the first, cold run, which pays the workers' TensorFlow import);

and, with `--detect_images N` (default 24), N 256x256 synthetic fields (`generate_scene`)
through `cellkeras detect` and `cellkeras batch --detect --no_classify` (multi_processing, 2
workers, and the Dask cluster). Each row is one end-to-end command as a user runs it, timed from the call to its
return: model loading, worker start-up, reading, decoding, inference and writing included
(TensorFlow is imported once beforehand); each command runs `--repeats` (2) times and the
fastest run counts, as the machine is shared. Each classification command also runs on the
first `--small` (200) images alone; the difference of the two splits its time into a fixed
start-up cost and the images/s after it. The outputs are checked to agree (the same predicted
class for every image, the same number of boxes) so a fast but wrong path would show.

The model is the default architecture (`parallel_small`, the trainer's default `--model`) with
random weights, exported with `cellkeras.serving.export.export_model` at the default final training
size (96 px): throughput does not depend on the weights.

Command (the table in docs/BENCHMARKS.md, about 8 min):
    python scripts/bench_batch.py

Machine: 2-core x86-64 CPU VM, no GPU, TensorFlow 2.21 / Keras 3.15.1 / apache-beam 2.77 / dask 2026.8,
shared with other jobs at the time (treat the numbers as lower bounds, the ratios as rough).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402

from cellkeras import cli  # noqa: E402
from cellkeras.data.synthetic import generate_cells, generate_scene  # noqa: E402
from cellkeras.models import create_model  # noqa: E402
from cellkeras.serving.export import export_model  # noqa: E402


def write_pngs(images, folder: Path) -> None:
    folder.mkdir(parents=True)
    for k, image in enumerate(images):
        cv2.imwrite(str(folder / f"{k:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def timed(argv: list[str], repeats: int, out_flag: str | None = None, runs=None) -> float:
    """The fastest of `repeats` runs of `cellkeras ARGV`, in seconds (chatter swallowed).

    The fastest, because the machine is shared: other jobs only ever add time. `out_flag`
    names the output option, which gets a fresh folder per run (`batch` refuses to reuse one).
    `runs`, a list, gets every run's seconds.
    """
    best = float("inf")
    for k in range(repeats):
        run = list(argv)
        if out_flag is not None:
            run[run.index(out_flag) + 1] += "" if k == repeats - 1 else f"_{k}"
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(run)
        best = min(best, time.perf_counter() - start)
        if runs is not None:
            runs.append(time.perf_counter() - start)
        if code != 0:
            raise RuntimeError(f"cellkeras {' '.join(run)} exited with {code}")
    return best


def classes_from_csv(files) -> dict[str, str]:
    found = {}
    for name in files:
        with open(name, newline="", encoding="utf-8") as f:
            found.update({r["path"]: r["predicted_class"] for r in csv.DictReader(f)})
    return found


def row(
    path: str,
    images: int,
    seconds: float,
    baseline: float | None,
    small: tuple[int, float] | None = None,
    steady_baseline: float | None = None,
) -> dict:
    """One table row; with `small` (images, seconds of the same command on fewer images) also
    the fixed start-up cost and the images/s after it, from the difference of the two runs."""
    result = {
        "path": path,
        "images": images,
        "seconds": round(seconds, 1),
        "images_per_second": round(images / seconds, 1),
        "vs_plain": round(baseline / seconds, 2) if baseline else 1.0,
    }
    if small is not None:
        n, t = small
        steady = (images - n) / (seconds - t)
        result["startup_seconds"] = round(t - n / steady, 1)
        result["steady_images_per_second"] = round(steady, 1)
        result["steady_vs_plain"] = round(steady / steady_baseline, 2) if steady_baseline else 1.0
    # The 1-minute load average when the row is done: how shared the machine was meanwhile.
    result["load_average"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result), flush=True)
    return result


def bench_classify(tmp: Path, args, model_arg: list[str], runners) -> list[dict]:
    """The classification rows: `classify`, then `batch` on each of `runners` (label, options)."""
    repeats = args.repeats

    def classify(folder: str) -> float:
        csv_file = str(tmp / f"{folder}.csv")
        argv = ["classify", str(tmp / folder), *model_arg, "--csv", csv_file, "--quiet"]
        return timed(argv, repeats)

    small_plain, plain = classify("few"), classify("cells")
    want = classes_from_csv([tmp / "cells.csv"])
    steady_plain = (args.images - args.small) / (plain - small_plain)
    rows = [row("cellkeras classify", args.images, plain, None, (args.small, small_plain))]
    for label, options in runners:
        seconds, runs = {}, []
        for folder in ("few", "cells"):
            out = tmp / f"batch_{len(rows)}_{folder}"
            argv = ["batch", "--input", str(tmp / folder / "*.png"), *model_arg, "--out", str(out)]
            seconds[folder] = timed([*argv, *options], repeats, "--out", runs)
        got = classes_from_csv(sorted(out.glob("predictions-*.csv")))
        if got != want:
            raise RuntimeError(f"batch ({label}) disagrees with classify")
        result = row(
            f"cellkeras batch, {label}",
            len(got),
            seconds["cells"],
            plain,
            (args.small, seconds["few"]),
            steady_plain,
        )
        result["first_run_seconds"] = round(runs[0], 1)  # cold: workers import TensorFlow
        print(json.dumps({"path": result["path"], "first_run_seconds": runs[0]}), flush=True)
        rows.append(result)
    return rows


def bench_detect(tmp: Path, args, model_arg: list[str], runners) -> list[dict]:
    """The detection rows: `detect`, then `batch --detect --no_classify` on each runner."""
    fields = [
        generate_scene((256, 256), num_cells=4, seed=k)["image"] for k in range(args.detect_images)
    ]
    write_pngs(fields, tmp / "fields")
    files = sorted(str(p) for p in (tmp / "fields").glob("*.png"))
    plain = timed(["detect", *files, *model_arg, "--out", str(tmp / "d")], args.repeats)
    rows = [row("cellkeras detect", len(files), plain, None)]
    want_boxes = len(json.loads((tmp / "d" / "detections.json").read_text())["annotations"])
    for label, options in runners:
        out = tmp / f"batch_detect_{len(rows)}"
        argv = ["batch", "--input", str(tmp / "fields" / "*.png"), *model_arg]
        argv += ["--out", str(out), "--detect", "--no_classify", *options]
        seconds = timed(argv, args.repeats, "--out")
        boxes = sum(
            len(json.loads(s.read_text())["annotations"]) for s in out.glob("detections-*.json")
        )
        if boxes != want_boxes:
            raise RuntimeError(f"batch ({label}) found {boxes} boxes, detect {want_boxes}")
        rows.append(row(f"cellkeras batch --detect, {label}", len(files), seconds, plain))
    return rows


def print_table(rows: list[dict]) -> None:
    print()
    print(
        "| path | images | seconds | images/s | vs plain command "
        "| start-up s | images/s after start-up | vs plain, after start-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        extra = (
            f"{r['startup_seconds']} | {r['steady_images_per_second']} | "
            f"{r['steady_vs_plain']:.2f}x"
            if "startup_seconds" in r
            else "– | – | –"
        )
        print(
            f"| {r['path']} | {r['images']} | {r['seconds']} | {r['images_per_second']} | "
            f"{r['vs_plain']:.2f}x | {extra} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--small", type=int, default=200, help="images of the start-up runs")
    parser.add_argument("--repeats", type=int, default=2, help="runs per command; the fastest")
    parser.add_argument("--detect_images", type=int, default=24, help="0: skip detection")
    parser.add_argument("--dask_workers", type=int, default=2, help="0: skip the Dask runner")
    parser.add_argument("--out", default=None, help="also write the rows here as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        cells = generate_cells(args.images, image_size=96, seed=0)
        write_pngs(cells.images, tmp / "cells")
        # The first `--small` images again, in their own folder: the same commands on them
        # separate the fixed start-up cost from the per-image rate.
        write_pngs(cells.images[: args.small], tmp / "few")
        keras.utils.set_random_seed(0)
        model = create_model("parallel_small", len(cells.classes), channels=3)
        export_model(model, tmp / "export", classes=cells.classes, image_size=96, channels=3)
        model_arg = ["--model", str(tmp / "export")]
        direct = "--direct_running_mode", "--direct_num_workers"
        runners = [
            ("multi_processing, 2 worker(s)", [direct[0], "multi_processing", direct[1], "2"]),
            ("in_memory, 1 worker(s)", [direct[0], "in_memory", direct[1], "1"]),
        ]
        if args.dask_workers:
            from distributed import LocalCluster

            start = time.perf_counter()
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=args.dask_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                )
            )
            print(json.dumps({"dask_cluster_start_seconds": round(time.perf_counter() - start, 1)}))
            dask = ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]
            label = f"Dask runner, LocalCluster of {args.dask_workers} processes"
            runners.append((label, ["--", *dask, "--dask_npartitions=4"]))
        rows = bench_classify(tmp, args, model_arg, runners)
        if args.detect_images:
            rows += bench_detect(tmp, args, model_arg, [runners[0], *runners[2:]])
    print_table(rows)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
