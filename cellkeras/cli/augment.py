"""`cellkeras augment-preview`: a gallery of the augmentation presets and a fluidity GIF.

    cellkeras augment-preview --out docs/images                 # synthetic cells
    cellkeras augment-preview --data_dir images/TRAIN --n 8 --presets basic fluid

Writes `augment_gallery.png` (one row per preset: the original, then `--n` augmented versions)
and `augment_fluid.gif` (the distortion animated on one image) into `--out`.
"""

from __future__ import annotations

import argparse
import sys

from cellkeras.augment.preset_names import AUGMENTATION_PRESETS


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Registers `augment-preview` on the `cellkeras` command's sub-parsers."""
    from cellkeras.cli.data import add_source_arguments

    p = subparsers.add_parser(
        "augment-preview",
        help="write a gallery PNG of the augmentation presets and a GIF of the fluid distortion",
    )
    # --source/--data_dir/... and --seed, shared with the other data commands ("auto" picks
    # the synthetic cells when no folder, CSV or TFRecord is given).
    add_source_arguments(p)
    p.add_argument(
        "--presets",
        nargs="+",
        default=[name for name in AUGMENTATION_PRESETS if name != "none"],
        choices=list(AUGMENTATION_PRESETS),
        help="presets to show, one gallery row each",
    )
    p.add_argument("--n", type=int, default=6, help="augmented examples per preset")
    p.add_argument("--size", type=int, default=128, help="tile side in pixels")
    p.add_argument("--strength", type=float, default=1.0, help="0 = identity, 1 = the seed's")
    p.add_argument("--frames", type=int, default=24, help="GIF frames")
    p.add_argument("--out", default="augment_preview", help="folder for the PNG and the GIF")
    p.set_defaults(func=run_preview)


def run_preview(args: argparse.Namespace) -> int:
    """Loads the source, draws the gallery and the GIF; returns the exit code."""
    from pathlib import Path

    import numpy as np

    from cellkeras.augment.preview import fluid_frames, gallery, write_gallery, write_gif
    from cellkeras.cli.data import open_source_from_args
    from cellkeras.data import make_dataset
    from cellkeras.data.sources import BadInputError

    if args.n < 1 or args.size < 8:
        print("cellkeras augment-preview: error: need --n >= 1 and --size >= 8", file=sys.stderr)
        return 2
    try:
        imageset = open_source_from_args(args)
        if len(imageset) == 0:
            raise ValueError("the source holds no images")
        count = min(len(imageset), max(args.n, 2))
        # File-backed sets need the channel count up front; 3 shows colour and grey alike.
        channels = args.channels or (None if imageset.images is not None else 3)
        ds = make_dataset(
            imageset.subset(np.arange(count)),
            args.size,
            training=False,
            batch_size=count,
            channels=channels,
        )
        # One batch holds everything; reading the dataset to its end lets its cache complete.
        images, labels = (t.numpy() for t in list(ds)[0])
        out = Path(args.out)
        png = write_gallery(
            gallery(images, labels, args.presets, args.n, args.strength, args.seed),
            out / "augment_gallery.png",
        )
        gif = write_gif(
            fluid_frames(images[0], args.frames, seed=args.seed), out / "augment_fluid.gif"
        )
    except (ValueError, BadInputError, OSError) as err:
        print(f"cellkeras augment-preview: error: {err}", file=sys.stderr)
        return 1
    print(f"{imageset.name}: {len(args.presets)} presets x {args.n} -> {png}, {gif}")
    return 0
