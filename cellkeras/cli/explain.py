"""`cellkeras classify` and `cellkeras explain`.

Register with "cellkeras.cli.explain" in `cellkeras.cli.COMMAND_MODULES`. TensorFlow is
imported inside the `_run_` functions so `cellkeras --help` stays fast.

Both commands take `--model` as an export folder, a version folder, a trainer run folder or a
`.keras` file (see `cellkeras.inference.loading`). A bad image (not an image, a channel count the
model does not take, smaller than the model's minimum side) is reported on stderr and the run
goes on with the others: one unreadable file in a folder of thousands should not cost the rest.
The exit code is 1 when any image failed, so scripts still notice.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from cellkeras.cli.common import fail as _fail


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Registers `classify` and `explain` on the `cellkeras` command's sub-parsers."""
    _add_classify(subparsers)
    _add_explain(subparsers)


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="export folder, version folder, trainer run folder or .keras file",
    )
    p.add_argument(
        "--classes", default=None, help="comma-separated class names (for a bare .keras file)"
    )
    p.add_argument(
        "--image_size", default=None, help="resize to SIZE or HxW (default: the model card's)"
    )
    p.add_argument("--batch_size", type=int, default=32)


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from cellkeras.inference.loading import load_model_for_inference

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    return load_model_for_inference(args.model, classes=classes, image_size=args.image_size)


def _read_all(paths: list[Path], info: Any, progress: bool) -> tuple[list, list]:
    """Reads every image; returns ([(path, pixels)], [(path, error)])."""
    import keras

    from cellkeras.inference.loading import load_image_for_model
    from cellkeras.io.images import ImageError

    good, bad = [], []
    bar = keras.utils.Progbar(len(paths), unit_name="image") if progress else None
    for k, path in enumerate(paths):
        try:
            good.append((path, load_image_for_model(path, info)))
        except ImageError as err:
            bad.append((path, err.reason))
        if bar is not None:
            bar.update(k + 1)
    return good, bad


def _report_errors(command: str, bad: list) -> None:
    for path, reason in bad:
        print(f"cellkeras {command}: error: {path}: {reason}", file=sys.stderr)


# --- classify -------------------------------------------------------------------------------


def _add_classify(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify image files or folders and write a CSV of the predictions",
        description=(
            "Classifies every image given (folders are searched recursively, in sorted order), "
            "resized to the model's training size, prints a table and optionally writes a CSV "
            "path,predicted_class,probability,<one column per class>. Unreadable images are "
            "listed as errors and skipped; the exit code is then 1."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    _add_model_arguments(p)
    p.add_argument("--csv", default=None, help="CSV file to write")
    p.add_argument("--quiet", action="store_true", help="no table and no progress bar")
    p.set_defaults(func=_run_classify)


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    width = min(max(len(r["path"]) for r in rows), 60)
    cls = max(max(len(r["predicted_class"]) for r in rows), len("class"))
    print(f"{'path':<{width}}  {'class':<{cls}}  probability")
    print(f"{'-' * width}  {'-' * cls}  -----------")
    for r in rows:
        path = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3) :]
        print(f"{path:<{width}}  {r['predicted_class']:<{cls}}  {r['probability']:.4f}")


def _run_classify(args: argparse.Namespace) -> int:
    from cellkeras.inference.classify import classify_images, csv_columns, csv_values
    from cellkeras.inference.loading import expand_image_paths

    try:
        model, info = _load(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        return _fail("classify", err)
    paths = expand_image_paths(args.paths)
    if not paths:
        return _fail("classify", ValueError(f"no images found in {', '.join(args.paths)}"))
    good, bad = _read_all(paths, info, progress=not args.quiet and len(paths) > 20)
    rows = classify_images(model, info, good, args.batch_size)
    if args.csv:
        out = Path(args.csv)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=csv_columns(info))
            writer.writeheader()
            for row in rows:
                writer.writerow(csv_values(row))
    if not args.quiet:
        _print_table(rows)
        where = f" -> {args.csv}" if args.csv else ""
        print(f"{len(rows)} classified, {len(bad)} failed{where}")
    _report_errors("classify", bad)
    return 1 if bad else 0


# --- explain --------------------------------------------------------------------------------


