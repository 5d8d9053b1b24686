"""The `cellkeras` command: one sub-command per task.

Each sub-command lives beside the code it drives and registers itself through an
`add_command(subparsers)` function that adds its parser and sets `func` to a callable taking the
parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import cellkeras
from cellkeras.io.quiet import quiet_tensorflow_import

# Modules that contribute sub-commands; imported lazily so `cellkeras --help` stays fast.
COMMAND_MODULES = [
    "cellkeras.cli.data",
    "cellkeras.cli.augment",
    "cellkeras.cli.explain",
    "cellkeras.cli.detect",
    "cellkeras.cli.calibrate",
    "cellkeras.cli.serving",
    "cellkeras.cli.batch",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cellkeras",
        description="Train, explain and serve CNNs on microscope images of cells.",
        epilog="Train a model first: `cellkeras train --help` (the same as "
        "`python -m trainer.task --help`); each command has its own --help.",
    )
    parser.add_argument("--version", action="version", version=f"cellkeras {cellkeras.__version__}")
    parser.add_argument(
        "--verbose", action="store_true", help="show TensorFlow's start-up log lines"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.add_parser(
        "train",
        help="train a model and write a run folder (python -m trainer.task; see train --help)",
        add_help=False,
    )
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        # The trainer parses its own (absl) flags: hand it everything after the word.
        from trainer.cli import main as train

        return train(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_tensorflow_import()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
