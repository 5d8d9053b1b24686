"""The `cellkeras` command's parser and the packages' lazy exports."""

import subprocess
import sys

import pytest

from cellkeras import cli


def test_parser_lists_every_command_without_loading_tensorflow():
    # A fresh interpreter: this test process has long since imported TensorFlow.
    code = (
        "import sys; from cellkeras import cli; parser = cli.build_parser(); "
        "print(sorted(parser._subparsers._group_actions[0].choices)); "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    commands = eval(out[0])  # noqa: S307 - our own print of a list of names
    for command in (
        "batch",
        "classify",
        "detect",
        "explain",
        "gallery",
        "serve-check",
        "to-tfrecords",
    ):
        assert command in commands
    assert out[1] == "False"


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_importing_a_package_loads_no_tensorflow():
    code = (
        "import sys; import cellkeras.augment, cellkeras.batch, cellkeras.data, cellkeras.explain; "
        "print('tensorflow' in sys.modules, 'apache_beam' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_lazy_exports_resolve_to_the_defining_objects():
    import importlib

    from cellkeras import augment, data, explain
    from cellkeras.augment.presets import build_augmenter
    from cellkeras.data.pipeline import make_dataset

    overlay_module = importlib.import_module("cellkeras.explain.overlay")
    assert explain.overlay is overlay_module.overlay  # not the submodule of the same name
    assert augment.build_augmenter is build_augmenter
    assert data.make_dataset is make_dataset
    assert set(explain.__all__) >= {"gradcam", "overlay", "load_model_for_inference"}
    assert dir(explain) == explain.__all__  # eager and lazy names alike
    with pytest.raises(AttributeError, match="cellkeras.data.*no_such_name"):
        data.no_such_name  # noqa: B018
