"""A quiet start: TensorFlow's native start-up lines off the terminal.

TensorFlow 2.21 writes several lines to stderr from C++ while it loads (oneDNN notes, "Could not
find cuda drivers", "failed call to cuInit" on a CPU machine), before its own log settings are
read, so `TF_CPP_MIN_LOG_LEVEL` cannot silence them (tensorflow/tensorflow#100442). They read as
failures to a new user. `quiet_tensorflow_import()` makes the first `import tensorflow`, whoever
does it, run with the process's stderr file descriptor pointed at /dev/null; Python exceptions
still propagate, and everything after the import prints as usual.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Points file descriptor 2 at /dev/null for the duration (C++ writes go there too)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _Loaded(importlib.abc.Loader):
    """Hands the import system a module that is already in `sys.modules`."""

    def __init__(self, module):
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module) -> None:
        return None


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # the import below goes through the normal finders
        # 3: errors too; TensorFlow raises real ones as Python exceptions, and the one a CPU
        # machine always logs ("failed call to cuInit") is not one.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with native_stderr_silenced():
            module = importlib.import_module("tensorflow")
        return importlib.util.spec_from_loader(name, _Loaded(module), origin=module.__file__)


def quiet_tensorflow_import() -> None:
    """The first `import tensorflow` from now on runs without its native start-up lines."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlow())
