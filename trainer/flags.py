"""The trainer's command-line flags, generated from the config dataclasses and read once.

Every field of `DataConfig` and `TrainConfig` is a flag of the same name, typed from its
annotation, with its help taken from the class docstring's `Attributes:` section, so a setting
cannot exist without a flag (or a flag without its documentation). Flags default to None and
only those given on the command line override the preset (`--preset`), which overrides the
dataclass defaults.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from cellkeras.data.splits import BLOCK_PLACEMENTS
from trainer.config import (
    DISTRIBUTIONS,
    LATER_STAGE_MODES,
    MIXED_PRECISION_MODES,
    ORDINAL_MODES,
    PRESETS,
    TRAINING_LOOPS,
    TRAINING_MODES,
    DataConfig,
    RunConfig,
    TrainConfig,
    build_config,
)
from trainer.xla import JIT_COMPILE_MODES

SECTIONS = {"data": DataConfig, "train": TrainConfig}
# Fields whose values come from a fixed list: the flag refuses anything else before data loads.
CHOICES: dict[str, tuple[str, ...]] = {
    "mixed_precision": MIXED_PRECISION_MODES,
    "jit_compile": JIT_COMPILE_MODES,
    "distribution": DISTRIBUTIONS,
    "training_loop": TRAINING_LOOPS,
    "training_mode": TRAINING_MODES,
    "later_stages": LATER_STAGE_MODES,
    "balance": ("oversample", "none"),
    "val_blocks": BLOCK_PLACEMENTS,
    "ordinal": ORDINAL_MODES,
}
# Run-level settings that are not part of a section.
RUN_FLAGS = {
    "output_dir": "Run folder (default runs/<preset>).",
    "export_dir": "Versioned SavedModel export folder (TF Serving loads it as is).",
    "worker_dir": "multi_worker: a non-chief worker's folder for its copy of the run, kept at "
    "the end (default <output_dir>/.workers/<task>-<index>, removed).",
}


def field_docs(cls: type) -> dict[str, str]:
    """`name: text` of every entry in a dataclass docstring's `Attributes:` section."""
    doc = (cls.__doc__ or "").split("Attributes:", 1)
    if len(doc) < 2:
        return {}
    docs: dict[str, str] = {}
    name = None
    for line in doc[1].splitlines():
        entry = re.match(r"^ {8}([a-z_][a-z0-9_]*): (.*)$", line)
        if entry:
            name = entry.group(1)
            docs[name] = entry.group(2).strip()
        elif name and line.startswith(" " * 12):
            docs[name] += " " + line.strip()
        elif line.strip():
            name = None
    return docs


def _kind(field: dataclasses.Field) -> str:
    annotation = str(field.type).replace(" ", "")
    parts = set(annotation.split("|")) - {"None"}
    if parts == {"bool"}:
        return "boolean"
    if parts == {"int"}:
        return "integer"
    if parts == {"float"}:
        return "float"
    return "string"


def flag_fields() -> list[tuple[str, str, dataclasses.Field, str]]:
    """`(flag name, "section.field", field, help)` for every config field.

    Raises:
        TypeError: a field has no entry in its class's `Attributes:` docs.
    """
    rows = []
    for section, cls in SECTIONS.items():
        docs = field_docs(cls)
        for field in dataclasses.fields(cls):
            if field.name not in docs:
                raise TypeError(
                    f"{cls.__name__}.{field.name} has no entry in the class docstring's "
                    "Attributes: section; the trainer's --help is generated from it"
                )
            rows.append((field.name, f"{section}.{field.name}", field, docs[field.name]))
    return rows


def define_flags(flag_values: Any = None) -> None:
    """Defines `--preset`, one flag per config field, and the run-level flags (into
    `flag_values`, default absl's global `FLAGS`)."""
    from absl import flags

    into = {"flag_values": flags.FLAGS if flag_values is None else flag_values}
    flags.DEFINE_string("preset", "default", f"Named configuration: {', '.join(PRESETS)}.", **into)
    for name, _, field, text in flag_fields():
        default = field.default if field.default is not dataclasses.MISSING else None
        shown = f"{text} (default: {default})"
        kind = _kind(field)
        if name in CHOICES:
            flags.DEFINE_enum(name, None, list(CHOICES[name]), shown, **into)
        else:
            getattr(flags, f"DEFINE_{kind}")(name, None, shown, **into)
    for name, text in RUN_FLAGS.items():
        flags.DEFINE_string(name, None, text, **into)


def _value(field: dataclasses.Field, value: Any) -> Any:
    # "none" is how a user turns off an optional choice (--balance=none) on the command line.
    if isinstance(value, str) and value == "none" and "None" in str(field.type):
        return None
    return value


def config_from_flags(flag_values: Any = None) -> RunConfig:
    """Reads the parsed absl flags (only here) into a `RunConfig`."""
    from absl import flags

    given = flags.FLAGS if flag_values is None else flag_values
    overrides = {
        key: _value(field, given[name].value)
        for name, key, field, _ in flag_fields()
        if given[name].present
    }
    config = build_config(given.preset, overrides)
    for name in RUN_FLAGS:
        if given[name].value:
            setattr(config, name, given[name].value)
    return config
