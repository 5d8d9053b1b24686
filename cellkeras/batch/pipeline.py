"""Classification and detection of many image files as an Apache Beam pipeline.

```
from cellkeras.batch import BatchConfig, read_results, run_batch
from cellkeras.detect import DetectConfig

config = BatchConfig(inputs=["/data/plates/**.png"], model="exports/cells/3/model.keras",
                     info=info, out="/data/out", detect=DetectConfig.for_workflow("nuclei"))
summary = run_batch(config, ["--direct_running_mode=multi_processing", "--direct_num_workers=0"])
results = read_results("/data/out")      # shards merged: rows, COCO document, errors
```

The graph (one read and decode per file, then one branch per task, then one last step):

```
MatchAll(patterns) ──┐
_checkpoint/*.jsonl ─┼► CoGroupByKey(batch key) ─► batches to run ─► read, decode ─┬─► classify
batch keys (seeds) ──┘                          └─► done before (resume) ───────┐  ├─► detect
                                                                                 │  └─► errors
classify: model input → RunInference → checkpoint ─┬─► predictions-SSSSS-of-NNNNN.csv ─┐
detect:   RunInference → checkpoint (+ heatmaps/) ─┼─► detections-SSSSS-of-NNNNN.json ─┼─► summary
errors:   (path, stage, reason) of every step ─────┴─► errors.csv ─────────────────────┘
```

* Inputs are Beam file patterns (`/local/**.png`, `gs://bucket/x/*.tif`, ...), so any file system
  Beam has a plugin for works. Each matched file gets a batch key from its path; grouping by it
  drops a file that two patterns match, joins the checkpoint of a crashed run, and spreads the
  batches over the runner's workers (without it every file would stay in the one bundle that
  matched them).
* A file that cannot be read or decoded, that the model cannot take or that makes it fail, becomes
  a row of `errors.csv` and the run goes on.
* Classification gives the same rows as `cellkeras classify` (the same decode, channel conversion,
  normalization and resize through `cellkeras.inference.loading.prepare_image_for_model`, and the
  same columns); an image's shard is `crc32(path) % num_shards`, each shard has the header and
  its rows sorted by path, so the outputs do not depend on the runner.
* Detection runs `cellkeras.detect.detect` on each image as stored, as `cellkeras detect` does.
  Each shard is a complete COCO document (ids start at 1 in each); `cellkeras.detect.merge_coco`
  (and `read_results`) joins them.
* The last step writes `OUT/_checkpoint/summary.json` (the files written and the counters, counted
  from the data); `run_batch` checks it before writing `OUT/batch.json`, so a runner that skips
  part of the graph fails the run instead of leaving incomplete outputs.
* Crashes: see `checkpoint.py`.

The graph keeps to what every runner, the Dask runner of apache-beam 2.77 included, runs as
Beam means it: single-output ParDos (`steps.py`), no side inputs and no `WriteToText`
(`outputs.py`), batches formed in `process` rather than `finish_bundle`, and one last step that
depends on every output (that runner computes only the graph's last transform).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from cellkeras.batch.checkpoint import (
    CheckpointFn,
    checkpoint_files,
    prepare_output,
    read_checkpoint,
)
from cellkeras.batch.config import (
    CHECKPOINT,
    COUNTERS,
    DETECTIONS,
    ERROR_COLUMNS,
    ERRORS,
    MANIFEST,
    MODEL_COPY,
    PREDICTIONS,
    BatchConfig,
    columns,
)
from cellkeras.batch.handlers import ClassifyModelHandler, DetectModelHandler
from cellkeras.batch.outputs import (
    WriteCocoShardFn,
    WriteCsvShardFn,
    WriteSummaryFn,
    csv_line,
    errors_name,
    read_summary,
    shard_name,
    shard_of,
    write_atomically,
)
from cellkeras.batch.steps import (
    IMAGES,
    INPUTS,
    RECORDS,
    ROWS,
    RUN,
    DetectionRecordFn,
    ModelInputFn,
    PlanBatchesFn,
    PredictionCsvFn,
    ReadDecodeFn,
    pick,
)

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
# Beam knows its own runners by their short names but the Dask runner only by its full one.
_SHORT_RUNNER_NAMES = {"dask": DASK_RUNNER, "daskrunner": DASK_RUNNER}


def runner_options(pipeline_args: Sequence[str]) -> list[str]:
    """`pipeline_args` with `--runner=DaskRunner` (or `dask`, any case) spelled out in full."""
    args = list(pipeline_args)
    for k, arg in enumerate(args):
        if arg.startswith("--runner="):
            name = arg.split("=", 1)[1]
            args[k] = f"--runner={_SHORT_RUNNER_NAMES.get(name.lower(), name)}"
        elif arg == "--runner" and k + 1 < len(args):
            args[k + 1] = _SHORT_RUNNER_NAMES.get(args[k + 1].lower(), args[k + 1])
    return args


def check_runner(pipeline_args: Sequence[str]) -> None:
    """Fails before anything is written when the Dask runner is named but cannot start.

    Raises:
        ValueError: naming what to do: dask and distributed are not installed, or no scheduler
            answers at `--dask_client_address` within `--dask_connection_timeout` (default 10 s).
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(runner_options(pipeline_args))
    if options.view_as(StandardOptions).runner != DASK_RUNNER:
        return
    try:
        import distributed
        from apache_beam.runners.dask.dask_runner import DaskOptions
    except ImportError as err:
        raise ValueError(
            f"--runner=DaskRunner needs dask and distributed ({err}); they come with the beam "
            "extra: pip install 'cellkeras[beam]'"
        ) from None
    dask = options.view_as(DaskOptions)
    if dask.address is None:
        return  # Beam starts a LocalCluster for the run
    timeout = dask.timeout if isinstance(dask.timeout, int) else 10
    try:
        with distributed.Client(dask.address, timeout=timeout):
            pass
    except (OSError, TimeoutError) as err:
        raise ValueError(
            f"--dask_client_address={dask.address}: no Dask scheduler answered within "
            f"{timeout} s ({err}); start one (dask scheduler) or fix the address"
        ) from None


