"""`python -m trainer.task`: train a cellkeras model and write a run folder.

    python -m trainer.task                          # synthetic cells, the default schedule
    python -m trainer.task --preset=smoke           # the whole path in seconds
    python -m trainer.task --data_dir=images/ --schedule=64:4,128:2 --model=parallel_three
    TF_CONFIG=... python -m trainer.task --distribution=multi_worker   # on every machine

`run(config)` reads top to bottom: runtime → data → model in the strategy scope → phases →
evaluate → export → report. Its rooms: `trainer.flags` (flags → `RunConfig`), `trainer.runtime`
(strategy, role, precision, XLA, resolved once), `trainer.inputs` (data, splits, batches),
`trainer.checkpoint` (resume), `trainer.report` (report.html, curves), `trainer.tfx`
(`run_fn`), and multi-worker training in `trainer.cluster`, `trainer.sharding` and
`trainer.custom_loop` (docs/DISTRIBUTED.md). The run folder holds `config.json`,
`metrics.json`, `history.csv`, `skipped.json`, `split.csv` (every image's train/val/test
split, `trainer.heldout`), `training_curves.png`, `model.keras`, `best.keras`, `test/` (when
there is a test split) and TensorBoard logs.
"""

from __future__ import annotations

if __name__ == "__main__":
    # `python -m trainer.task` is `python -m trainer.cli`: the command line is checked (and
    # --help answered) there before TensorFlow loads, since the imports below take seconds;
    # it then imports this module as a library. Run as a module, not imported, so that the
    # command line and the library do not import each other.
    import runpy

    runpy.run_module("trainer.cli", run_name="__main__", alter_sys=True)
    raise SystemExit(0)

import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import keras  # noqa: E402

from cellkeras.data.frames import time_order
from cellkeras.data.imageset import ImageSet
from cellkeras.evaluate import evaluate_branches
from cellkeras.models import branch_names, create_model
from cellkeras.serving.export import export_model
from cellkeras.training import (
    HEAD,
    JOINT,
    PhaseRunner,
    adam_with_cosine_decay,
    fit_stacking,
    format_schedule,
    format_size,
    keras_fit,
    plan_phases,
    stacked_merge,
    stagewise_parts,
)
from trainer.checkpoint import RunProgress, trim_history
from trainer.config import LATER_STAGE_MODES, ORDINAL_MODES, TRAINING_MODES, RunConfig
from trainer.custom_loop import fit_stage_distributed
from trainer.heldout import count_splits, evaluate_test, write_split_csv
from trainer.inputs import Inputs, resolve_schedule, stage_strength
from trainer.report import plot_curves, write_report
from trainer.report_examples import examples_for_run
from trainer.runtime import Runtime, op_determinism, resolve_runtime
from trainer.sharding import (
    agree_across_workers,
    gather_predictions_across_workers,
    total_across_workers,
)
from trainer.tfx import config_from_fn_args


def class_ranks(ordinal: str, train_set: ImageSet) -> list[int] | None:
    """The classes' time order for `--ordinal=time` (None for "off").

    Raises:
        ValueError: "time" for images whose frames do not order the classes.
    """
    if ordinal not in ORDINAL_MODES:
        raise ValueError(f"unknown ordinal {ordinal!r}; known: {', '.join(ORDINAL_MODES)}")
    if ordinal == "off":
        return None
    ranks, reason = time_order(train_set)
    if ranks is None:
        raise ValueError(
            "--ordinal=time needs classes that are stages of a time-lapse: a frame manifest "
            "(frames.csv, or a CSV's frame column) in which each class's frames span their "
            f"own stretch of time, in one order in every sequence; the training images have "
            f"{reason}. Use --ordinal=off."
        )
    return ranks