def _add_explain(subparsers: argparse._SubParsersAction) -> None:
    from cellkeras.explain.methods import METHODS

    p = subparsers.add_parser(
        "explain",
        help="write heatmap overlay PNGs (Grad-CAM family or occlusion) for images",
        description=(
            "For each image writes OUT/<name>_<method>.png: the image and its heatmap overlay "
            "for the predicted class (or --class_index), each panel titled with the class and "
            "its probability, and a colour bar of the map's scale. Panels keep the image's "
            "own aspect and are at least 256 px on the short side (small images are enlarged "
            "smoothly, image and map alike); with --branches one overlay per branch and one "
            "for the merged model, each named."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE", help="image files or folders")
    _add_model_arguments(p)
    p.add_argument(
        "--method",
        default="gradcam",
        choices=METHODS,
        help="explanation method (default: %(default)s)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layer", default=None, help="layer to explain (default: the last conv)")
    p.add_argument("--branch", default=None, help="a branch name, or 'merged'")
    p.add_argument("--branches", action="store_true", help="one overlay per branch + merged")
    p.add_argument("--class_index", type=int, default=None, help="class to explain")
    p.add_argument(
        "--colormap",
        default="jet",
        choices=COLORMAP_CHOICES,
        help="colours of the heatmap (default: %(default)s)",
    )
    p.set_defaults(func=_run_explain)


# `cellkeras.explain.overlay.COLORMAPS`' names, spelt out: that module imports OpenCV, which
# every `cellkeras` command would then load just to build its parser (a test keeps them equal).
COLORMAP_CHOICES = ("jet", "turbo", "inferno", "viridis", "hot")
METHOD_NAMES = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "layercam": "LayerCAM",
    "scorecam": "Score-CAM",
    "faster-scorecam": "Faster Score-CAM",
    "occlusion": "occlusion",
}


def _panel_name(target: str | None, merged: str) -> str:
    if target is None:
        return "model"
    return "merged model" if target == merged else f"{target} branch"


def _read_for_explain(paths: list[Path], info: Any) -> tuple[list, list]:
    """Each image as the model takes it and as it is shown (its own size, so the figure keeps
    its aspect); returns ([(path, model pixels, shown pixels)], [(path, error)])."""
    import dataclasses

    from cellkeras.inference.loading import prepare_image_for_model
    from cellkeras.io.images import ImageError, decode_raw, read_image_bytes

    own_size = dataclasses.replace(info, image_size=None)
    good, bad = [], []
    for path in paths:
        try:
            raw = decode_raw(read_image_bytes(path), source=str(path))
            good.append(
                (path, prepare_image_for_model(raw, info, str(path)),
                 prepare_image_for_model(raw, own_size, str(path)))
            )  # fmt: skip
        except ImageError as err:
            bad.append((path, err.reason))
    return good, bad


def _run_explain(args: argparse.Namespace) -> int:
    import numpy as np

    from cellkeras.evaluate.plots import save_figure
    from cellkeras.explain.cam import compute_explanation
    from cellkeras.explain.methods import MERGED
    from cellkeras.explain.plots import ROW_DPI, plot_overlay_row
    from cellkeras.explain.targets import branch_names
    from cellkeras.inference.loading import expand_image_paths

    try:
        model, info = _load(args)
        paths = expand_image_paths(args.paths)
        if not paths:
            raise ValueError(f"no images found in {', '.join(args.paths)}")
        if args.branches:
            branches = branch_names(model)
            targets = [*branches, MERGED] if branches else [None]
        else:
            targets = [args.branch]
        # Fail on the model (no conv layer, unknown branch or layer) before reading images.
        probe = np.zeros((1, info.min_side * 2, info.min_side * 2, info.channels or 3), "float32")
        for target in targets:
            compute_explanation(model, probe, args.method, 0, args.layer, target, batch_size=1)
    except (ValueError, FileNotFoundError, OSError) as err:
        return _fail("explain", err)
    good, bad = _read_for_explain(paths, info)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = info.class_names()
    method = METHOD_NAMES.get(args.method, args.method)
    written = []
    for path, pixels, shown in good:
        maps, titles, labels = [], [], []
        for target in targets:
            result = compute_explanation(
                model, pixels[None], args.method, args.class_index, args.layer, target,
                batch_size=args.batch_size,
            )  # fmt: skip
            k, probability = int(result.class_index[0]), float(result.probability[0])
            maps.append(result.maps[0])
            titles.append(f"{_panel_name(target, MERGED)}\n{names[k]}  p = {probability:.2f}")
            labels.append(f"{target or 'model'}: {names[k]} {probability:.2f}")
        figure = plot_overlay_row(
            shown,
            maps,
            titles,
            image_title=f"{path.name}\n{shown.shape[1]}x{shown.shape[0]} px",
            colormap=args.colormap,
            colorbar_label=f"{method} heat (1 = the map's peak)",
        )
        target_file = out / f"{path.stem}_{args.method}.png"
        save_figure(figure, target_file, dpi=ROW_DPI)
        written.append(target_file)
        print(f"{path} -> {target_file} ({'; '.join(labels)})")
    print(f"{len(written)} overlays written to {out}, {len(bad)} failed")
    _report_errors("explain", bad)
    return 1 if bad else 0