def _has_scheme(path: str) -> bool:
    return "://" in path


def _folder_prefix(folder: str) -> str:
    """`folder` with one trailing separator (absolute when local), for prefix tests."""
    if _has_scheme(folder):
        return folder.rstrip("/") + "/"
    return os.path.join(os.path.abspath(folder), "")


def _inside(path: str, prefix: str) -> bool:
    return (path if _has_scheme(path) else os.path.abspath(path)).startswith(prefix)


def check_inputs(patterns: Sequence[str]) -> int:
    """The number of distinct files the patterns match, in the launcher, before any worker starts.

    Raises:
        FileNotFoundError: naming the first pattern that matches nothing (a typo would otherwise
            give an empty, successful run).
        ValueError: naming a pattern that is a local folder (it would be skipped, not searched).
    """
    from apache_beam.io.filesystem import BeamIOError

    found_paths: set[str] = set()
    for pattern in patterns:
        if not _has_scheme(pattern) and os.path.isdir(pattern):
            folder = pattern.rstrip("/\\")
            raise ValueError(
                f"--input {pattern!r} is a folder; give a file pattern, e.g. '{folder}/**' for "
                f"every file under it or '{folder}/*.png'"
            )
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except BeamIOError as err:
            raise FileNotFoundError(
                f"--input pattern {pattern!r} cannot be matched: {err}"
            ) from None
        files = [m.path for m in found if not m.path.endswith(("/", "\\"))]
        if not files:
            raise FileNotFoundError(f"--input pattern {pattern!r} matches no files")
        found_paths.update(files)
    return len(found_paths)


# --- pieces of the graph --------------------------------------------------------------------