def _stagewise_parts(model: keras.Model, train_cfg) -> list[str] | None:
    """What stage-wise training fits in turn (None for joint training).

    Raises:
        ValueError: an unknown mode, or stage-wise training of a model that is not parallel.
    """
    if train_cfg.training_mode not in TRAINING_MODES:
        raise ValueError(
            f"unknown training_mode {train_cfg.training_mode!r}; known: {TRAINING_MODES}"
        )
    if train_cfg.training_mode == "joint":
        return None
    if len(branch_names(model)) < 2:
        raise ValueError(
            f"training_mode=stagewise trains the branches of a parallel model one by one; "
            f"{train_cfg.model!r} has {len(branch_names(model))} branch (use a parallel_* model)"
        )
    if train_cfg.later_stages != "all":
        raise ValueError(
            "later_stages=head is a joint-training variant; stage-wise training already "
            "trains the head alone after the branches (--head_epochs)"
        )
    return stagewise_parts(model, train_cfg.head_epochs)


def _start_run_folder(config: RunConfig, runtime: Runtime) -> Path:
    out = runtime.folder
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.json")
    if runtime.multi_worker:
        role = runtime.role
        print(
            f"multi-worker: {role.name} of {role.num_workers} workers · "
            + ("chief, writes " if role.is_chief else "writes its copy to ")
            + str(out)
        )
    return out


def _resume(progress: RunProgress, runner: PhaseRunner, runtime: Runtime, config: RunConfig):
    """The first compiled model, with the checkpoint's weights and optimizer state loaded
    into it when the run resumes; `(phase, fit_model, to_labels)` for `PhaseRunner.run`."""
    built = runner.phase_that_saved(progress.epochs_done)
    fit_model, to_labels = runner.compiled_for(built)
    if progress.epochs_done:
        with runtime.scope():  # the optimizer's slots are built here
            progress.restore(fit_model, classifier=runner.model)
        print(
            f"resuming {progress.resumed_from} after epoch {progress.epochs_done} of "
            f"{runner.ends[-1]}"
        )
    if runtime.multi_worker:
        # A worker that resumed from elsewhere (or not at all) would step out of sync with the
        # others' collectives and hang; fail on every worker instead.
        done = agree_across_workers(runtime.strategy, progress.epochs_done)
        if len(set(done)) > 1:
            raise RuntimeError(
                f"workers would resume after different epochs {done}: every worker resumes "
                f"from the chief's checkpoint in {Path(config.output_dir) / 'checkpoint'}, so "
                "--output_dir must be a folder all workers see (shared disk, /gcs/ mount)"
            )
    return built, fit_model, to_labels


def _train(
    runner: PhaseRunner,
    inputs: Inputs,
    progress: RunProgress,
    runtime: Runtime,
    out: Path,
    callbacks: list[keras.callbacks.Callback],
    verbose: int | str,
    start,
    stages: list,
) -> None:
    """Every unfinished phase, checkpointed after each epoch by `progress`."""

    def before(index: int, phase) -> None:
        # best.keras keeps the best classifier, so only phases that fit the whole model's
        # output count (a stage-wise branch's accuracy is not the model's), and only at the
        # final size (BEST_RULE).
        joint = phase.is_joint
        competes = (joint or phase.part == HEAD) and phase.stage.size == stages[-1].size
        progress.watch(
            runner.model if competes else None,
            whole_classifier=None if joint else runner.model,
        )
        record = {
            "size": list(phase.stage.size),
            "epochs": phase.stage.epochs,
            "trains": phase.part,
            "augment_strength": stage_strength(
                stages, phase.stage_index, inputs.config.train.stage_strength
            ),
        }
        progress.begin_stage(index, runner.ends[index], record)  # it records the stage's end

    def after(index: int, phase) -> None:
        kind = "stage" if phase.part == JOINT else "phase"
        if len(progress.stages) <= index:
            raise RuntimeError(
                f"{kind} {phase} ended after epoch {progress.epochs_done} of "
                f"{runner.ends[index]} (a callback stopped training?)"
            )
        done = progress.stages[index]
        print(
            f"{kind} {index + 1}/{len(runner.phases)} {phase}: {done['seconds']:.1f} s · "
            f"val_accuracy {done['val_accuracy']:.4f}"
        )

    def data_for(phase, training: bool, epochs: range):
        subset = inputs.train_set if training else inputs.val_set
        strength = stage_strength(stages, phase.stage_index, inputs.config.train.stage_strength)
        return inputs.dataset(
            subset, phase.stage.size, training, strength, for_fit=True, epochs=epochs
        )

    if progress.epochs_done:
        trim_history(out / "history.csv", progress.epochs_done)
    else:
        (out / "history.csv").unlink(missing_ok=True)
        (out / "best.keras").unlink(missing_ok=True)  # an earlier run's
    runner.run(
        data_for,
        fit=fit_stage_distributed if runtime.custom_loop else keras_fit,
        callbacks=[
            *callbacks,
            keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
            keras.callbacks.TensorBoard(str(out / "logs")),
            progress,  # last: an epoch counts as done only once everything above has run
        ],
        verbose=verbose,
        epochs_done=progress.epochs_done,
        start=start,
        before_phase=before,
        after_phase=after,
    )
    runner.finish()


