"""`cellkeras batch` (Apache Beam, DirectRunner) against `cellkeras classify` / `detect`.

The same 2,000 synthetic 96x96 cell images (`cellkeras.data.generate_cells`, written as PNGs to
a temporary folder) go through:

* `cellkeras classify FOLDER --csv ...` (one process, batches of 32);
* `cellkeras batch --input 'FOLDER/*.png'` on the DirectRunner with `multi_processing` and 2
  worker processes, and with `in_memory` and 1 worker (batches of 32, 4 shards);

and, with `--detect_images N` (default 24), N 256x256 synthetic fields (`generate_scene`)
through `cellkeras detect` and `cellkeras batch --detect --no_classify` (multi_processing, 2
workers). Each row is one end-to-end command as a user runs it, timed from the call to its
return: model loading, worker start-up, reading, decoding, inference and writing included
(TensorFlow is imported once beforehand). The outputs are checked to agree (same predicted
class for every image) so a fast but wrong path would show.

The model is the default architecture (`parallel_small`, the trainer's default `--model`) with
random weights, exported with `cellkeras.export.export_model` at the default final training
size (96 px): throughput does not depend on the weights.

Command (the table in docs/BENCHMARKS.md, about 4 min):
    python scripts/bench_batch.py

Machine: 2-core x86-64 CPU VM, no GPU, TensorFlow 2.21 / Keras 3.15.1 / apache-beam 2.77,
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
from cellkeras.export import export_model  # noqa: E402
from cellkeras.models import create_model  # noqa: E402


def write_pngs(images, folder: Path) -> None:
    folder.mkdir(parents=True)
    for k, image in enumerate(images):
        cv2.imwrite(str(folder / f"{k:05d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def timed(argv: list[str]) -> float:
    """Seconds `cellkeras ARGV` takes (its chatter swallowed; a failure raises)."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"cellkeras {' '.join(argv)} exited with {code}")
    return seconds


def classes_from_csv(files) -> dict[str, str]:
    found = {}
    for name in files:
        with open(name, newline="", encoding="utf-8") as f:
            found.update({r["path"]: r["predicted_class"] for r in csv.DictReader(f)})
    return found


def row(path: str, images: int, seconds: float, baseline: float | None) -> dict:
    result = {
        "path": path,
        "images": images,
        "seconds": round(seconds, 1),
        "images_per_second": round(images / seconds, 1),
        "vs_plain": round(baseline / seconds, 2) if baseline else 1.0,
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--detect_images", type=int, default=24, help="0: skip detection")
    parser.add_argument("--out", default=None, help="also write the rows here as JSON")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        tmp = Path(tmp)
        cells = generate_cells(args.images, image_size=96, seed=0)
        write_pngs(cells.images, tmp / "cells")
        keras.utils.set_random_seed(0)
        model = create_model("parallel_small", len(cells.classes), channels=3)
        export_model(model, tmp / "export", classes=cells.classes, image_size=96, channels=3)
        model_arg = ["--model", str(tmp / "export")]
        pattern = str(tmp / "cells" / "*.png")

        plain = timed(
            ["classify", str(tmp / "cells"), *model_arg, "--csv", str(tmp / "c.csv"), "--quiet"]
        )
        want = classes_from_csv([tmp / "c.csv"])
        rows.append(row("cellkeras classify", args.images, plain, None))
        for mode, workers in (("multi_processing", 2), ("in_memory", 1)):
            out = tmp / f"batch_{mode}"
            seconds = timed(
                ["batch", "--input", pattern, *model_arg, "--out", str(out)]
                + ["--direct_running_mode", mode, "--direct_num_workers", str(workers)]
            )
            got = classes_from_csv(sorted(out.glob("predictions-*.csv")))
            if got != want:
                raise RuntimeError(f"batch ({mode}) disagrees with classify")
            rows.append(
                row(f"cellkeras batch, {mode}, {workers} worker(s)", len(got), seconds, plain)
            )

        if args.detect_images:
            fields = [
                generate_scene((256, 256), num_cells=4, seed=k)["image"]
                for k in range(args.detect_images)
            ]
            write_pngs(fields, tmp / "fields")
            files = sorted(str(p) for p in (tmp / "fields").glob("*.png"))
            plain = timed(["detect", *files, *model_arg, "--out", str(tmp / "d")])
            rows.append(row("cellkeras detect", len(files), plain, None))
            out = tmp / "batch_detect"
            seconds = timed(
                ["batch", "--input", str(tmp / "fields" / "*.png"), *model_arg]
                + ["--out", str(out), "--detect", "--no_classify"]
                + ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
            )
            boxes = sum(
                len(json.loads(s.read_text())["annotations"]) for s in out.glob("detections-*.json")
            )
            want_boxes = len(json.loads((tmp / "d" / "detections.json").read_text())["annotations"])
            if boxes != want_boxes:
                raise RuntimeError(f"batch found {boxes} boxes, detect {want_boxes}")
            rows.append(
                row("cellkeras batch --detect, multi_processing, 2", len(files), seconds, plain)
            )

    print()
    print("| path | images | seconds | images/s | vs plain command |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['path']} | {r['images']} | {r['seconds']} | {r['images_per_second']} | "
            f"{r['vs_plain']:.2f}x |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