def _tagged(pcoll: Any, label: str, tags: Sequence[str]) -> dict[str, Any]:
    """One PCollection per tag of a step that yields `(tag, value)` pairs (see `steps.py`)."""
    return {tag: pcoll | f"{label}_{tag}" >> beam.FlatMap(pick, tag) for tag in tags}


def _counted(element: Any, name: str, batched: bool) -> tuple[str, int]:
    return name, len(element) if batched else 1


def _count(pcoll: Any, name: str, *, batched: bool = False) -> Any:
    """`(counter name, n)` per element (n: the batch's length when `batched`)."""
    return pcoll | f"Count_{name}" >> beam.Map(_counted, name, batched)


def _keyed(element: Any, path: str, num_batches: int) -> tuple[int, Any]:
    return shard_of(path, num_batches), element


def _plan(p: beam.Pipeline, config: BatchConfig, num_batches: int) -> dict[str, Any]:
    """The files to run, in batches (`RUN`), and per task the results a crashed run saved."""
    tasks = config.tasks()
    out_prefix = _folder_prefix(config.out)
    saved = checkpoint_files(config.out, tasks) if config.resume else {}
    keyed: dict[str, Any] = {
        "file": (
            p
            | "Patterns" >> beam.Create(list(config.inputs))
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW_IF_WILDCARD)
            # `--input 'data/**' --out data/results` must not read its own outputs as images.
            | "NotOutputs" >> beam.Filter(lambda m, out: not _inside(m.path, out), out_prefix)
            | "FileKey" >> beam.Map(lambda m, n: _keyed(m, m.path, n), num_batches)
        ),
        # One entry per batch key. The Dask runner splits a Create into `--dask_npartitions`
        # partitions and its shuffle keeps as many partitions as its inputs have, so these
        # carry that setting to the batches (the other inputs are one partition each).
        "seed": p | "Seeds" >> beam.Create([(k, None) for k in range(num_batches)]),
    }
    for task in tasks:
        keyed[task] = (
            p
            | f"Checkpoint_{task}" >> beam.Create(saved.get(task, []))
            | f"MatchCheckpoint_{task}" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
            | f"ReadCheckpoint_{task}" >> fileio.ReadMatches()
            | f"ParseCheckpoint_{task}" >> beam.FlatMap(read_checkpoint)
            | f"CheckpointKey_{task}" >> beam.Map(lambda r, n: _keyed(r, r[0], n), num_batches)
        )
    planned = (
        keyed
        | "Join" >> beam.CoGroupByKey()
        | "Plan" >> beam.ParDo(PlanBatchesFn(tasks, config.batch_size))
    )
    return _tagged(planned, "Planned", [RUN, *tasks])


def _write_csv(p: beam.Pipeline, rows: Any, label: str, names: list[str], header: str) -> Any:
    """(path, line) → one CSV file per name (shard `crc32(path) % len(names)`); their names."""
    num_shards = len(names)
    # One empty entry per shard, so every shard file is written even when it gets no row.
    every_shard = p | f"{label}Shards" >> beam.Create([(k, None) for k in range(num_shards)])
    return (
        (
            rows | f"{label}ToShard" >> beam.Map(lambda r, n: (shard_of(r[0], n), r), num_shards),
            every_shard,
        )
        | f"{label}AllShards" >> beam.Flatten()
        | f"{label}GroupShards" >> beam.GroupByKey()
        | f"Write{label}" >> beam.ParDo(WriteCsvShardFn(names, header))
    )


