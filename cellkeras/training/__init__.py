"""Training: progressive schedules, joint and stage-wise training of parallel models.

```
stages = parse_schedule("48:3,64:3,96:2")
history = fit_joint(model, train_for_size, val_for_size, stages)
```

The trainer (`python -m trainer.task`) and scripts train through these same functions.

Names are imported on first use, so parsing a schedule does not load TensorFlow.
"""

from cellkeras._lazy import lazy_exports

_EXPORTS = {
    "AliasMergedMetrics": "cellkeras.training.trainers",
    "HEAD": "cellkeras.training.schedule",
    "JOINT": "cellkeras.training.schedule",
    "JOINT_HEAD": "cellkeras.training.schedule",
    "MIN_STAGE_SIZE": "cellkeras.training.schedule",
    "Phase": "cellkeras.training.schedule",
    "PhaseRunner": "cellkeras.training.loop",
    "Stage": "cellkeras.training.schedule",
    "adam_with_cosine_decay": "cellkeras.training.loop",
    "compile_classifier": "cellkeras.training.trainers",
    "fit_joint": "cellkeras.training.loop",
    "fit_stagewise": "cellkeras.training.loop",
    "format_schedule": "cellkeras.training.schedule",
    "joint_trainer": "cellkeras.training.trainers",
    "keras_fit": "cellkeras.training.loop",
    "parse_schedule": "cellkeras.training.schedule",
    "plan_phases": "cellkeras.training.schedule",
    "set_trainable": "cellkeras.training.trainers",
    "stagewise_parts": "cellkeras.training.trainers",
    "stagewise_trainer": "cellkeras.training.trainers",
    "total_epochs": "cellkeras.training.schedule",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
