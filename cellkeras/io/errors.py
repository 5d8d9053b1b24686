"""The errors every layer raises for bad input: they name the file (or row) and the problem."""

from __future__ import annotations

from collections.abc import Sequence


class ImageError(ValueError):
    """An image that cannot be used, with the file (or record) and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class BadInputError(ValueError):
    """Every problem found in a source, listed at once so a user fixes them in one go."""

    def __init__(self, problems: Sequence[tuple[str, str]], hint: str = ""):
        self.problems = list(problems)
        shown = "\n".join(f"  {where}: {why}" for where, why in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(
            f"{len(self.problems)} bad input(s):\n{shown}{more}" + (f"\n{hint}" if hint else "")
        )
