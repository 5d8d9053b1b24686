"""Per-stage augmentation strength: weak on a progressive schedule's small images, the full
`train.stage_strength` END at its final size, and what reaches the augmenter."""

import pytest

from cellkeras.training import parse_schedule
from trainer.inputs import parse_strength_ramp, stage_strength


def test_strength_grows_with_the_stage_side_from_start_to_end():
    stages = parse_schedule("64x94:2,96x141:1,128x188:1")
    strengths = [stage_strength(stages, i, "0.2:1.4") for i in range(3)]
    # Linear in the larger side: 94 -> 0.2, 188 -> 1.4, 141 halfway.
    assert strengths == pytest.approx([0.2, 0.8, 1.4])
    assert [stage_strength(stages, i) for i in range(3)] == pytest.approx([0.5, 0.75, 1.0])


def test_a_fixed_size_run_trains_at_end_like_a_progressive_runs_last_stage():
    fixed, progressive = parse_schedule("128:4"), parse_schedule("64:2,128:1")
    assert stage_strength(fixed, 0, "0.3:1.5") == pytest.approx(1.5)
    assert stage_strength(progressive, 1, "0.3:1.5") == stage_strength(fixed, 0, "0.3:1.5")
    assert stage_strength(progressive, 0, "1.2") == pytest.approx(1.2)  # END alone: no ramp


@pytest.mark.parametrize(
    ("spec", "message"),
    [("weak:1", "not START:END"), ("0.5:1:2", "not START:END"), ("-1:1", "not START:END"),
     ("1:0.5", "START 1 is above END 0.5")],
)  # fmt: skip
def test_bad_ramps_are_refused_naming_the_field(spec, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_strength_ramp(spec)
    assert "train.stage_strength" in str(caught.value)


class _Stop(Exception):
    pass


def test_each_stage_builds_its_augmenter_at_its_strength(tmp_path, monkeypatch):
    """The trainer's per-stage data asks for each stage's strength (training replaced by a
    pass over the phases' data: only what the augmenter is built with matters here)."""
    import trainer.inputs
    from cellkeras.training import PhaseRunner
    from trainer.config import build_config
    from trainer.task import run

    built = []
    real = trainer.inputs.build_augmenter

    def recording(preset, **kw):
        built.append((kw["image_size"], kw["strength"]))
        return real(preset, **kw)

    def data_only(self, data_for, **kw):
        built.clear()  # the epoch sizing in Inputs.load builds one too; not a stage's
        for phase in self.phases:
            data_for(phase, True, range(1))
        raise _Stop

    monkeypatch.setattr(trainer.inputs, "build_augmenter", recording)
    monkeypatch.setattr(PhaseRunner, "run", data_only)
    overrides = {"data.synthetic_images": 32, "train.schedule": "16:1,24:1,32:1"}
    config = build_config("smoke", {**overrides, "train.stage_strength": "0.25:1.5"})
    config.output_dir = str(tmp_path / "run")
    with pytest.raises(_Stop):
        run(config, verbose=0)
    assert built == [((16, 16), 0.25), ((24, 24), 0.875), ((32, 32), 1.5)]

    config.output_dir = str(tmp_path / "bad")
    config.train.stage_strength = "1:0"
    with pytest.raises(ValueError, match="train.stage_strength"):
        run(config, verbose=0)
    assert not (tmp_path / "bad").exists()  # refused before the run folder was made
