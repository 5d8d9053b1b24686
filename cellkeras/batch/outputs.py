"""Writing a batch run's outputs (CSV and COCO shards, errors, the summary) and reading them back.

Every output file is written by our own DoFn after a `GroupByKey` on its shard, whole, under a
temporary name and renamed, with its lines sorted: a file's bytes depend only on the images in
it, so every runner (and a retried bundle) writes the same file. Why not `beam.io.WriteToText`:
its `WriteImpl` hands the temporary folder that `InitializeWrite` made to the writers and to the
finalizer as side inputs, and apache-beam 2.77's Dask runner evaluates a side input again at
every use, so the writers wrote into one `beam-temp-*` folder, the finalizer looked in another,
rows were lost and three such folders were left in OUT. Its round-robin sharding also put an
image in a different shard on each run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from cellkeras.batch.config import (
    CHECKPOINT,
    COUNTERS,
    DETECTIONS,
    ERRORS,
    HEATMAPS,
    MANIFEST,
    PREDICTIONS,
    SUMMARY,
)


def csv_line(values: Sequence[Any]) -> str:
    """One CSV line without its end; the csv module quotes paths holding commas or quotes, as
    `cellkeras classify` does."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(values)
    return buffer.getvalue()


def write_atomically(name: str, data: bytes) -> None:
    """Writes `name` whole or not at all (a temporary name, then a rename)."""
    temporary = f"{name}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(temporary) as f:
        f.write(data)
    if FileSystems.exists(name):  # a retried bundle; object stores refuse to rename over it
        FileSystems.delete([name])
    FileSystems.rename([temporary], [name])


def shard_of(path: str, num_shards: int) -> int:
    """A shard index that is the same in every worker process (unlike the salted `hash`)."""
    return zlib.crc32(path.encode("utf-8")) % num_shards


def shard_name(out: str, prefix: str, shard: int, num_shards: int, suffix: str) -> str:
    """`OUT/PREFIX-SSSSS-of-NNNNN.SUFFIX`, Beam's default shard naming."""
    return FileSystems.join(out, f"{prefix}-{shard:05d}-of-{num_shards:05d}{suffix}")


def errors_name(out: str) -> str:
    """`OUT/errors.csv`."""
    return FileSystems.join(out, f"{ERRORS}.csv")


def heatmap_name(path: str) -> str:
    """`<stem>-<crc32 of the full path>.png`: unique when two folders hold the same file name."""
    stem = PurePosixPath(path.replace("\\", "/")).stem
    return f"{stem}-{zlib.crc32(path.encode('utf-8')):08x}.png"


