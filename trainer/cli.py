"""The trainer's command line: `python -m trainer.task` and `cellkeras train` run `main`.

Everything a user can get wrong is checked here, before TensorFlow loads, any data is read or
any folder is created: flag names and values, preset, model and augmentation names, the
schedule, and the input paths. A mistake is one line on stderr (`trainer: error: ...`, with the
known names and the closest match) and exit status 2. TensorFlow's start-up log lines are
silenced unless `--verbose` is given; `--help` is generated from the config dataclasses, shows
the chosen preset's resolved defaults and returns at once.
"""

from __future__ import annotations

import difflib
import glob
import sys
from pathlib import Path

from cellkeras.io.quiet import quiet_tensorflow_import
from trainer.config import PRESETS, RunConfig, build_config
from trainer.flags import CHOICES, RUN_FLAGS, SECTIONS, config_from_flags, define_flags, flag_fields

PROG = "trainer"
# Flags people reach for that are spelled differently here.
HINTS = {
    "epochs": "--schedule=SIZE:EPOCHS (e.g. --schedule=96:8 trains 8 epochs at 96 px)",
    "epoch": "--schedule=SIZE:EPOCHS",
    "image_size": "--schedule=SIZE:EPOCHS (e.g. --schedule=128:10)",
    "size": "--schedule=SIZE:EPOCHS",
    "lr": "--learning_rate",
    "data": "--data_dir (class folders), --labels_csv or --tfrecords",
    "input": "--data_dir (class folders), --labels_csv or --tfrecords",
    "out": "--output_dir",
    "export": "--export_dir",
    "augmentation": "--augment",
    "gpu": "--distribution and --mixed_precision",
}


class UsageError(ValueError):
    """A mistake on the command line, said in one line."""


