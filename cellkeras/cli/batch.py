"""`cellkeras batch`: classify (and detect cells in) many images with an Apache Beam pipeline.

Register with "cellkeras.cli.batch" in `cellkeras.cli.COMMAND_MODULES`. Beam and TensorFlow
are imported inside `_run_batch`, so `cellkeras --help` stays fast and works without the `beam`
extra.

```
cellkeras batch --input 'plates/**.png' --model exports/cells --out results/ \
    [--detect --save_heatmaps] [--direct_num_workers 2] [--resume | --overwrite] \
    [-- --runner=DaskRunner --dask_client_address=tcp://HOST:8786 ...]
```

The model is loaded once here, in the launcher: a bad `--model` fails before any worker starts,
an export folder is pinned to its highest version at launch, and the model card (classes,
size, normalization) travels to the workers inside the pipeline. Every argument after `--` is
a Beam pipeline option for the runner (docs/BATCH.md gives the Dask runner's, tested, and those
for Dataflow, Flink and Spark, not run).
"""

from __future__ import annotations

import argparse
import sys

from cellkeras.cli.common import fail


def _int_at_least(minimum: int, meaning: str = ""):
    """An argparse type: a whole number of at least `minimum` (`meaning` explains the
    smallest one in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum}{meaning} or more, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_workers = _int_at_least(0, " (one per CPU core)")


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Registers `batch` on the `cellkeras` command's sub-parsers."""
    from cellkeras.cli.detect import add_detection_arguments

    p = subparsers.add_parser(
        "batch",
        help="classify / detect many images with an Apache Beam pipeline (sharded outputs)",
        description=(
            "Reads every file matching the --input patterns (local or any Beam file system), "
            "classifies each with the model (and with --detect finds cells) and writes "
            "OUT/predictions-SSSSS-of-NNNNN.csv (the columns of 'cellkeras classify'), "
            "OUT/detections-SSSSS-of-NNNNN.json (COCO, one document per shard) and "
            "OUT/errors.csv (path,stage,reason for every file that failed; the run goes on) and "
            "OUT/batch.json (the manifest of a finished run). Finished results are also saved "
            "to OUT/_checkpoint/ as the run goes, so --resume continues a run that crashed. "
            "Runs on Beam's DirectRunner unless options after '--' name another runner, e.g. "
            "-- --runner=DaskRunner --dask_client_address=tcp://HOST:8786 (a dask.distributed "
            "cluster). "
            "Needs the beam extra: pip install 'cellkeras[beam]'."
        ),
    )
    p.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="PATTERN",
        help="file pattern of images, e.g. 'data/**.png' or 'gs://b/x/*.tif' (repeatable)",
    )
    p.add_argument(
        "--model", required=True, help="export folder, version folder, run folder or .keras file"
    )
    p.add_argument("--out", required=True, help="output folder (any Beam file system)")
    p.add_argument(
        "--classes", default=None, help="comma-separated class names (for a bare .keras file)"
    )
    p.add_argument(
        "--image_size", default=None, help="resize to SIZE or HxW (default: the model card's)"
    )
    p.add_argument(
        "--batch_size", type=_positive_int, default=32, help="most images per model call"
    )
    p.add_argument("--num_shards", type=_positive_int, default=4, help="files per output")
    p.add_argument("--no_classify", action="store_true", help="only detect (needs --detect)")
    p.add_argument("--detect", action="store_true", help="also find cells (COCO JSON shards)")
    p.add_argument(
        "--save_heatmaps", action="store_true", help="with --detect: OUT/heatmaps/<stem>-<id>.png"
    )
    add_detection_arguments(p)
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue a crashed run in OUT: skip the files its checkpoint holds",
    )
    again.add_argument(
        "--overwrite", action="store_true", help="delete a previous run's outputs in OUT first"
    )
    p.add_argument(
        "--checkpoint_every",
        type=_positive_int,
        default=256,
        help="each worker saves its finished results to OUT/_checkpoint/ after this many images",
    )
    runner = p.add_argument_group("runner (DirectRunner; other runners: options after --)")
    runner.add_argument(
        "--direct_num_workers",
        type=_workers,
        default=0,
        help="DirectRunner worker processes (0: one per CPU core)",
    )
    runner.add_argument(
        "--direct_running_mode",
        default="multi_processing",
        choices=("in_memory", "multi_threading", "multi_processing"),
        help="DirectRunner workers: processes (default), threads or this process only",
    )
    p.add_argument(
        "pipeline_args",
        nargs=argparse.REMAINDER,
        help="after --: Beam pipeline options, e.g. -- --runner=DaskRunner "
        "--dask_client_address=tcp://HOST:8786 --dask_npartitions=8",
    )
    p.set_defaults(func=_run_batch)


