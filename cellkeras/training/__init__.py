"""Training: progressive schedules, joint and stage-wise training of parallel models.

```
stages = parse_schedule("48:3,64:3,96:2")
history = fit_joint(model, train_for_size, val_for_size, stages)
```

The trainer (`python -m trainer.task`) and scripts train through these same functions.

Names are imported on first use, so parsing a schedule does not load TensorFlow.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "loop": [
            "PhaseRunner",
            "adam_with_cosine_decay",
            "fit_joint",
            "fit_stagewise",
            "keras_fit",
        ],
        "schedule": [
            "DEFAULT_SCHEDULE",
            "HEAD",
            "JOINT",
            "JOINT_HEAD",
            "MIN_STAGE_SIZE",
            "Phase",
            "Stage",
            "auto_schedule",
            "fit_to_images",
            "format_schedule",
            "format_size",
            "parse_schedule",
            "plan_phases",
            "stretch_to_steps",
            "total_epochs",
        ],
        "stacking": ["choose_merge", "fit_stacking", "stacked_merge"],
        "trainers": [
            "AliasMergedMetrics",
            "classification_loss",
            "compile_classifier",
            "joint_trainer",
            "set_trainable",
            "stagewise_parts",
            "stagewise_trainer",
        ],
    },
)
