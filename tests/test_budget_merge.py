"""The automatic schedule (aspect, native size, minimum steps) and the stacked merge."""

from __future__ import annotations

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from cellkeras.data.imageset import ImageSet
from cellkeras.models import create_model
from cellkeras.training import (
    adam_with_cosine_decay,
    auto_schedule,
    fit_stacking,
    fit_to_images,
    format_schedule,
    parse_schedule,
    stretch_to_steps,
    total_epochs,
)
from cellkeras.training.stacking import (
    choose_merge,
    cross_fitted_scores,
    fit_weights,
    merged_scores,
)
from trainer.config import build_config
from trainer.inputs import resolve_schedule


def test_auto_schedule_follows_the_images_aspect_and_size():
    base = parse_schedule("48:3,64:3,96:2")
    frames = fit_to_images(base, (128, 188))
    assert format_schedule(frames) == "40x56:3,56x80:3,80x120:2"
    # Each stage keeps about its square's pixel count, at the frames' 2:3 aspect.
    assert all(abs(h * w / s.size[0] ** 2 - 1) < 0.1 for (h, w), s in
               zip((f.size for f in frames), base, strict=True))  # fmt: skip
    # Patches smaller than the last stage are never blown up; the earlier stages shrink too.
    assert format_schedule(fit_to_images(base, (32, 32))) == "16:3,24:3,32:2"
    assert fit_to_images(base, (96, 96)) == base
    mixed = parse_schedule("32:1,64x96:2")
    assert fit_to_images(mixed, (128, 188)) == mixed  # the user's own shapes stay


def test_no_stage_is_smaller_than_the_model_runs_on():
    """MobileNetV2 downsamples by 32 and fails below 32 px: 32 px nucleus patches, whose
    automatic stages would be 16, 24 and 32 px, train at 32 px throughout (one stage), and
    frames at their aspect keep a short side of at least 32 px."""
    base = parse_schedule("48:3,64:3,96:2")
    assert format_schedule(fit_to_images(base, (32, 32), min_side=32)) == "32:8"
    frames = fit_to_images(base, (128, 188), min_side=48)
    assert format_schedule(frames) == "48x72:3,56x80:3,80x120:2"
    assert all(min(stage.size) >= 48 for stage in frames)
    images = ImageSet(["a", "b"], [0, 1] * 4, images=np.zeros((8, 32, 32, 1), np.uint8))
    inputs = types.SimpleNamespace(train_set=images, steps_per_epoch=2)
    mobilenet = build_config(overrides={"train.model": "mobilenet_v2"})
    assert [stage.size for stage in resolve_schedule(mobilenet, inputs)] == [(32, 32)]
    small = build_config(overrides={"train.model": "mobilenet_v2", "train.schedule": "16:1,32:1"})
    with pytest.raises(
        ValueError, match=r"--schedule=16:1,32:1: stage\(s\) 16:1 are smaller .*32 px"
    ):
        resolve_schedule(small, inputs)


def test_a_model_with_an_application_branch_runs_at_its_minimum_side():
    from cellkeras.models.registry import model_min_side

    assert model_min_side("parallel_small") == 1
    assert model_min_side("mobilenet_v2") == 32
    model = create_model("mobilenet_v2", 2, channels=1)
    assert model(np.zeros((1, 32, 32, 1), np.float32)).shape == (1, 2)


def test_small_sets_get_the_minimum_steps_and_large_ones_keep_their_epochs():
    base = parse_schedule("48:3,64:3,96:2")
    stretched = stretch_to_steps(base, steps_per_epoch=6, min_steps=240)
    assert total_epochs(stretched) == 40 and [s.size for s in stretched] == [s.size for s in base]
    assert [s.epochs for s in stretched] == [15, 15, 10]
    assert stretch_to_steps(base, steps_per_epoch=75, min_steps=240) == base
    assert stretch_to_steps(base, steps_per_epoch=1, min_steps=0) == base
    assert total_epochs(auto_schedule((128, 188), 7, 240)) * 7 >= 240


def test_resolve_schedule_stretches_only_when_the_user_gave_no_budget():
    images = ImageSet(["a", "b"], [0, 1] * 4, images=np.zeros((8, 40, 60, 1), np.uint8))
    inputs = types.SimpleNamespace(train_set=images, steps_per_epoch=2)
    auto = resolve_schedule(build_config(), inputs)
    assert total_epochs(auto) * 2 >= 240 and auto[-1].size == (40, 56)
    given = build_config(overrides={"train.schedule": "16:1"})
    assert format_schedule(resolve_schedule(given, inputs)) == "16:1"
    fixed = build_config(overrides={"train.steps_per_epoch": 5})
    assert total_epochs(resolve_schedule(fixed, inputs)) == 8


def _tiny_stacked(classes=3):
    keras.utils.set_random_seed(0)
    return create_model("parallel_small", classes, channels=1)


def test_joint_training_of_a_stacked_merge_trains_each_branch_by_its_own_loss_alone():
    from cellkeras.training import joint_trainer

    model = _tiny_stacked()
    trainer, to_labels = joint_trainer(model, "adam", branch_loss_weight=0.3)
    assert trainer.get_compile_config()["loss_weights"] == {
        "merged": 0.0,
        "edge": 1.0,
        "deep_narrow": 1.0,
    }
    images = tf.random.uniform((2, 16, 16, 1), seed=1)
    with tf.GradientTape() as tape:  # gradients do flow through the merge (Grad-CAM)
        score = tf.reduce_sum(model(images)[:, 0])
    grad = tape.gradient(score, model.get_layer("deep_narrow_logits").kernel)
    assert float(tf.reduce_sum(tf.abs(grad))) > 0
    assert not model.get_layer("probs").trainable_weights


