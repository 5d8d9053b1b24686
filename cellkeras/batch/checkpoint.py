"""Surviving crashes: the checkpoint in `OUT/_checkpoint/`, and checking OUT before a run.

Beam writes the sharded outputs only when every image is done, so a run that dies at 90 % (a
killed launcher or worker, a preempted VM, Ctrl-C) would lose everything. Each worker therefore
also appends its finished results to `OUT/_checkpoint/` every `checkpoint_every` images (whole
files, written under a temporary name and renamed). `resume=True` (`cellkeras batch --resume`)
runs only the files the checkpoint does not hold for every task and merges the rest into the
outputs; the checkpoint is deleted once the outputs and `OUT/batch.json` (the manifest that
marks a finished run) are written.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from cellkeras.batch.config import (
    CHECKPOINT,
    DETECTIONS,
    ERRORS,
    HEATMAPS,
    MANIFEST,
    MODEL_COPY,
    PREDICTIONS,
    RUN_FILE,
    SUMMARY,
    BatchConfig,
)
from cellkeras.batch.outputs import read_text, write_atomically


class CheckpointFn(beam.DoFn):
    """Passes (path, result) on and saves it to `OUT/_checkpoint/<task>-<uuid>.jsonl`.

    Saves every `every` results and at the end of the bundle, each time as a whole new file
    written under a temporary name and renamed, so a crash never leaves half a line behind.
    A retried bundle saves its results again under other names; `PlanBatchesFn` keeps one.
    """

    def __init__(self, out: str, task: str, every: int):
        self._out = out
        self._task = task
        self._every = every
        self._pending: list[str] = []

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, element: tuple[str, Any]) -> Iterator[tuple[str, Any]]:
        self._pending.append(json.dumps(element))
        if len(self._pending) >= self._every:
            self._flush()
        yield element

    def finish_bundle(self) -> None:
        # Saves only; nothing is emitted here (the Dask runner drops finish_bundle outputs).
        self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = FileSystems.join(self._out, CHECKPOINT, f"{self._task}-{uuid.uuid4().hex}.jsonl")
        write_atomically(name, ("\n".join(self._pending) + "\n").encode("utf-8"))
        self._pending = []


def read_checkpoint(readable: fileio.ReadableFile) -> Iterator[tuple[str, Any]]:
    """(path, result) of every line of one checkpoint file."""
    for line in readable.read_utf8().splitlines():
        if line.strip():
            path, result = json.loads(line)
            yield path, result


def matching(pattern: str) -> list[str]:
    """The paths `pattern` matches, sorted; none for a folder that does not exist yet."""
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except BeamIOError:
        return []
    return sorted(m.path for m in found)


def checkpoint_files(out: str, tasks: Sequence[str]) -> dict[str, list[str]]:
    """Each task's checkpoint files in `out`."""
    folder = FileSystems.join(out, CHECKPOINT)
    return {task: matching(FileSystems.join(folder, f"{task}-*.jsonl")) for task in tasks}


def previous_outputs(out: str) -> list[str]:
    """Files of an earlier run in `out` (shards, errors, manifest, Beam's temporary folders of
    versions that wrote through `WriteToText`)."""
    names = []
    for pattern in (
        f"{PREDICTIONS}-*-of-*.csv",
        f"{DETECTIONS}-*-of-*.json",
        f"{ERRORS}.csv",
        MANIFEST,
        MODEL_COPY,
        "beam-temp-*",
    ):
        names.extend(matching(FileSystems.join(out, pattern)))
    return names


def prepare_output(config: BatchConfig) -> None:
    """Checks (and with `overwrite`, clears) the output folder before the pipeline starts.

    Raises:
        FileExistsError: `out` holds another run's outputs and neither `overwrite` nor `resume`
            was asked for, or `resume` was asked for a finished run.
        FileNotFoundError: `resume` without a checkpoint in `out`.
        ValueError: `resume` with a checkpoint of another model or other settings.
    """
    out = config.out
    checkpoint = FileSystems.join(out, CHECKPOINT)
    run_file = FileSystems.join(checkpoint, RUN_FILE)
    previous = previous_outputs(out)
    has_checkpoint = FileSystems.exists(run_file)
    if config.overwrite:
        leftovers = previous + ([checkpoint] if FileSystems.exists(checkpoint) else [])
        heatmaps = FileSystems.join(out, HEATMAPS)
        if FileSystems.exists(heatmaps):
            leftovers.append(heatmaps)
        if leftovers:
            FileSystems.delete(leftovers)
    elif config.resume:
        _check_resumable(config, previous, has_checkpoint)
        stage_model(config)
        return
    elif previous or has_checkpoint:
        what = (
            "a crashed run's checkpoint (--resume continues it)"
            if has_checkpoint
            else (f"outputs of another run ({FileSystems.split(previous[0])[1]}, ...)")
        )
        raise FileExistsError(
            f"--out {out} holds {what}; use --overwrite to replace them, or another --out"
        )
    write_atomically(run_file, json.dumps(config.identity(), indent=1).encode("utf-8"))
    stage_model(config)


def _check_resumable(config: BatchConfig, previous: list[str], has_checkpoint: bool) -> None:
    out = config.out
    checkpoint = FileSystems.join(out, CHECKPOINT)
    if FileSystems.exists(FileSystems.join(out, MANIFEST)):
        raise FileExistsError(
            f"{out} holds a finished run ({MANIFEST}); there is nothing to resume "
            "(use --overwrite to run again)"
        )
    if not has_checkpoint:
        raise FileNotFoundError(
            f"--resume: {checkpoint} does not exist; there is no crashed run to continue in {out}"
        )
    saved = json.loads(read_text(FileSystems.join(checkpoint, RUN_FILE)))
    now = json.loads(json.dumps(config.identity()))
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        raise ValueError(
            f"--resume: the checkpoint in {out} was made with other "
            f"{', '.join(changed)} ({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); "
            "run with the same settings, or use --overwrite to start over"
        )
    # Half-written shards of the crashed run: rewritten from the checkpoint. A summary there
    # (the launcher died after the pipeline's end) must not stand for the new run's.
    stale = [p for p in previous if not p.endswith((MANIFEST, MODEL_COPY))]
    stale += matching(FileSystems.join(checkpoint, SUMMARY))
    if stale:
        FileSystems.delete(stale)


def stage_model(config: BatchConfig) -> str:
    """Copies the model to `OUT/model.keras`, where every worker of every runner can read it.

    The launcher's path (a local export) is not visible to Dataflow, Flink, Spark or remote
    Dask workers; the output folder must be. The copy also records which model made the outputs.
    """
    with FileSystems.open(config.model) as f:
        data = f.read()
    name = FileSystems.join(config.out, MODEL_COPY)
    write_atomically(name, data)
    return name
