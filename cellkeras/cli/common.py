"""What every `cellkeras` command does alike: a failure is one line on stderr and exit status 1."""

from __future__ import annotations

import sys


def fail(command: str, err: Exception | str) -> int:
    """Prints `cellkeras COMMAND: error: ...` on stderr and returns the exit status 1."""
    print(f"cellkeras {command}: error: {err}", file=sys.stderr)
    return 1
