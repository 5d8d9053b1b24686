"""Progressive image-size schedules: `SIZE:EPOCHS[,SIZE:EPOCHS...]`.

Small images first, then larger ones, with the same model training on (its layers are
size-agnostic). SIZE is `64` (square) or `64x96` (height x width).
"""

from __future__ import annotations

import dataclasses

from cellkeras.io.images import parse_image_size

# Below this a model with two poolings sees a few pixels; the data layer's minimum side too.
MIN_STAGE_SIZE = 8


@dataclasses.dataclass(frozen=True)
class Stage:
    """One schedule stage: train `epochs` epochs on images of `size` (height, width)."""

    size: tuple[int, int]
    epochs: int

    def __str__(self) -> str:
        height, width = self.size
        shown = str(height) if height == width else f"{height}x{width}"
        return f"{shown}:{self.epochs}"


def parse_schedule(spec: str) -> list[Stage]:
    """Parses `SIZE:EPOCHS[,SIZE:EPOCHS...]`, e.g. `"32:2,64:3"`.

    Raises:
        ValueError: naming the bad stage: missing parts, non-integers, sizes under
            `MIN_STAGE_SIZE`, epochs under 1, or an empty schedule.
    """
    stages = []
    for number, part in enumerate((p.strip() for p in spec.split(",")), start=1):
        if not part:
            continue
        size_text, sep, epochs_text = part.partition(":")
        if not sep or not epochs_text.strip().isdigit():
            raise ValueError(
                f"schedule stage {number} {part!r} is not SIZE:EPOCHS (e.g. 64:3 or 64x96:3)"
            )
        try:
            size = parse_image_size(size_text.strip())
        except ValueError as err:
            raise ValueError(f"schedule stage {number} {part!r}: {err}") from None
        epochs = int(epochs_text)
        if min(size) < MIN_STAGE_SIZE:
            raise ValueError(
                f"schedule stage {number} {part!r}: size under the minimum {MIN_STAGE_SIZE}"
            )
        if epochs < 1:
            raise ValueError(f"schedule stage {number} {part!r}: epochs must be at least 1")
        stages.append(Stage(size, epochs))
    if not stages:
        raise ValueError(f"schedule {spec!r} has no stages")
    return stages


def format_schedule(stages: list[Stage]) -> str:
    return ",".join(str(stage) for stage in stages)


def total_epochs(stages: list[Stage]) -> int:
    return sum(stage.epochs for stage in stages)


# What stage-wise training fits after the branches: the merge head on the frozen branches.
HEAD = "head"

# Phase parts of joint training: the whole model, or (with `--later_stages=head`) its merge
# head on frozen branches, the optimizer carrying on between the two.
JOINT = "all"
JOINT_HEAD = "all, head only"


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs trained with one compiled model: `part` is `JOINT` or `JOINT_HEAD` (joint
    training), or what stage-wise training fits (a branch name, or `HEAD`); `stage_index` is
    the schedule stage whose size and augmentation strength it uses."""

    part: str
    stage_index: int
    stage: Stage

    def __str__(self) -> str:
        return str(self.stage) if self.part == JOINT else f"{self.part} {self.stage}"


def plan_phases(
    stages: list[Stage],
    stagewise_parts: list[str] | None = None,
    head_epochs: int = 0,
    later_stages_head_only: bool = False,
) -> list[Phase]:
    """The run's phases, in order.

    Joint training (`stagewise_parts` None): one phase per stage, the whole model (or, with
    `later_stages_head_only`, the head alone after the first stage). Stage-wise: the whole
    schedule for each branch in turn, then the head (when `HEAD` is among the parts) for
    `head_epochs` at the final size.
    """
    if stagewise_parts is None:
        return [
            Phase(JOINT_HEAD if index and later_stages_head_only else JOINT, index, stage)
            for index, stage in enumerate(stages)
        ]
    branches = [part for part in stagewise_parts if part != HEAD]
    phases = [Phase(part, i, stage) for part in branches for i, stage in enumerate(stages)]
    if HEAD in stagewise_parts:
        final = len(stages) - 1
        phases.append(Phase(HEAD, final, Stage(stages[final].size, head_epochs)))
    return phases