def write_heatmap(out: str, path: str, heatmap: np.ndarray) -> str:
    """Writes `OUT/heatmaps/<heatmap_name>` (coloured PNG); returns its name relative to OUT."""
    import cv2

    from cellkeras.detect.draw import colour_heatmap

    name = heatmap_name(path)
    ok, png = cv2.imencode(".png", cv2.cvtColor(colour_heatmap(heatmap), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"{path}: OpenCV could not encode the heatmap as PNG")
    with FileSystems.create(FileSystems.join(out, HEATMAPS, name)) as f:
        f.write(png.tobytes())
    return f"{HEATMAPS}/{name}"


class WriteCsvShardFn(beam.DoFn):
    """(shard, [(sort key, line) or None]) → the shard's CSV file: the header, then the lines
    sorted by their key (the image path). A None entry only makes sure the shard is written
    when no image falls into it. Yields the file's name."""

    def __init__(self, names: Sequence[str], header: str):
        self._names = list(names)
        self._header = header

    def process(self, element: tuple[int, Iterable[Any]]) -> Iterator[str]:
        shard, entries = element
        lines = [line for _, line in sorted(e for e in entries if e is not None)]
        text = "".join(f"{line}\n" for line in [self._header, *lines])
        write_atomically(self._names[shard], text.encode("utf-8"))
        yield self._names[shard]


class WriteCocoShardFn(beam.DoFn):
    """(shard, records) → `detections-SSSSS-of-NNNNN.json`, one COCO document per shard, its
    records sorted by file name. Yields the file's name."""

    def __init__(self, out: str, num_shards: int, category: str, info: dict[str, Any]):
        self._out = out
        self._num_shards = num_shards
        self._category = category
        self._info = info

    def process(self, element: tuple[int, Iterable[Any]]) -> Iterator[str]:
        from cellkeras.detect.coco import to_coco

        shard, records = element
        records = sorted((r for r in records if r is not None), key=lambda r: r["file_name"])
        metas = [{k: v for k, v in r.items() if k not in ("boxes", "scores")} for r in records]
        document = to_coco(
            metas,
            [np.asarray(r["boxes"], np.float32).reshape(-1, 4) for r in records],
            [np.asarray(r["scores"], np.float32) for r in records],
            category=self._category,
        )
        document["info"] = dict(self._info)
        name = shard_name(self._out, DETECTIONS, shard, self._num_shards, ".json")
        write_atomically(name, (json.dumps(document, indent=1) + "\n").encode("utf-8"))
        yield name


class WriteSummaryFn(beam.DoFn):
    """(0, [("file", name) | ("counter", name, total)]) → `OUT/_checkpoint/summary.json`.

    The pipeline's last step: it depends on every output file, so it runs only once they are
    all written, and it records what the run counted from its data (not from the runner's
    metrics, which the Dask runner does not report). `run_batch` checks it.
    """

    def __init__(self, out: str):
        self._out = out

    def process(self, element: tuple[int, Iterable[tuple]]) -> Iterator[str]:
        _, entries = element
        files, counters = set(), dict.fromkeys(COUNTERS, 0)
        for entry in entries:
            if entry[0] == "file":
                files.add(entry[1])
            else:
                counters[entry[1]] += int(entry[2])
        summary = {"files": sorted(files), "counters": counters}
        name = FileSystems.join(self._out, CHECKPOINT, SUMMARY)
        write_atomically(name, json.dumps(summary, indent=1).encode("utf-8"))
        yield name


def expected_files(out: str, tasks: Sequence[str], num_shards: int) -> list[str]:
    """Every file a finished run has written (besides heatmaps), by name."""
    names = [errors_name(out)]
    for task, suffix in ((PREDICTIONS, ".csv"), (DETECTIONS, ".json")):
        if task in tasks:
            names += [shard_name(out, task, k, num_shards, suffix) for k in range(num_shards)]
    return sorted(names)


def read_summary(out: str, tasks: Sequence[str], num_shards: int) -> dict[str, int]:
    """The counters of the summary the pipeline's last step wrote, once it is sure that every
    output was written.

    Raises:
        RuntimeError: the summary is missing or lists fewer files than the run must write: the
            runner reported success without running the whole pipeline.
    """
    name = FileSystems.join(out, CHECKPOINT, SUMMARY)
    if not FileSystems.exists(name):
        raise RuntimeError(
            f"the runner reported success but the pipeline's last step did not run ({name} is "
            "missing); the outputs in OUT are incomplete"
        )
    summary = json.loads(read_text(name))
    missing = sorted(set(expected_files(out, tasks, num_shards)) - set(summary["files"]))
    if missing:
        raise RuntimeError(
            f"the runner reported success but did not write {', '.join(missing)}; the outputs in "
            "OUT are incomplete"
        )
    return summary["counters"]


@dataclasses.dataclass
class BatchResults:
    """A finished run's outputs, shards merged.

    Attributes:
        rows: the prediction rows (dicts with the `classify` CSV's columns), sorted by path.
        detections: one COCO document of every detection shard (None when detection was off).
        errors: `{path, stage, reason}` rows.
        manifest: `batch.json`: inputs, model, tasks, num_shards, counters, seconds.
    """

    rows: list[dict[str, str]]
    detections: dict[str, Any] | None
    errors: list[dict[str, str]]
    manifest: dict[str, Any]


def read_text(path: str) -> str:
    """A whole file of any Beam file system, as UTF-8 text."""
    with FileSystems.open(path) as f:
        return f.read().decode("utf-8")


def read_results(out: str) -> BatchResults:
    """Reads and merges the shards a finished run wrote to `out` (any Beam file system).

    Only the shards the run's manifest names are read (`-of-NNNNN` with its `num_shards`).

    Raises:
        FileNotFoundError: when `out` holds no `batch.json` (no finished run), or a shard the
            manifest names is missing.
    """
    from cellkeras.detect.coco import merge_coco

    manifest_file = FileSystems.join(out, MANIFEST)
    if not FileSystems.exists(manifest_file):
        raise FileNotFoundError(f"{manifest_file} does not exist: no finished batch run in {out}")
    manifest = json.loads(read_text(manifest_file))
    num_shards = manifest["num_shards"]

    def shards(task: str, suffix: str) -> list[str]:
        if task not in manifest["tasks"]:
            return []
        names = [shard_name(out, task, k, num_shards, suffix) for k in range(num_shards)]
        missing = [n for n in names if not FileSystems.exists(n)]
        if missing:
            raise FileNotFoundError(f"{out}: shard {missing[0]} of the finished run is missing")
        return names

    rows: list[dict[str, str]] = []
    for shard in shards(PREDICTIONS, ".csv"):
        rows.extend(csv.DictReader(io.StringIO(read_text(shard))))
    rows.sort(key=lambda r: r["path"])
    documents = [json.loads(read_text(s)) for s in shards(DETECTIONS, ".json")]
    detections = merge_coco(documents) if documents else None
    errors = list(csv.DictReader(io.StringIO(read_text(errors_name(out)))))
    return BatchResults(rows, detections, errors, manifest)
