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
        return f"{format_size(self.size)}:{self.epochs}"


def format_size(size: tuple[int, int]) -> str:
    """A stage size as the schedule writes it: "96" when square, else "HEIGHTxWIDTH"."""
    height, width = size
    return str(height) if height == width else f"{height}x{width}"


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

# A branch named like a marker would be skipped, or trained as the whole model.
PHASE_MARKERS = (HEAD, JOINT, JOINT_HEAD)


@dataclasses.dataclass(frozen=True)
class Phase:
    """Epochs trained with one compiled model: `part` is `JOINT` or `JOINT_HEAD` (joint
    training), or what stage-wise training fits (a branch name, or `HEAD`); `stage_index` is
    the schedule stage whose size and augmentation strength it uses."""

    part: str
    stage_index: int
    stage: Stage

    @property
    def is_joint(self) -> bool:
        """Whether the phase belongs to joint training (one optimizer over all its phases)."""
        return self.part in (JOINT, JOINT_HEAD)

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


# The schedule a run gets when the user names none: its sizes follow the images (aspect and
# native size, `fit_to_images`) and its length the data (`stretch_to_steps`).
DEFAULT_SCHEDULE = "48:3,64:3,96:2"
# Stage sides are rounded to this: two or three 2x poolings divide them evenly.
SIDE_MULTIPLE = 8


def _round_side(value: float) -> int:
    return max(MIN_STAGE_SIZE, SIDE_MULTIPLE * round(value / SIDE_MULTIPLE))


def fit_to_images(
    stages: list[Stage], image_size: tuple[int, int], min_side: int = 1
) -> list[Stage]:
    """Square stages turned to the images' aspect, each keeping its pixel count (so its cost),
    and shrunk as a whole where the last stage would upsample the images.

    No stage's short side goes below `min_side`, the model's smallest input
    (`cellkeras.models.registry.model_min_side`: 32 px for a keras.applications backbone):
    such a stage is enlarged to it at the same aspect.

    `image_size` is the typical (height, width) of the images: a 128x188 frame turns a 96 px
    stage into 80x120 rather than squashing it to 96x96, and 32 px patches train at most at
    32 px instead of being blown up to 96 px (the earlier stages shrink in proportion).
    Non-square stages (the user's own) are left as they are.
    """
    if any(stage.size[0] != stage.size[1] for stage in stages):
        return list(stages)
    height, width = image_size
    aspect = width / height
    largest = max(stage.size[0] for stage in stages)
    shrink = min(1.0, (height * width) ** 0.5 / largest)
    fitted = []
    for stage in stages:
        side = stage.size[0] * shrink
        size = (side / aspect**0.5, side * aspect**0.5)
        grow = max(1.0, min_side / min(size))
        size = tuple(max(min_side, _round_side(v * grow)) for v in size)
        if fitted and fitted[-1].size == size:  # stages that min_side made alike are one
            fitted[-1] = Stage(size, fitted[-1].epochs + stage.epochs)
        else:
            fitted.append(Stage(size, stage.epochs))
    return fitted


def stretch_to_steps(stages: list[Stage], steps_per_epoch: int, min_steps: int) -> list[Stage]:
    """The same stages with their epochs scaled up, in proportion, until the run takes at
    least `min_steps` optimizer steps (unchanged when it already does, or `min_steps` <= 0)."""
    have = total_epochs(stages)
    need = -(-max(0, min_steps) // max(1, steps_per_epoch))  # ceil
    if need <= have:
        return list(stages)
    # Largest remainder: the stages' shares of `need` epochs, each at least its own count.
    exact = [stage.epochs * need / have for stage in stages]
    epochs = [int(share) for share in exact]
    by_remainder = sorted(range(len(stages)), key=lambda i: epochs[i] - exact[i])
    for i in by_remainder[: need - sum(epochs)]:
        epochs[i] += 1
    return [Stage(s.size, max(s.epochs, e)) for s, e in zip(stages, epochs, strict=True)]


def auto_schedule(
    image_size: tuple[int, int],
    steps_per_epoch: int,
    min_steps: int,
    base: str = DEFAULT_SCHEDULE,
    min_side: int = 1,
) -> list[Stage]:
    """The schedule of a run that names none: `base` fitted to the images (no side below
    `min_side`), then stretched to `min_steps` steps."""
    return stretch_to_steps(
        fit_to_images(parse_schedule(base), image_size, min_side), steps_per_epoch, min_steps
    )
