"""`cellkeras serve-check`: offline checks of an export before TF Serving loads it.

Register with "cellkeras.cli.serving" in `cellkeras.cli.COMMAND_MODULES`. TensorFlow is
imported inside `_run_serve_check` so `cellkeras --help` stays fast.
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
