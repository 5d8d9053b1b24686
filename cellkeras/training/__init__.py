"""Training: progressive schedules, joint and stage-wise training of parallel models.

```
stages = parse_schedule("48:3,64:3,96:2")
history = fit_joint(model, train_for_size, val_for_size, stages)
```

The trainer (`python -m trainer.task`) and scripts train through these same functions.
"""

from cellkeras.training.loop import (
    PhaseRunner,
    adam_with_cosine_decay,
    fit_joint,
    fit_stagewise,
    keras_fit,
)
from cellkeras.training.schedule import (
    JOINT,
    JOINT_HEAD,
    MIN_STAGE_SIZE,
    Phase,
    Stage,
    format_schedule,
    parse_schedule,
    plan_phases,
    total_epochs,
)
from cellkeras.training.trainers import (
    HEAD,
    AliasMergedMetrics,
    compile_classifier,
    joint_trainer,
    set_trainable,
    stagewise_parts,
    stagewise_trainer,
)

__all__ = [
    "HEAD",
    "JOINT",
    "JOINT_HEAD",
    "MIN_STAGE_SIZE",
    "AliasMergedMetrics",
    "Phase",
    "PhaseRunner",
    "Stage",
    "adam_with_cosine_decay",
    "compile_classifier",
    "fit_joint",
    "fit_stagewise",
    "format_schedule",
    "joint_trainer",
    "keras_fit",
    "parse_schedule",
    "plan_phases",
    "set_trainable",
    "stagewise_parts",
    "stagewise_trainer",
    "total_epochs",
]