def _fit_stacking(model, inputs: Inputs, runtime: Runtime, final_size) -> dict[str, Any] | None:
    """A "stacked" merge's weights from the validation images (which no branch trained on);
    None for other merges. Under multi_worker the merge stays the average: each worker may
    hold other validation images, and the workers' weights must agree."""
    if stacked_merge(model) is None or not len(inputs.val_set):
        return None
    if runtime.multi_worker:
        print("stacking: multi_worker run, the merge stays the branches' average")
        return None
    report = fit_stacking(model, inputs.dataset(inputs.val_set, final_size, training=False))
    weights = ", ".join(f"{name} {w:.2f}" for name, w in report["weights"].items())
    scores = report["candidates"][report["chosen"]]
    print(
        f"stacking on {report['images']} validation images: {report['chosen']} ({weights}) · "
        f"val_accuracy {scores['accuracy']:.4f}"
    )
    return report


def _evaluate(model: keras.Model, inputs: Inputs, out: Path, final_size) -> tuple[dict, tuple]:
    """Every branch and the merge on the validation images at the final size; under file
    sharding each worker holds its own part of the data, so all of them are scored. Returns
    the analysis and the scores `(labels, merged probabilities)`, which the report reuses."""
    gather = None
    if inputs.sharding.policy == "file" and not inputs.config.data.eval_tfrecords:
        gather = functools.partial(gather_predictions_across_workers, inputs.runtime.strategy)
    scored: list = []

    def keep(labels, probs):
        if gather is not None:
            labels, probs = gather(labels, probs)
        scored[:] = [labels, probs["merged"]]
        return labels, probs

    analysis = evaluate_branches(
        model,
        inputs.dataset(inputs.val_set, final_size, training=False),
        inputs.images.classes,
        out,
        title=f"validation at {format_size(final_size)} px",
        combine=keep,
    )
    return analysis, tuple(scored)


# Validation accuracy at a smaller stage size measures the model on smaller images than it
# is used at (the export and every evaluation run at the final size), so it is not comparable
# with accuracy at the final size: a small-size epoch could win on a number that says nothing
# about the exported size. Only epochs at the final size compete for best.keras.
BEST_RULE = "the highest validation accuracy among epochs at the final size"