def _classify(p: beam.Pipeline, config: BatchConfig, images: Any, done: Any) -> tuple:
    """The classification branch: (its shard names, its error rows, its counts)."""
    info = config.info
    model_file = FileSystems.join(config.out, MODEL_COPY)
    prepared = _tagged(
        images | "ModelInput" >> beam.ParDo(ModelInputFn(info)), "Prepared", [INPUTS, ERRORS]
    )
    handler = ClassifyModelHandler(model_file, max_batch_size=config.batch_size)
    rows = _tagged(
        prepared[INPUTS]
        | "Classify" >> RunInference(KeyedModelHandler(handler).with_no_batching())
        | "CsvRows" >> beam.ParDo(PredictionCsvFn(info)),
        "Rows",
        [ROWS, ERRORS],
    )
    saved = rows[ROWS] | "SavePredictions" >> beam.ParDo(
        CheckpointFn(config.out, PREDICTIONS, config.checkpoint_every)
    )
    n = config.num_shards
    names = [shard_name(config.out, PREDICTIONS, k, n, ".csv") for k in range(n)]
    files = _write_csv(
        p,
        (saved, done) | "AllPredictions" >> beam.Flatten(),
        "Predictions",
        names,
        csv_line(columns(info)),
    )
    return files, [prepared[ERRORS], rows[ERRORS]], [_count(rows[ROWS], "images_classified")]


def _detect(p: beam.Pipeline, config: BatchConfig, images: Any, done: Any) -> tuple:
    """The detection branch: (its shard names, its error rows, its counts)."""
    from cellkeras.detect.coco import category_name

    info = config.info
    model_file = FileSystems.join(config.out, MODEL_COPY)
    # Detection batches its windows itself; the handler runs the batch's images one by one.
    handler = DetectModelHandler(model_file, config.detect, info.channels, info.classes)
    detected = _tagged(
        images
        | "Detect" >> RunInference(KeyedModelHandler(handler).with_no_batching())
        | "Records" >> beam.ParDo(DetectionRecordFn(config.out, config.save_heatmaps)),
        "Detected",
        [RECORDS, ERRORS],
    )
    num_shards = config.num_shards
    every_shard = p | "DetectionShards" >> beam.Create([(k, None) for k in range(num_shards)])
    records = (
        (
            detected[RECORDS]
            | "SaveDetections"
            >> beam.ParDo(CheckpointFn(config.out, DETECTIONS, config.checkpoint_every)),
            done,
        )
        | "AllDetections" >> beam.Flatten()
        | "ToShard" >> beam.MapTuple(lambda path, record: (shard_of(path, num_shards), record))
    )
    files = (
        (records, every_shard)
        | "AllShards" >> beam.Flatten()
        | "GroupShards" >> beam.GroupByKey()
        | "WriteDetections"
        >> beam.ParDo(
            WriteCocoShardFn(
                config.out,
                num_shards,
                category_name(info.classes),
                {"model": info.source, **config.detection_info},
            )
        )
    )
    return files, [detected[ERRORS]], [_count(detected[RECORDS], "images_detected")]


def build_pipeline(
    p: beam.Pipeline, config: BatchConfig, num_files: int | None = None
) -> dict[str, Any]:
    """Adds the batch graph to `p`; returns the PCollections of the names of the files written
    (`predictions`, `detections`, `errors`) and of the summary.

    With `config.resume`, the files `OUT/_checkpoint/` holds for every task are not run again;
    their saved results go to the outputs with the new ones. The workers load the model from
    `OUT/model.keras`, which `prepare_output` copies there. `num_files` (what `check_inputs`
    counted; counted here when None) sets the number of batch keys.
    """
    tasks = config.tasks()
    if num_files is None:
        num_files = check_inputs(config.inputs)
    planned = _plan(p, config, max(1, math.ceil(num_files / config.batch_size)))
    decoded = _tagged(
        planned[RUN] | "ReadDecode" >> beam.ParDo(ReadDecodeFn()), "Decoded", [IMAGES, ERRORS]
    )
    errors = [decoded[ERRORS]]
    counts = [
        _count(decoded[IMAGES], "images_decoded", batched=True),
        # A file is resumed when every task saved it, so the first task's results count them.
        _count(planned[tasks[0]], "images_resumed"),
    ]
    written: dict[str, Any] = {}
    for task, branch in ((PREDICTIONS, _classify), (DETECTIONS, _detect)):
        if task in tasks:
            written[task], task_errors, task_counts = branch(
                p, config, decoded[IMAGES], planned[task]
            )
            errors += task_errors
            counts += task_counts
    all_errors = errors | "AllErrors" >> beam.Flatten()
    counts.append(_count(all_errors, "errors"))
    written[ERRORS] = _write_csv(
        p,
        all_errors | "ErrorLines" >> beam.Map(lambda row: (row[0], csv_line(row))),
        "Errors",
        [errors_name(config.out)],
        csv_line(ERROR_COLUMNS),
    )
    return {**written, "summary": _summary(p, config.out, written, counts)}


