"""Labelled time ranges of a video: the segment spec and its parser.

Segment syntax
--------------
A spec is a comma-separated list of ``CLASS=START:END`` items::

    gastrula=32:82,comma=116:126,fold=140:187        # bare numbers: the `unit` argument
    gastrula=32s:82s,comma=812f:882f                 # per-number suffix: s = seconds, f = frames

* Ranges are half-open, ``START <= t < END``, in both units. In frames, ``0:10`` is frames 0-9;
  in seconds, frame ``i`` sits at ``i / fps`` seconds.
* Frame numbers start at 0 and must be integers; seconds may be fractional.
* A suffix applies to its own number; the two ends of one range must share a unit.
* A class may have several ranges (``comma=116:126,comma=300:310``); classes are numbered in the
  order of their first appearance.
* Ranges may not overlap, and ``START`` must be below ``END``.

A `Mapping` works too: ``{"gastrula": "32:82", "comma": [(116, 126), (300, 310)]}``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence

UNITS = ("seconds", "frames")
_SUFFIX_UNITS = {"s": "seconds", "f": "frames"}
_NUMBER = re.compile(r"^\s*(?P<value>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<suffix>[sf]?)\s*$")
# Class names end up as folder names, so keep them to characters every filesystem accepts.
CLASS_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@dataclasses.dataclass(frozen=True)
class Segment:
    """One labelled, half-open time range of a video.

    Attributes:
        label: class name.
        start: first time (inclusive), in `unit`.
        end: end time (exclusive), in `unit`.
        unit: "seconds" or "frames".
    """

    label: str
    start: float
    end: float
    unit: str

    def frame_range(self, fps: float) -> tuple[int, int]:
        """The half-open frame-index range `[first, stop)` this segment covers at `fps`."""
        if self.unit == "frames":
            return int(self.start), int(self.end)
        # A tiny tolerance keeps "2.0 s at 5 fps" on frame 10 despite 2.0 * 5 = 9.999999...
        first = math.ceil(self.start * fps - 1e-6)
        stop = math.ceil(self.end * fps - 1e-6)
        return first, stop

    def describe(self) -> str:
        suffix = "s" if self.unit == "seconds" else "f"
        return f"{self.label}={self.start:g}{suffix}:{self.end:g}{suffix}"


def parse_segments(spec: str | Mapping | Sequence[Segment], unit: str = "seconds") -> list[Segment]:
    """Parses a segment spec into `Segment`s (syntax in the module docstring).

    Args:
        spec: ``"CLASS=START:END,..."``, a mapping ``{class: "START:END" | (start, end) | [those]}``,
            or already-parsed `Segment`s (checked and returned).
        unit: the unit of numbers without an ``s``/``f`` suffix: "seconds" or "frames".

    Returns:
        The segments in spec order, each with its unit resolved.

    Raises:
        ValueError: naming the offending segment, for bad syntax, an unknown unit, mixed units in
            one range, non-integer frame numbers, ``START >= END`` or overlapping ranges.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}.")
    segments: list[Segment] = []
    for label, text, raw in _spec_items(spec):
        segments.append(_parse_one(label, text, raw, unit))
    if not segments:
        raise ValueError(f"no segments in {spec!r}; expected e.g. 'gastrula=32:82,comma=116:126'.")
    # Ranges in different units can only be compared once fps is known (load_video_segments).
    for u in UNITS:
        _check_overlaps([s for s in segments if s.unit == u], key=lambda s: (s.start, s.end))
    return segments


def _spec_items(spec) -> Iterable[tuple[str, object, str]]:
    """Yields (label, range, raw text for messages) from any accepted spec form."""
    if isinstance(spec, str):
        for raw in spec.split(","):
            if not raw.strip():
                raise ValueError(f"empty segment in {spec!r} (stray comma?).")
            if raw.count("=") != 1:
                raise ValueError(f"segment {raw.strip()!r}: expected CLASS=START:END.")
            label, rng = raw.split("=")
            yield label.strip(), rng, raw.strip()
    elif isinstance(spec, Mapping):
        for label, value in spec.items():
            ranges = value if isinstance(value, list) else [value]
            for rng in ranges:
                yield str(label).strip(), rng, f"{label}={rng}"
    else:
        for seg in spec:
            if not isinstance(seg, Segment):
                raise ValueError(f"expected a spec string, a mapping or Segments, got {seg!r}.")
            yield seg.label, seg, seg.describe()


def _parse_one(label: str, rng: object, raw: str, default_unit: str) -> Segment:
    if not CLASS_NAME.match(label):
        raise ValueError(
            f"segment {raw!r}: class name {label!r} must be letters, digits, '_', '.', '+' or '-' "
            "(it becomes a folder name)."
        )
    if isinstance(rng, Segment):
        start, end, unit = rng.start, rng.end, rng.unit
        if unit not in UNITS:
            raise ValueError(f"segment {raw!r}: unit must be one of {UNITS}, got {unit!r}.")
    elif isinstance(rng, str):
        parts = rng.split(":")
        if len(parts) != 2:
            raise ValueError(
                f"segment {raw!r}: expected START:END, e.g. 32:82, 32s:82s, 100f:180f."
            )
        ends = []
        for part in parts:
            m = _NUMBER.match(part)
            if not m:
                raise ValueError(
                    f"segment {raw!r}: {part.strip()!r} is not a number with an optional "
                    "'s' (seconds) or 'f' (frames) suffix."
                )
            ends.append((float(m["value"]), _SUFFIX_UNITS.get(m["suffix"])))
        units = {u for _, u in ends if u is not None}
        if len(units) > 1:
            raise ValueError(f"segment {raw!r}: both ends of a range must use the same unit.")
        unit = units.pop() if units else default_unit
        start, end = ends[0][0], ends[1][0]
    elif isinstance(rng, Sequence) and len(rng) == 2:
        try:
            start, end = float(rng[0]), float(rng[1])
        except (TypeError, ValueError):
            raise ValueError(f"segment {raw!r}: start and end must be numbers.") from None
        unit = default_unit
    else:
        raise ValueError(f"segment {raw!r}: expected 'START:END' or a (start, end) pair.")
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        raise ValueError(f"segment {raw!r}: times must be finite and >= 0.")
    if unit == "frames" and (start != int(start) or end != int(end)):
        raise ValueError(f"segment {raw!r}: frame numbers must be integers.")
    if start >= end:
        raise ValueError(f"segment {raw!r}: start {start:g} must be below end {end:g}.")
    return Segment(label=label, start=start, end=end, unit=unit)


def _check_overlaps(segments: Sequence[Segment], key) -> None:
    ordered = sorted(segments, key=key)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if key(b)[0] < key(a)[1]:
            raise ValueError(f"segments {a.describe()!r} and {b.describe()!r} overlap.")
