"""The trainer's flags are generated from the config dataclasses: none can drift or go missing."""

import dataclasses

import pytest
from absl import flags

from trainer.config import DataConfig, TrainConfig
from trainer.flags import config_from_flags, define_flags, field_docs, flag_fields


def parsed(argv):
    values = flags.FlagValues()
    define_flags(values)
    values(["trainer", *argv])
    return values


def test_every_config_field_is_a_documented_flag():
    values = parsed([])
    for cls in (DataConfig, TrainConfig):
        docs = field_docs(cls)
        for field in dataclasses.fields(cls):
            assert field.name in values, field.name
            assert docs[field.name] in values[field.name].help
    # Settings v1 had no flag for.
    for name in ("normalization", "eval_tfrecords", "synthetic_size"):
        assert name in values


def test_flags_override_the_preset_and_only_when_given():
    config = config_from_flags(
        parsed(["--preset=smoke", "--normalization=percentile", "--synthetic_size=40",
                "--learning_rate=0.01", "--skip_bad_images", "--output_dir=out"])
    )  # fmt: skip
    assert config.data.normalization == "percentile"
    assert config.data.synthetic_size == 40
    assert config.train.learning_rate == 0.01
    assert config.data.skip_bad_images is True
    assert config.output_dir == "out"
    # Not given: the smoke preset's value, not the dataclass default.
    assert config.train.schedule == "16:1,24:1"
    assert config.train.model == TrainConfig().model


def test_a_value_outside_the_choices_is_refused_before_anything_runs():
    with pytest.raises(flags.IllegalFlagValueError, match="training_mode"):
        parsed(["--training_mode=together"])


def test_balance_none_turns_oversampling_off():
    config = config_from_flags(parsed(["--balance=none"]))
    assert config.data.balance is None


def test_a_field_without_docs_fails_loudly(monkeypatch):
    @dataclasses.dataclass
    class Undocumented:
        """No attributes section."""

        secret: int = 1

    monkeypatch.setattr("trainer.flags.SECTIONS", {"data": Undocumented})
    with pytest.raises(TypeError, match="Undocumented.secret"):
        flag_fields()
