"""`cellkeras` sub-commands for data preparation.

`add_command(subparsers)` registers every command of this module; each command has its own small
`_add_<name>` function that builds its parser, and a `_run_<name>` function that does the work and
returns an exit code. Heavy imports happen inside the `_run_` functions so `cellkeras --help`
stays fast.
"""

from __future__ import annotations

import argparse
import sys

from cellkeras.cli.common import fail as _fail


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Registers the data commands on the `cellkeras` command's sub-parsers."""
    _add_video_to_folders(subparsers)
    _add_gallery(subparsers)
    _add_to_tfrecords(subparsers)


# --- shared source arguments ----------------------------------------------------------------


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """The data-source options every command that reads a dataset takes."""
    from cellkeras.data.sources import SOURCE_KINDS

    p.add_argument(
        "--source",
        default="auto",
        choices=("auto", *SOURCE_KINDS),
        help="data source; auto: from the options below, else the synthetic cells",
    )
    p.add_argument("--data_dir", help="class-folder tree root/<class>/<image>")
    p.add_argument("--labels_csv", help="CSV of filename,label rows")
    p.add_argument("--image_root", help="folder the CSV's filenames are relative to")
    p.add_argument("--tfrecords", help="TFRecord files (glob, folder or comma-separated)")
    p.add_argument("--num_images", type=int, default=48, help="synthetic images to generate")
    p.add_argument("--image_size", type=int, default=96, help="synthetic image side in pixels")
    p.add_argument(
        "--channels",
        default=None,
        help="1 grey, 3 RGB, or channel indices such as 0,2 (default: as stored)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_bad_images", action="store_true", help="leave unreadable images out")


def open_source_from_args(args: argparse.Namespace):
    """The `ImageSet` named by `add_source_arguments` options."""
    from cellkeras.data.sources import open_source

    return open_source(
        args.source,
        data_dir=args.data_dir,
        labels_csv=args.labels_csv,
        image_root=args.image_root,
        tfrecords=args.tfrecords,
        num_images=args.num_images,
        image_size=args.image_size,
        channels=args.channels,
        seed=args.seed,
        skip_bad_images=args.skip_bad_images,
    )


# --- gallery --------------------------------------------------------------------------------


def _add_gallery(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gallery",
        help="write a PNG grid of a few images per class (boxes drawn where the data has them)",
    )
    add_source_arguments(p)
    p.add_argument("--per_class", type=int, default=6)
    p.add_argument("--out", default="gallery.png", help="PNG file to write")
    p.set_defaults(func=_run_gallery)


def _run_gallery(args: argparse.Namespace) -> int:
    from cellkeras.data.gallery import draw_gallery
    from cellkeras.data.sources import BadInputError

    try:
        imageset = open_source_from_args(args)
        path = draw_gallery(imageset, args.out, per_class=args.per_class)
    except (ValueError, BadInputError, OSError) as err:
        return _fail("gallery", err)
    print(f"{imageset.name}: {len(imageset)} images, classes {imageset.classes} -> {path}")
    return 0


# --- to-tfrecords ---------------------------------------------------------------------------


def _add_to_tfrecords(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "to-tfrecords",
        help="convert any data source to TFRecord shards of tf.train.Example (as ExampleGen)",
    )
    add_source_arguments(p)
    p.add_argument("--out", required=True, help="output prefix: OUT-00000-of-0000N.gz")
    p.add_argument("--num_shards", type=int, default=1)
    p.add_argument("--no_compress", action="store_true", help="write plain, not gzip, files")
    p.set_defaults(func=_run_to_tfrecords)


def _run_to_tfrecords(args: argparse.Namespace) -> int:
    from cellkeras.data.sources import BadInputError, check_images
    from cellkeras.data.tfrecord import write_tfrecords

    try:
        imageset, _ = check_images(
            open_source_from_args(args), args.channels, skip_bad_images=args.skip_bad_images
        )
        shards = write_tfrecords(
            imageset, args.out, num_shards=args.num_shards, compress=not args.no_compress
        )
    except (ValueError, BadInputError, OSError) as err:
        return _fail("to-tfrecords", err)
    for where, why in imageset.skipped:
        print(f"skipped {where}: {why}")
    print(f"{len(imageset)} examples of {imageset.num_classes} classes -> {', '.join(shards)}")
    return 0


# --- video-to-folders ------------------------------------------------------------------------


def _add_video_to_folders(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "video-to-folders",
        help="cut a video into classes by time ranges and write class folders + labels.csv",
        description=(
            "Reads the frames inside labelled time ranges of VIDEO and writes "
            "OUT/<class>/<video>_<frame>.png, OUT/labels.csv (filename,label,frame,sequence) "
            "and the frame manifest OUT/frames.csv, so that training on OUT "
            "(--data_dir=OUT) splits by contiguous time blocks with guard gaps. "
            "Ranges are half-open START:END; bare numbers use --unit, or suffix each number "
            "with s (seconds) or f (frames), e.g. 'gastrula=32s:82s,comma=812f:882f'. "
            "A class may have several ranges."
        ),
    )
    p.add_argument("video", metavar="VIDEO", help="video file OpenCV can read")
    p.add_argument(
        "--segments",
        required=True,
        help="CLASS=START:END[,CLASS=START:END...], e.g. 'gastrula=32:82,comma=116:126'",
    )
    p.add_argument("--unit", choices=("seconds", "frames"), default="seconds")
    p.add_argument("--out", required=True, help="output folder (created atomically)")
    p.add_argument("--max_side", type=int, default=256, help="longer side after downscaling")
    p.add_argument("--frame_step", type=int, default=1, help="keep every Nth frame of a range")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="1 = grayscale")
    p.add_argument("--fps", type=float, default=None, help="frame rate, if the metadata lacks it")
    p.add_argument("--format", default="png", help="image format: png, jpg or tif")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=_run_video_to_folders)


def _run_video_to_folders(args: argparse.Namespace) -> int:
    from cellkeras.data.video import (
        load_video_segments,
        parse_segments,
        probe_video,
        segment_summary,
        write_class_folders,
    )

    try:
        segments = parse_segments(args.segments, unit=args.unit)
        info = probe_video(args.video, fps=args.fps)
        imageset = load_video_segments(
            args.video,
            segments,
            max_side=args.max_side,
            channels=args.channels,
            frame_step=args.frame_step,
            fps=args.fps,
        )
        out = write_class_folders(
            imageset, args.out, image_format=args.format, overwrite=args.overwrite, fps=info.fps
        )
    except (ValueError, FileExistsError) as err:
        print(f"cellkeras video-to-folders: error: {err}", file=sys.stderr)
        return 1

    h, w = imageset.images.shape[1:3]
    print(
        f"{info.path}: {info.fps:g} fps, {info.frame_count} frames (metadata), "
        f"{info.width}x{info.height} -> {w}x{h}"
    )
    rows = [("class", "frames", "time range")] + [
        (c, str(n), r) for c, n, r in segment_summary(imageset, segments, info.fps)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for k, (cls, n, rng) in enumerate(rows):
        print(f"{cls:<{widths[0]}}  {n:>{widths[1]}}  {rng}")
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print(
        f"{len(imageset)} frames written to {out} (labels in {out / 'labels.csv'}, frame order "
        f"in {out / 'frames.csv'})"
    )
    return 0