def _summary(p: beam.Pipeline, out: str, written: dict[str, Any], counts: list[Any]) -> Any:
    """The last step: the files written and the counters, into `OUT/_checkpoint/summary.json`.

    It must be the last transform added: the Dask runner computes only that one (and what it
    depends on), so every output has to lead into it.
    """
    zeros = p | "Zeros" >> beam.Create([(name, 0) for name in COUNTERS])
    counters = (
        [*counts, zeros]
        | "AllCounts" >> beam.Flatten()
        | "Sum" >> beam.CombinePerKey(sum)
        | "Counters" >> beam.MapTuple(lambda name, total: (0, ("counter", name, total)))
    )
    files = (
        list(written.values())
        | "AllFiles" >> beam.Flatten()
        | "Files" >> beam.Map(lambda name: (0, ("file", name)))
    )
    return (
        (files, counters)
        | "Everything" >> beam.Flatten()
        | "Gather" >> beam.GroupByKey()
        | "WriteSummary" >> beam.ParDo(WriteSummaryFn(out))
    )


def _close_client(result: Any) -> None:
    # The Dask runner's result holds the `dask.distributed.Client` it opened and never closes:
    # left open, it keeps the run's futures on the cluster and, once the cluster goes, tries to
    # reconnect for 30 s. Other runners' results have no client.
    client = getattr(result, "client", None)
    if client is not None and hasattr(client, "close"):
        client.close()


def run_batch(
    config: BatchConfig, pipeline_args: Sequence[str] = (), *, output_checked: bool = False
) -> dict[str, int]:
    """Runs the pipeline to the end, writes `OUT/batch.json` and returns its counters.

    Args:
        config: the `BatchConfig`.
        pipeline_args: Beam pipeline options (`--runner=...`, `--direct_num_workers=...`, ...);
            the DirectRunner when no runner is named. `--runner=DaskRunner` is accepted for
            Beam's Dask runner.
        output_checked: the caller has already run `prepare_output(config)`.

    Returns:
        `images_decoded`, `images_classified`, `images_detected`, `images_resumed` (taken from
        the checkpoint of a crashed run) and `errors` (error rows; a file the model cannot take
        fails once per task), counted from the pipeline's data, so the same on every runner
        (whether or not it reports Beam metrics).

    Raises:
        FileExistsError, FileNotFoundError, ValueError: from `check_inputs`, `check_runner`
            and `prepare_output`, before the pipeline starts.
        RuntimeError: the runner reported success without writing every output.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    num_files = check_inputs(config.inputs)
    if not output_checked:  # the command checks the runner itself, before preparing OUT
        check_runner(pipeline_args)
        prepare_output(config)
    started = time.time()
    p = beam.Pipeline(options=PipelineOptions(runner_options(pipeline_args)))
    build_pipeline(p, config, num_files)
    result = p.run()
    try:
        result.wait_until_finish()
    finally:
        _close_client(result)
    counters = read_summary(config.out, config.tasks(), config.num_shards)
    manifest = {
        "inputs": list(config.inputs),
        "model": config.model,
        "tasks": config.tasks(),
        "num_shards": config.num_shards,
        "counters": counters,
        "seconds": round(time.time() - started, 1),
        "resumed": config.resume,
    }
    write_atomically(
        FileSystems.join(config.out, MANIFEST), json.dumps(manifest, indent=1).encode("utf-8")
    )
    # The outputs now hold everything the checkpoint did.
    FileSystems.delete([FileSystems.join(config.out, CHECKPOINT)])
    return counters
