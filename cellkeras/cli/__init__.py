"""The `cellkeras` command: one sub-command per task.

Each sub-command lives beside the code it drives and registers itself through an
`add_command(subparsers)` function that adds its parser and sets `func` to a callable taking the
parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute sub-commands; imported lazily so `cellkeras --help` stays fast.
COMMAND_MODULES = [
    "cellkeras.cli.data",
    "cellkeras.cli.augment",
    "cellkeras.cli.explain",
    "cellkeras.cli.detect",
    "cellkeras.cli.serving",
    "cellkeras.cli.batch",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellkeras",
        description="Train, explain and serve CNNs on microscope images of cells.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
