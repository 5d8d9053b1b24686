"""Packages whose public names load their module on first use.

TensorFlow takes seconds to import; `cellkeras --help`, the video tools and argument parsing
should not pay for it just because a package `__init__` re-exports a Keras layer.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """`(__getattr__, __dir__, __all__)` for `package`, each name imported from its module on use.

    Args:
        package: the package's dotted name, for error messages.
        exports: public name -> dotted module that defines it.
    """
    names = sorted(exports)

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names
