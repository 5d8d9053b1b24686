"""Run configuration: dataclasses built once in `trainer.task` and passed down, plus presets.

A preset is a plain dict of overrides, applied before the flags the user gave:

    python -m trainer.task                    # "default": synthetic cells, a few minutes on CPU
    python -m trainer.task --preset=smoke     # seconds: the whole path on tiny data
    python -m trainer.task --preset=embryo    # the real C. elegans stage data (devolearn video)
    python -m trainer.task --preset=nuclei    # ndev nuclei patches: the `cellkeras detect` model
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

# The fixed vocabularies of some fields (the trainer's flags refuse anything else).
MIXED_PRECISION_MODES = ("auto", "off", "float16", "bfloat16")
DISTRIBUTIONS = ("auto", "one", "mirrored", "multi_worker")
TRAINING_LOOPS = ("auto", "fit", "custom")
LATER_STAGE_MODES = ("all", "head")
TRAINING_MODES = ("joint", "stagewise")
ORDINAL_MODES = ("off", "time")


@dataclasses.dataclass
class DataConfig:
    """Where the images come from and how they are split and normalized.

    Every field is also a trainer flag of the same name (`trainer.flags` generates them from
    these docs, so a field without one fails a test).

    Three splits: the test set is the source's TEST split (`data_dir/TEST/...`), or the
    `test_*` inputs, or `test_fraction` carved from the images; it is scored once, at the end.
    Validation (`best.keras`, the per-stage accuracies) is the source's VAL split, else
    `eval_tfrecords`, else `val_fraction` carved from the training images
    (`cellkeras.data.splits.three_way_split`: time blocks with guard gaps for frames).

    Attributes:
        source: data source: auto (chosen from the fields given: data_dir a class-folder tree,
            labels_csv a CSV, tfrecords TFRecord files, none of them the synthetic cells),
            synthetic, folders, csv, tfrecords, embryo or nuclei.
        data_dir: class-folder tree root/<class>/<image>, or root/<split>/<class>/<image>.
        labels_csv: CSV of filename,label rows (label a class name or index).
        image_root: folder the CSV's filenames are relative to.
        tfrecords: TFRecord files of tf.train.Example (glob, folder or comma-separated).
        eval_tfrecords: TFRecord files for validation (instead of a split of the training data).
        test_dir: test images root/<class>/<image> with the training classes; scored once, at
            the end, and never used for any choice.
        test_labels_csv: test CSV of filename,label rows (files under image_root).
        test_tfrecords: test TFRecord files, scored once at the end.
        nuclei_sources: labelled nuclei the nuclei source cuts its patches from,
            comma-separated: ndev, laptrack, synthetic (cellkeras.data.nuclei_sources).
        synthetic_images: number of synthetic images.
        synthetic_size: side of the synthetic images in pixels.
        synthetic_difficulty: how hard the synthetic classes are to tell apart (1 = default).
        channels: image channels: 1 grey, 3 RGB, or comma-separated channel indices of a
            multichannel image such as 0,2 (1, for one); default as stored.
        normalization: auto (percentile for 16-bit images that use under 1/16 of their
            range, such as 12-bit camera data, else range; the run's config.json holds the
            choice), range (integers divided by their type's maximum), percentile (per-image
            1st-99.8th percentile stretch) or frame_percentile (the same stretch over the
            frame a patch was cut from: the nuclei patches; what detection then applies to a
            whole image once).
        val_fraction: validation share carved from the training images (when the source has
            no VAL split).
        val_blocks: where ordered images' (video frames') validation blocks lie in each class's
            time range: spread (one drawn in each stretch of it) or edges (its last and first
            blocks: frames before or after every training frame, as new recordings are).
        test_fraction: test share carved from the images when no test set is given (0: none).
        balance: class balancing in tf.data: oversample, or none.
        skip_bad_images: leave unreadable images out (listed in skipped.json) instead of
            stopping.
    """

    source: str = "auto"
    data_dir: str | None = None
    labels_csv: str | None = None
    image_root: str | None = None
    tfrecords: str | None = None
    eval_tfrecords: str | None = None
    test_dir: str | None = None
    test_labels_csv: str | None = None
    test_tfrecords: str | None = None
    nuclei_sources: str = "ndev"
    synthetic_images: int = 3000
    synthetic_size: int = 96
    synthetic_difficulty: float = 1.0
    channels: int | str | None = None
    normalization: str = "auto"
    val_fraction: float = 0.2
    # "edges": validated on each stage's first and last frames, the merge's stacking sees which
    # branch extrapolates in time: the merged model then reached its best branch on all four
    # real sets (two of four with "spread") at the same mean accuracy, judged on their TEST
    # blocks; on two sets checked afterwards, one better and one worse (docs/BENCHMARKS.md
    # "Real data").
    val_blocks: str = "edges"
    test_fraction: float = 0.0
    balance: str | None = None
    skip_bad_images: bool = False


@dataclasses.dataclass
class TrainConfig:
    """The model and how it is trained.

    Attributes:
        model: registered model name (cellkeras.models.list_models()).
        augment: augmentation preset (cellkeras.augment.PRESETS).
        stage_strength: augmentation strength per schedule stage, START:END: START at the
            smallest stage size, END at the final one, linear in the image side between
            (EfficientNetV2's progressive learning: weak on small images, strong on large);
            1 is the preset's own setting, and a one-size schedule trains at END.
        schedule: progressive schedule SIZE:EPOCHS[,SIZE:EPOCHS...], SIZE as 64 or 64x96;
            None (auto): 48:3,64:3,96:2 at the images' aspect, each stage keeping its pixel
            count and none above the images' own size, its epochs stretched to min_steps
            (cellkeras.training.auto_schedule).
        min_steps: the fewest optimizer steps of an auto schedule (no schedule and no
            steps_per_epoch given): small sets get more epochs; 0 turns the rule off.
        warmup_fraction: share of each optimizer's steps over which the learning rate rises
            linearly from 0 to its peak before the cosine decay.
        batch_size: per-replica batch size.
        learning_rate: peak learning rate (cosine decay over the run).
        weight_decay: AdamW's decoupled weight decay (each step shrinks the weights by
            learning_rate x weight_decay of themselves); 0 is plain Adam.
        label_smoothing: each one-hot training label softened towards uniform by this much
            (keras.losses.CategoricalCrossentropy); 0 is the plain cross-entropy.
        ordinal: off (a dense head, one direction per class) or time: for classes that are
            stages of a time-lapse (the frame manifest orders them, `time_ranks`), every head
            places each image at one position along that order and the stages follow each
            other along it (`cellkeras.models.layers.OrdinalLogits`).
        branch_loss_weight: weight of each branch's auxiliary loss: it gives every branch a
            trained head of its own, so per-branch accuracy means something (0 trains the
            merged output alone).
        training_mode: joint (branches and merge head together, every stage) or stagewise
            (the seed's recipe: each branch alone through the schedule, then the merge head on
            the frozen branches for head_epochs at the final size).
        head_epochs: stage-wise training: epochs of the merge head at the final size.
        later_stages: joint training after the first stage: all trains the whole model on;
            head freezes the branches and retrains the merge head (the seed's variant).
        mixed_precision: dtype policy: auto (mixed_float16 on a GPU with tensor cores, float32
            elsewhere), off, float16 or bfloat16.
        jit_compile: XLA for the training step (trainer.xla.resolve_jit_compile): auto is
            Keras' choice (on with a GPU, off on CPU and under tf.distribute), on forces it,
            off turns it off.
        distribution: tf.distribute strategy: auto, one, mirrored, or multi_worker (the cluster
            from TF_CONFIG).
        training_loop: auto (Keras fit; under multi_worker, where Keras 3's fit fails,
            keras-team/keras#20585, the custom loop in trainer.custom_loop), custom (that loop
            on one machine too, to check it against fit) or fit (refuses multi_worker).
        seed: random seed (data order, split, weights, augmentation).
        steps_per_epoch: fixed training steps per epoch (the batches repeat as needed); None
            is one pass over the images. TFX's train_steps maps here.
        validation_steps: validation batches per epoch; None is every validation image.
        deterministic: TensorFlow's op determinism for the run (trainer.runtime.op_determinism):
            two runs with the same seed give the same weights and metrics on one machine, at
            about 1.03x the time on CPU (docs/BENCHMARKS.md "Determinism"). On by default, so
            a rerun of a command gives its result again (--nodeterministic for the last bit of
            speed). Data order and augmentation are seeded per epoch either way.
    """

    model: str = "parallel_small"
    # "none": the augmentation study's choice on validation accuracy over three sets and three
    # seeds (cellkeras.augment.study.choose_default; docs/BENCHMARKS.md "Augmentation study").
    augment: str = "none"
    stage_strength: str = "0.5:1"
    schedule: str | None = None
    # 240 steps: ~200 training frames (7 batches an epoch) get 35 epochs instead of 8, enough
    # to converge from scratch (docs/BENCHMARKS.md "Real data"); the synthetic main job's 600
    # steps are already above it, so it runs as before.
    min_steps: int = 240
    warmup_fraction: float = 0.05
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    ordinal: str = "off"
    branch_loss_weight: float = 0.3
    training_mode: str = "joint"
    head_epochs: int = 3
    later_stages: str = "all"
    mixed_precision: str = "auto"
    jit_compile: str = "auto"
    distribution: str = "auto"
    training_loop: str = "auto"
    seed: int = 0
    steps_per_epoch: int | None = None
    validation_steps: int | None = None
    deterministic: bool = True


@dataclasses.dataclass
class RunConfig:
    """Everything one run needs; saved as `config.json` in the run folder."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    preset: str = "default"
    output_dir: str = ""
    export_dir: str | None = None
    # Where a non-chief worker of a multi-worker run writes its copy of the run (checkpoints,
    # model): default `<output_dir>/.workers/<task>-<index>`, removed when the run ends; a
    # folder given here is kept (to inspect or compare a worker's weights).
    worker_dir: str | None = None
    # False writes the SavedModel at `export_dir` itself instead of `export_dir/<version>/`
    # (TFX's `serving_model_dir`, which its Evaluator and Pusher read as the model).
    export_versioned: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


# Overrides as "section.field": value. Docstring-level cost notes are for a 2-core CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "smoke": {
        "data.synthetic_images": 96,
        "data.synthetic_size": 32,
        "train.schedule": "16:1,24:1",
        "train.batch_size": 16,
    },
    # At the video's 2:3 aspect and one size: on this small set, smaller first stages cost
    # accuracy (scripts/bench_progressive.py: 0.81 at 64x96:8 against 0.70 progressive).
    "embryo": {
        "data.source": "embryo",
        "data.channels": 1,
        "train.schedule": "64x96:8",
        "train.batch_size": 16,
    },
    # Nucleus-vs-background 32 px patches of three labelled sources (the ndev scratch assay, the
    # laptrack time-lapse, synthetic nuclei), each resized to 12 px nuclei; the validation split
    # holds out whole frames. Patch labels only: the classifier that
    # `cellkeras detect` turns into nucleus boxes by sliding it over whole images. Each frame is
    # percentile-stretched before its patches are cut ("frame_percentile"), as detection
    # stretches a whole image once, and the model has no zero padding (`valid_narrow`), so
    # detection evaluates its trunk once per image and gets exactly the window classifier's heat
    # (0.28-0.35 s a 512x512 image on 2 cores against 2.1 s window by window,
    # scripts/bench_detect.py). Leave-one-source-out F1 was level with the previous
    # per-patch-percentile parallel_small (scripts/experiment_detection.py --parts loso;
    # docs/BENCHMARKS.md). About 40 s on a 2-core CPU.
    "nuclei": {
        "data.source": "nuclei",
        "data.nuclei_sources": "ndev,laptrack,synthetic",
        "data.channels": 1,
        "data.normalization": "frame_percentile",
        "train.model": "valid_narrow",
        "train.schedule": "32:10",
        "train.batch_size": 32,
    },
}


def build_config(preset: str = "default", overrides: dict[str, Any] | None = None) -> RunConfig:
    """A `RunConfig` from a preset, then `overrides` ("section.field" or top-level keys).

    Raises:
        ValueError: for an unknown preset or field; the message lists the known ones.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    config = RunConfig(preset=preset)
    for key, value in {**PRESETS[preset], **(overrides or {})}.items():
        section, _, field = key.rpartition(".")
        target = getattr(config, section) if section else config
        if section not in ("", "data", "train") or not hasattr(target, field):
            known = [f"data.{f.name}" for f in dataclasses.fields(DataConfig)]
            known += [f"train.{f.name}" for f in dataclasses.fields(TrainConfig)]
            raise ValueError(f"unknown config field {key!r}; known: {', '.join(known)}")
        setattr(target, field, value)
    if not config.output_dir:
        config.output_dir = str(Path("runs") / preset)
    return config
