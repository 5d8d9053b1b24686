"""Writes that a kill cannot leave half done: a file or a folder appears whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | Path, write: Callable[[str], object]) -> Path:
    """Calls `write(temporary)` on a fresh file beside `path`, then renames it into place.

    The temporary name ends with `path`'s own name, so writers that insist on a suffix
    (`.weights.h5`, `.npz`) accept it, and it is unique per call (`mkstemp`): two processes
    writing the same file, PID 1 in two containers included, never share a temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=".partial-", suffix=f"-{path.name}", dir=path.parent
    )
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def replace_folder(new: Path, target: Path) -> None:
    """Renames `new` to `target`, replacing whatever `target` was, with no half-written state."""
    if not target.exists():
        new.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()