def _metrics(config, runtime, inputs, model, analysis, progress, stages) -> dict[str, Any]:
    final_size = stages[-1].size
    train_images, val_images = len(inputs.train_set), len(inputs.val_set)
    if inputs.sharding.policy == "file":
        train_images = total_across_workers(runtime.strategy, train_images)
        if not config.data.eval_tfrecords:  # else every worker evaluates every eval image
            val_images = total_across_workers(runtime.strategy, val_images)
    return {
        "classes": inputs.images.classes,
        "val_accuracy": analysis["models"]["merged"]["accuracy"],
        "per_branch_val_accuracy": analysis["per_branch_accuracy"],
        "stages": progress.stages,
        "total_seconds": round(sum(s["seconds"] for s in progress.stages), 2),
        "train_images": train_images,
        "val_images": val_images,
        "model": config.train.model,
        "parameters": int(model.count_params()),
        "dtype_policy": runtime.policy,
        # What the training step was compiled with (`--jit_compile` resolved; Keras turns
        # "auto" into False on CPU).
        "jit_compile": bool(getattr(model, "jit_compile", False))
        if runtime.jit_compile == "auto"
        else bool(runtime.jit_compile),
        "replicas": runtime.replicas,
        "workers": runtime.role.num_workers,
        "training_loop": "custom" if runtime.custom_loop else "fit",
        "training_mode": config.train.training_mode,
        "input_sharding": inputs.sharding.to_dict(),
        "final_size": list(final_size),
        "schedule": format_schedule(stages),
        "steps_per_epoch": inputs.steps_per_epoch,
        "splits": count_splits(inputs.split_rows),
        "best": {**progress.best, "rule": BEST_RULE} if progress.best else None,
    }


def _export(model, config, runtime, inputs, out, metrics, stages) -> str:
    """The SavedModel: versioned under `--export_dir`, at `serving_model_dir` itself for TFX;
    a non-chief worker writes its copy into its own folder."""
    version_dir = export_model(
        model,
        config.export_dir if runtime.role.is_chief else out / "export",
        classes=inputs.images.classes,
        image_size=stages[-1].size,
        channels=inputs.channels,
        normalization=config.data.normalization,
        metadata={
            "metrics": metrics,
            "schedule": format_schedule(stages),
        },
        versioned=config.export_versioned,
    )
    return str(version_dir)


def _finish_worker_copy(config: RunConfig, runtime: Runtime, out: Path) -> str:
    """Where the run was written; a non-chief worker's own copy is removed unless kept."""
    if runtime.role.is_chief or config.worker_dir:
        return f"run folder {out}"
    shutil.rmtree(out, ignore_errors=True)
    with contextlib.suppress(OSError):  # the last worker out removes the parent
        out.parent.rmdir()
    return f"the chief writes {config.output_dir}; this worker's copy is removed"


