"""A stand-in for TFX Trainer's `fn_args` (TFX does not install on these machines)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class FnArgs:
    """The fields of TFX Trainer's `fn_args` that `run_fn` reads (TFX does not install here)."""

    train_files: list[str]
    eval_files: list[str]
    serving_model_dir: str
    model_run_dir: str
    train_steps: int | None = None
    eval_steps: int | None = None
    schema_path: str | None = None
    hyperparameters: dict[str, Any] | None = None
    custom_config: dict[str, Any] | None = None
    data_accessor: Any = None
