"""`cellkeras` sub-commands for data preparation.

`add_command(subparsers)` registers every command of this module; each command has its own small
`_add_<name>` function that builds its parser, and a `_run_<name>` function that does the work and
returns an exit code. Heavy imports happen inside the `_run_` functions so `cellkeras --help`
stays fast.
"""

from __future__ import annotations

import argparse
import sys


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Registers the data commands on the `cellkeras` command's sub-parsers."""
    _add_video_to_folders(subparsers)


# --- video-to-folders ------------------------------------------------------------------------


def _add_video_to_folders(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "video-to-folders",
        help="cut a video into classes by time ranges and write class folders + labels.csv",
        description=(
            "Reads the frames inside labelled time ranges of VIDEO and writes "
            "OUT/<class>/<video>_<frame>.png plus OUT/labels.csv (filename,label). "
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
    print(f"{len(imageset)} frames written to {out} (labels in {out / 'labels.csv'})")
    return 0