def _closest(value: str, known) -> str:
    match = difflib.get_close_matches(str(value), [str(k) for k in known], n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _check_name(flag: str, value: str, known) -> None:
    if value not in known:
        raise UsageError(
            f"--{flag}: unknown {value!r} (known: {', '.join(map(str, known))}){_closest(value, known)}"
        )


def _check_path(flag: str, value: str | None, kind: str) -> None:
    if value is None or "://" in value:  # remote paths are checked when they are read
        return
    path = Path(value)
    if not path.exists():
        raise UsageError(f"--{flag}: {value} does not exist")
    if kind == "folder" and not path.is_dir():
        raise UsageError(f"--{flag}: {value} is a file, not a folder")
    if kind == "file" and not path.is_file():
        raise UsageError(f"--{flag}: {value} is a folder, not a file")


def _check_tfrecords(flag: str, value: str | None) -> None:
    if value is None:
        return
    for pattern in (p.strip() for p in value.split(",") if p.strip()):
        if "://" not in pattern and not glob.glob(pattern) and not Path(pattern).is_dir():
            raise UsageError(f"--{flag}: no file matches {pattern!r}")


def check_config(config: RunConfig) -> None:
    """Checks every name, value and path of `config` without loading TensorFlow or data.

    Raises:
        UsageError: naming the flag, the bad value and what would be accepted.
    """
    from cellkeras.augment.preset_names import AUGMENTATION_PRESETS
    from cellkeras.data.sources import SOURCE_KINDS
    from cellkeras.io.images import NORMALIZATIONS, parse_channels
    from cellkeras.models.names import MODEL_NAMES
    from cellkeras.training.schedule import parse_schedule

    train, data = config.train, config.data
    _check_name("model", train.model, MODEL_NAMES)
    _check_name("augment", train.augment, list(AUGMENTATION_PRESETS))
    _check_name("source", data.source, ("auto", *SOURCE_KINDS))
    _check_name("normalization", data.normalization, ("auto", *NORMALIZATIONS))
    try:
        if train.schedule is not None:
            parse_schedule(train.schedule)
    except ValueError as err:
        raise UsageError(f"--schedule={train.schedule}: {err}") from None
    for flag, value, kind in (
        ("data_dir", data.data_dir, "folder"),
        ("labels_csv", data.labels_csv, "file"),
        ("image_root", data.image_root, "folder"),
        ("test_dir", data.test_dir, "folder"),
        ("test_labels_csv", data.test_labels_csv, "file"),
    ):
        _check_path(flag, value, kind)
    _check_tfrecords("tfrecords", data.tfrecords)
    _check_tfrecords("eval_tfrecords", data.eval_tfrecords)
    _check_tfrecords("test_tfrecords", data.test_tfrecords)
    if not 0.0 <= data.test_fraction < 1.0:
        raise UsageError(f"--test_fraction={data.test_fraction}: must lie in [0, 1)")
    if not 0.0 < data.val_fraction < 1.0 and not data.eval_tfrecords:
        raise UsageError(f"--val_fraction={data.val_fraction}: must lie between 0 and 1")
    try:
        parse_channels(data.channels)
    except ValueError as err:
        raise UsageError(f"--channels={data.channels}: {err}") from None
    if train.batch_size < 1:
        raise UsageError(f"--batch_size={train.batch_size}: must be at least 1")


def _preset_of(argv: list[str]) -> str:
    for arg in argv:
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
    return "default"


def help_text(preset: str = "default") -> str:
    """`--help`: every flag with its help and the value it has under `preset`."""
    from cellkeras.augment.preset_names import AUGMENTATION_PRESETS
    from cellkeras.data.sources import SOURCE_KINDS
    from cellkeras.models.names import MODEL_NAMES

    config = build_config(preset if preset in PRESETS else "default")
    known = {
        "model": MODEL_NAMES,
        "augment": tuple(AUGMENTATION_PRESETS),
        "source": ("auto", *SOURCE_KINDS),
        **CHOICES,
    }
    lines = [
        "usage: python -m trainer.task [--flag=value ...]   (also: cellkeras train ...)",
        "",
        "Trains a cellkeras model and writes a run folder (report.html, metrics.json, model).",
        "With no flags it trains on the embedded synthetic cells. Examples:",
        "  python -m trainer.task --data_dir=images/ --schedule=64:4,128:2",
        "  python -m trainer.task --preset=nuclei      # the nucleus detector for cellkeras detect",
        "",
        f"--preset={preset}   named configuration ({', '.join(PRESETS)}); the values below are "
        "its defaults",
    ]
    for section, cls in SECTIONS.items():
        lines += ["", f"{cls.__name__} ({section}):"]
        values = getattr(config, section)
        for name, key, _, text in flag_fields():
            if key.startswith(f"{section}."):
                lines.append(f"  --{name}={getattr(values, name)}")
                lines.append(f"      {text}")
                if name in known:
                    lines.append(f"      known: {', '.join(map(str, known[name]))}")
    lines += ["", "Run:"]
    for name, text in RUN_FLAGS.items():
        lines += [f"  --{name}", f"      {text}"]
    lines += ["  --verbose", "      show TensorFlow's start-up log lines", ""]
    return "\n".join(lines)


def _parse(argv: list[str]) -> RunConfig:
    from absl import flags

    values = flags.FlagValues()
    define_flags(values)
    flags.DEFINE_boolean("verbose", False, "Show TensorFlow's start-up log.", flag_values=values)
    try:
        values([PROG, *argv])
    except flags.UnrecognizedFlagError as err:
        name = err.flagname.lstrip("-").split("=")[0]
        hint = HINTS.get(name)
        known = [n for n, *_ in flag_fields()] + list(RUN_FLAGS) + ["preset", "verbose"]
        match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        suggestion = f"; use {hint}" if hint else f"; did you mean --{match[0]}?" if match else ""
        raise UsageError(f"unknown flag --{name}{suggestion} (see --help)") from None
    except flags.Error as err:
        raise UsageError(str(err).splitlines()[0]) from None
    try:
        return config_from_flags(values)
    except ValueError as err:
        raise UsageError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    """Runs the trainer from command-line arguments (without the program name); returns the
    exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" not in argv:
        quiet_tensorflow_import()
    if any(arg in ("-h", "--help", "--helpfull", "-help") for arg in argv):
        print(help_text(_preset_of(argv)))
        return 0
    try:
        config = _parse(argv)
        check_config(config)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    from cellkeras.io.errors import BadInputError, ImageError
    from trainer.task import run

    try:
        run(config, verbose="auto" if sys.stdout.isatty() else 2)
    except (BadInputError, ImageError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
