"""`cellkeras serve-check`: offline checks of an export before TF Serving loads it;
`cellkeras export-bioimageio MODEL --out DIR`: the model as a bioimage.io model package.

Register with "cellkeras.cli.serving" in `cellkeras.cli.COMMAND_MODULES`. TensorFlow is
imported inside the `_run_...` functions so `cellkeras --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Registers `serve-check` on the `cellkeras` command's sub-parsers."""
    p = subparsers.add_parser(
        "serve-check",
        help="check an export as TF Serving would use it, print the docker and curl commands",
        description=(
            "Checks EXPORT_DIR (its highest version, or a version folder): the folder layout, "
            "the serving signatures (saved_model_cli show --all and tf.saved_model.load), a "
            "replay of every warmup request, and a test image through serving_default and "
            "serving_images against the exported model.keras. Exits 1 when a check fails."
        ),
    )
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="export folder or version folder")
    p.add_argument("--image", default=None, help="image file to compare (default: synthetic)")
    p.add_argument("--model_name", default="cellkeras", help="name in the docker/curl commands")
    p.add_argument("--tolerance", type=float, default=1e-5, help="max |probability difference|")
    p.add_argument(
        "--no_saved_model_cli", action="store_true", help="skip the saved_model_cli subprocess"
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    p.set_defaults(func=_run_serve_check)
    add_bioimageio_command(subparsers)


def add_bioimageio_command(subparsers: argparse._SubParsersAction) -> None:
    """Registers `export-bioimageio`."""
    p = subparsers.add_parser(
        "export-bioimageio",
        help="pack a trained model as a bioimage.io model package (validated by bioimageio.spec)",
        description=(
            "Writes OUT/rdf.yaml (bioimage.io model spec 0.5) with TensorFlow SavedModel and "
            "Keras weights, test input/output made by running the model, a cover image and "
            "README.md, then validates the package offline with bioimageio.spec."
        ),
    )
    p.add_argument(
        "model", metavar="MODEL", help="export folder, version folder, run folder or .keras"
    )
    p.add_argument("--out", required=True, help="package folder to write (replaced if it exists)")
    p.add_argument("--name", default=None, help="model name (default: from the classes)")
    p.add_argument("--description", default=None, help="one-line description")
    p.add_argument("--author", action="append", default=None, help="author name (repeatable)")
    p.add_argument("--test_image", default=None, help="image for the test tensors and the cover")
    p.add_argument("--classes", default=None, help="comma-separated class names (bare .keras)")
    p.add_argument("--image_size", default=None, help="HxW input size (bare .keras)")
    p.set_defaults(func=_run_export_bioimageio)


def _run_serve_check(args: argparse.Namespace) -> int:
    from cellkeras.serving.check import format_report, serve_check

    report = serve_check(
        args.export_dir,
        image=args.image,
        model_name=args.model_name,
        use_saved_model_cli=not args.no_saved_model_cli,
        tolerance=args.tolerance,
    )
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["ok"] else 1


def _run_export_bioimageio(args: argparse.Namespace) -> int:
    from cellkeras.cli.common import fail
    from cellkeras.inference.loading import load_model_for_inference
    from cellkeras.io.images import ImageError, decode_raw, read_image_bytes, select_channels
    from cellkeras.serving.bioimageio import BioimageioError, export_bioimageio

    try:
        import bioimageio.spec  # noqa: F401  fail before loading anything when it is missing
    except ImportError:
        return fail(
            "export-bioimageio",
            "bioimageio.spec is not installed: pip install 'cellkeras[bioimageio]' "
            "(or bioimageio.spec==0.5.14.3)",
        )
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        model, info = load_model_for_inference(
            args.model, classes=classes, image_size=args.image_size
        )
        if info.classes is None or info.image_size is None:
            missing = "--classes" if info.classes is None else "--image_size"
            raise ValueError(f"{args.model} does not record its {missing[2:]}; pass {missing}")
        image = None
        if args.test_image:
            raw = decode_raw(read_image_bytes(args.test_image), source=args.test_image)
            image = select_channels(raw, info.channels, args.test_image)
        rdf = export_bioimageio(
            model,
            args.out,
            classes=info.classes,
            image_size=info.image_size,
            channels=int(info.channels or model.inputs[0].shape[-1]),
            normalization=info.normalization,
            name=args.name,
            description=args.description,
            authors=args.author or ("cellkeras contributors",),
            test_image=image,
            card=_card(info.model_file),
            source=str(info.source),
        )
    except (OSError, ValueError, ImageError, BioimageioError) as err:
        return fail("export-bioimageio", err)
    print(f"bioimage.io model package (validated by bioimageio.spec) -> {rdf}")
    return 0


def _card(model_file: str) -> dict:
    """The model card (export) or metrics.json (run folder) beside the model file, if any."""
    for name in ("model_card.json", "metrics.json"):
        path = Path(model_file).parent / name
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return {}