def _fail(err: Exception | str) -> int:
    return fail("batch", err)


def pipeline_options(args: argparse.Namespace) -> list[str]:
    """The Beam options: the DirectRunner flags, then whatever followed `--` (which wins)."""
    extra = list(args.pipeline_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    return [
        f"--direct_num_workers={args.direct_num_workers}",
        f"--direct_running_mode={args.direct_running_mode}",
        *extra,
    ]


def _run_batch(args: argparse.Namespace) -> int:
    try:
        from cellkeras.batch.checkpoint import prepare_output
        from cellkeras.batch.config import CHECKPOINT, BatchConfig
        from cellkeras.batch.pipeline import check_inputs, check_runner, run_batch
    except ImportError as err:
        return _fail(f"{err}; cellkeras batch needs Apache Beam: pip install 'cellkeras[beam]'")
    from cellkeras.cli.detect import build_config
    from cellkeras.detect.pipeline import check_model
    from cellkeras.inference.loading import load_model_for_inference

    if args.no_classify and not args.detect:
        return _fail("--no_classify leaves nothing to do without --detect")
    if args.save_heatmaps and not args.detect:
        return _fail("--save_heatmaps needs --detect (the heatmaps come from detection)")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        model, info = load_model_for_inference(
            args.model, classes=classes, image_size=args.image_size
        )
        detect_config, detection_info = None, {}
        if args.detect:
            check_model(model)
            workflow, detect_config = build_config(args, info)
            detection_info = {
                "workflow": workflow or "generic",
                "method": detect_config.method,
                "cell_diameter": args.cell_diameter,
            }
        count = check_inputs(args.input)
        config = BatchConfig(
            inputs=args.input,
            model=info.model_file,
            info=info,
            out=args.out,
            detect=detect_config,
            classify=not args.no_classify,
            save_heatmaps=args.save_heatmaps,
            batch_size=args.batch_size,
            num_shards=args.num_shards,
            detection_info=detection_info,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            overwrite=args.overwrite,
        )
        check_runner(pipeline_options(args))
        prepare_output(config)
    except (OSError, ValueError) as err:
        return _fail(err)
    del model  # the workers load their own copies
    print(f"cellkeras batch: {count} file(s) matched; model {info.model_file}")
    try:
        counters = run_batch(config, pipeline_options(args), output_checked=True)
    except BaseException:
        print(
            f"cellkeras batch: the pipeline failed; the results finished so far are saved in "
            f"{args.out}/{CHECKPOINT}/: fix the cause and rerun with --resume to continue",
            file=sys.stderr,
        )
        raise
    tasks = [f"{counters['images_classified']} classified"] if config.classify else []
    if config.detect is not None:
        tasks.append(f"{counters['images_detected']} with detections")
    if counters["images_resumed"]:
        tasks.append(f"{counters['images_resumed']} taken from the checkpoint")
    print(
        f"{counters['images_decoded']} decoded, {', '.join(tasks)}, {counters['errors']} error(s) "
        f"-> {args.out}"
    )
    if counters["errors"]:
        print(
            f"cellkeras batch: the failed files are listed in {args.out}/errors.csv",
            file=sys.stderr,
        )
    return 1 if counters["errors"] else 0