def run(
    config: RunConfig,
    verbose: int | str = "auto",
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> dict[str, Any]:
    """Trains as configured, writes the run folder and returns the metrics dict.

    `callbacks` are added to every stage's `fit` (they see the model being fitted, which with
    auxiliary branch losses wraps the classifier).

    Under `distribution="multi_worker"` every worker runs this same function: stages train
    through `trainer.custom_loop.fit_stage_distributed` instead of `fit`, the chief writes the
    run folder, and each other worker writes its copy into a folder of its own (see
    `RunConfig.worker_dir`) that is removed at the end. Every worker resumes from the chief's
    checkpoint, so `output_dir` must be storage they all see.

    With `train.deterministic`, TensorFlow's op determinism is on while the run lasts (for the
    whole process; see `trainer.runtime.op_determinism`): two runs of one config then give the
    same weights and metrics on the same machine and software.
    """
    with op_determinism(config.train.deterministic):
        return _run(config, verbose, callbacks)


def _run(config: RunConfig, verbose, callbacks) -> dict[str, Any]:
    train_cfg = config.train
    if train_cfg.later_stages not in LATER_STAGE_MODES:
        raise ValueError(
            f"unknown later_stages {train_cfg.later_stages!r}; known: {LATER_STAGE_MODES}"
        )
    runtime = resolve_runtime(train_cfg, config.output_dir, config.worker_dir)
    keras.utils.set_random_seed(train_cfg.seed)
    # Data first: a bad input fails the run before it leaves a folder behind.
    inputs = Inputs.load(config, runtime)
    config = inputs.config  # with what the data decided ("auto" normalization resolved)
    stages = resolve_schedule(config, inputs)
    out = _start_run_folder(config, runtime)
    (out / "skipped.json").write_text(json.dumps(inputs.skipped, indent=2) + "\n")
    write_split_csv(out / "split.csv", inputs.split_rows)
    print(inputs.describe())

    progress = RunProgress.resume_or_start(
        out / "checkpoint",
        config,
        read_from=None if runtime.role.is_chief else Path(config.output_dir) / "checkpoint",
    )
    with runtime.scope():
        model = create_model(
            train_cfg.model,
            inputs.images.num_classes,
            channels=inputs.channels,
            class_ranks=class_ranks(train_cfg.ordinal, inputs.train_set),
        )
    phases = plan_phases(
        stages,
        _stagewise_parts(model, train_cfg),
        train_cfg.head_epochs,
        later_stages_head_only=train_cfg.later_stages == "head",
    )
    runner = PhaseRunner(
        model,
        phases,
        adam_with_cosine_decay(
            train_cfg.learning_rate,
            inputs.steps_per_epoch,
            train_cfg.warmup_fraction,
            train_cfg.weight_decay,
        ),
        branch_loss_weight=train_cfg.branch_loss_weight,
        label_smoothing=train_cfg.label_smoothing,
        jit_compile=runtime.jit_compile,
        scope=runtime.scope,
        # Every epoch's batches in one dataset, each drawn from (seed, epoch): a resumed run
        # does not replay the first epoch's shuffle and augmentation.
        steps_per_epoch=inputs.steps_per_epoch,
    )
    start = _resume(progress, runner, runtime, config)
    print(
        f"model: {train_cfg.model} · {model.count_params():,} parameters · policy "
        f"{runtime.policy} · {runtime.replicas} replica(s) · schedule {format_schedule(stages)}"
        + (
            f" · stage-wise: {', '.join(dict.fromkeys(p.part for p in phases))}"
            if train_cfg.training_mode == "stagewise"
            else ""
        )
        + (" · custom training loop" if runtime.custom_loop else "")
    )
    _train(runner, inputs, progress, runtime, out, list(callbacks or []), verbose, start, stages)

    final_size = stages[-1].size
    stacking = _fit_stacking(model, inputs, runtime, final_size)
    analysis, scored = _evaluate(model, inputs, out, final_size)
    metrics = _metrics(config, runtime, inputs, model, analysis, progress, stages)
    metrics["stacking"] = stacking
    # What the last phase's step was compiled with (`--jit_compile` as Keras resolved it).
    metrics["jit_compile"] = bool(runner.fitted.jit_compile)
    # Scored once, after every decision the run makes (best.keras, the stages) is taken.
    tested = evaluate_test(model, inputs, out, final_size)
    if tested:
        metrics.update(tested[0])
    model.save(out / "model.keras")
    if config.export_dir:
        metrics["export"] = _export(model, config, runtime, inputs, out, metrics, stages)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_curves(out, phases)
    examples = examples_for_run(model, inputs, final_size, scored, out)
    write_report(out, config, metrics, analysis, inputs.skipped, tested and tested[1], examples)
    progress.write_best(model, out / "best.keras")
    progress.finish()
    where = _finish_worker_copy(config, runtime, out)
    accuracy = metrics["per_branch_val_accuracy"]
    test = ""
    if tested:
        low, high = metrics["test_accuracy_ci"]
        test = f" · test_accuracy {metrics['test_accuracy']:.4f} [{low:.3f}, {high:.3f}]"
    print(
        f"done: val_accuracy {metrics['val_accuracy']:.4f} "
        f"(branches: {', '.join(f'{k} {v:.3f}' for k, v in accuracy.items())}){test} "
        f"in {metrics['total_seconds']:.0f} s · {where}"
    )
    if runtime.role.is_chief:
        print(f"report: {out / 'report.html'}")
    return metrics


def run_fn(fn_args: Any) -> dict[str, Any]:
    """TFX Trainer's module-file entry point: the SavedModel at `fn_args.serving_model_dir`
    itself, the run folder in `model_run_dir` (`trainer.tfx` says what it reads)."""
    return run(config_from_fn_args(fn_args), verbose=2)
