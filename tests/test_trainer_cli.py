"""The trainer's command line: one-line errors with exit status 2, nothing left behind, fast help."""

import os
import subprocess
import sys

import pytest

from trainer.cli import check_config, help_text, main
from trainer.config import build_config


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "trainer.task", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data_dir=missing_dir"], "--data_dir: missing_dir does not exist"),
        (["--model=parallel_smal"], "did you mean 'parallel_small'?"),
        (["--schedule=abc"], "--schedule=abc"),
        (["--augment=typo"], "(known: none, basic, fluid"),
        (["--preset=typo"], "unknown preset 'typo'"),
        (["--epochs=3"], "use --schedule=SIZE:EPOCHS"),
        (["--learning_rat=0.1"], "did you mean --learning_rate?"),
        (["--training_mode=together"], "joint|stagewise"),
        (["--normalization=percentil"], "did you mean 'percentile'?"),
    ],
)
def test_a_mistake_is_one_line_exit_2_and_no_folder(tmp_path, args, message):
    out = tmp_path / "run"
    result = run_cli(*args, f"--output_dir={out}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainer: error: "), result.stderr
    assert message in lines[0]
    assert not out.exists()


def test_an_empty_data_folder_fails_before_a_run_folder_exists(tmp_path):
    empty, out = tmp_path / "images", tmp_path / "run"
    empty.mkdir()
    result = run_cli(f"--data_dir={empty}", f"--output_dir={out}")
    assert result.returncode == 2
    assert "trainer: error:" in result.stderr and "no class folders" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_help_exits_0_without_loading_tensorflow_and_shows_the_preset_defaults():
    code = (
        "import sys; from trainer.cli import main; "
        "rc = main(['--help', '--preset=embryo']); "
        "assert 'tensorflow' not in sys.modules; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--schedule=64x96:8" in result.stdout  # the embryo preset's, not the default's
    assert "known: deep_narrow, edge" in result.stdout


def test_help_lists_every_flag_with_its_value():
    text = help_text()
    for name in ("--data_dir=None", "--model=parallel_small", "--normalization=auto"):
        assert name in text


def test_check_config_accepts_the_presets():
    for preset in ("default", "smoke"):
        check_config(build_config(preset))


def test_cellkeras_train_is_the_trainer():
    from cellkeras.cli import main as cellkeras_main

    assert cellkeras_main(["train", "--model=nosuch"]) == 2
    assert main(["--model=nosuch"]) == 2


def test_tensorflow_imports_quietly():
    code = (
        "from cellkeras.io.quiet import quiet_tensorflow_import; quiet_tensorflow_import(); "
        "import tensorflow as tf; print(int(tf.constant(2) * 3))"
    )
    # A user's own TF_CPP_MIN_LOG_LEVEL wins; conftest sets one, so take it out here.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "6"
    assert result.stderr.strip() == "", result.stderr