def test_fit_weights_and_choice_never_fall_below_the_best_branch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    good = np.log(np.full((60, 4), 0.1) + 0.6 * np.eye(4)[labels])
    noise = np.log(rng.dirichlet(np.ones(4), 60))
    log_probs = np.stack([noise, good], axis=1)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    weights = fit_weights(labels, log_probs)
    assert weights[1] > weights[0]
    assert (
        merged_scores(labels, log_probs, weights)[0]
        >= merged_scores(labels, log_probs, np.array([0.0, 1.0]))[0]
    )


def _log_softmax(x: np.ndarray) -> np.ndarray:
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_fitted_weights_compete_with_their_out_of_fold_score():
    # Two right-on-every-image branches, one sharper: weights fitted on these images win the
    # log-loss tie in sample, but scored out of fold they must pay for what they fitted.
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 40)
    sharp = _log_softmax(4.0 * np.eye(3)[labels] + rng.normal(0, 0.5, (40, 3)))
    noise = _log_softmax(rng.normal(0, 2.0, (40, 3)))
    log_probs = np.stack([noise, sharp], axis=1)
    in_sample = merged_scores(labels, log_probs, fit_weights(labels, log_probs))
    out_of_fold = cross_fitted_scores(labels, log_probs, folds=4)
    assert out_of_fold[1] > in_sample[1]
    # Contiguous folds: fold k is images 10k..10k+9, merged with weights fitted on the rest.
    mixed = []
    for k in range(4):
        part = np.arange(10 * k, 10 * k + 10)
        rest = np.setdiff1d(np.arange(40), part)
        mixed.append(
            np.einsum("bnk,n->bk", log_probs[part], fit_weights(labels[rest], log_probs[rest]))
        )
    mixed = _log_softmax(np.concatenate(mixed))
    assert out_of_fold[1] == pytest.approx(-mixed[np.arange(40), labels].mean())
    chosen, weights, scores = choose_merge(labels, log_probs, ["noise", "sharp"])
    assert scores["fitted"] == pytest.approx(cross_fitted_scores(labels, log_probs))
    assert scores[chosen][0] == max(a for a, _ in scores.values())
    assert chosen != "fitted" or np.allclose(weights, fit_weights(labels, log_probs))
    in_sample_choice = choose_merge(labels, log_probs, ["noise", "sharp"], cross_fit=False)
    assert in_sample_choice[2]["fitted"] == pytest.approx(in_sample)


def test_fit_stacking_sets_the_weights_and_survives_a_save_load(tmp_path):
    model = _tiny_stacked()
    rng = np.random.default_rng(0)
    images = rng.random((12, 16, 16, 1)).astype("float32")
    one_hot = np.eye(3, dtype="float32")[rng.integers(0, 3, 12)]
    batches = tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(5)
    report = fit_stacking(model, batches)
    scores = report["candidates"]
    assert report["images"] == 12 and report["chosen"] in scores
    assert scores[report["chosen"]]["accuracy"] == max(s["accuracy"] for s in scores.values())
    weights = model.get_layer("probs").branch_weights.numpy()
    assert np.allclose(weights, list(report["weights"].values()), atol=1e-4)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))
    with pytest.raises(ValueError, match="no stacked merge"):
        fit_stacking(create_model("parallel_small_concat", 3, channels=1), batches)


def test_the_optimizer_warms_up_decays_and_with_weight_decay_shrinks_idle_weights():
    make = adam_with_cosine_decay(1e-2, steps_per_epoch=10, warmup_fraction=0.1)
    optimizer = make(2)
    optimizer.build([keras.Variable(np.ones(3, dtype="float32"))])
    rates = []
    for step in (0, 2, 20):
        optimizer.iterations.assign(step)
        rates.append(float(optimizer.learning_rate))
    assert rates[0] == pytest.approx(0.0)
    assert rates[1] == pytest.approx(1e-2)  # the peak, after 10 % of the 20 steps
    assert rates[2] == pytest.approx(5e-4)  # the cosine's floor, 5 % of the peak

    def after_steps(optimizer, steps=5):
        weight = keras.Variable(np.ones(3, dtype="float32"))
        for _ in range(steps):
            optimizer.apply_gradients([(keras.ops.zeros(3), weight)])
        return weight.numpy()

    assert np.array_equal(after_steps(make(2)), np.ones(3))  # no gradient, no move
    decayed = adam_with_cosine_decay(1e-2, 10, weight_decay=1.0)(2)
    assert isinstance(decayed, keras.optimizers.AdamW)
    assert np.all(after_steps(decayed) < 0.99)


def test_label_smoothing_charges_a_sure_and_right_prediction():
    from cellkeras.training import classification_loss

    labels = tf.one_hot([0, 2], 3)
    sure = tf.constant([[0.998, 0.001, 0.001], [0.001, 0.001, 0.998]])
    assert float(classification_loss(0.0)(labels, sure)) < 0.01
    # Targets 0.8 / 0.1 / 0.1: about -0.1 * 2 * log(0.001) more.
    assert float(classification_loss(0.3)(labels, sure)) > 1.0


@pytest.mark.parametrize("mode", ["joint", "stagewise"])
def test_label_smoothing_reaches_every_loss_a_phase_trains_on(mode):
    from cellkeras.training import joint_trainer, stagewise_trainer

    model = _tiny_stacked()
    if mode == "joint":
        trainer, _ = joint_trainer(model, "adam", 0.3, label_smoothing=0.2)
        losses = list(trainer.loss.values())
        assert len(losses) == 3  # the merged output and both branches
    else:
        losses = [stagewise_trainer(model, "edge", "adam", label_smoothing=0.2).loss]
    assert [loss.label_smoothing for loss in losses] == [0.2] * len(losses)
