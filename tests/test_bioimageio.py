"""`cellkeras export-bioimageio`: a tiny model packed and validated offline by bioimageio.spec."""

import argparse
import json
import socket

import cv2
import keras
import numpy as np
import pytest

from cellkeras.cli import serving as commands
from cellkeras.io.images import normalize
from cellkeras.serving.bioimageio import (
    BioimageioError,
    _preprocessing,
    _test_input,
    validate_package,
)
from tests.test_commands_detect import tiny_model

CLASSES = ["background", "nucleus"]


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cellkeras")
    commands.add_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(self, address):
        raise AssertionError(f"network access to {address} during validation")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    root = tmp_path_factory.mktemp("bioimageio")
    run_dir = root / "run"
    run_dir.mkdir()
    tiny_model().save(run_dir / "model.keras")
    metrics = {"classes": CLASSES, "final_size": 16, "normalization": "percentile",
               "val_accuracy": 0.875}  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert run(["export-bioimageio", str(run_dir), "--out", str(root / "pkg"),
                "--author", "Ada Lovelace"]) == 0  # fmt: skip
    return root / "pkg"


def test_package_validates_offline_and_reproduces_the_model(package, offline):
    descr = validate_package(package)
    assert descr.type == "model" and str(descr.format_version).startswith("0.5")
    assert descr.license == "MIT" and [a.name for a in descr.authors] == ["Ada Lovelace"]
    assert descr.weights.tensorflow_saved_model_bundle.parent == "keras_v3"
    (inp,), (out,) = descr.inputs, descr.outputs
    assert [a.id for a in inp.axes] == ["batch", "y", "x", "channel"]
    assert [str(n) for n in out.axes[1].channel_names] == CLASSES
    raw, expected = np.load(package / "test_input.npy"), np.load(package / "test_output.npy")
    assert raw.shape == (1, 16, 16, 1) and raw.dtype == np.float32
    assert expected.shape == (1, 2) and np.allclose(expected.sum(axis=1), 1.0, atol=1e-5)
    # The preprocessing the description names is the training normalization: the shipped
    # Keras file on normalize(raw) gives the test output.
    model = keras.saving.load_model(package / "model.keras")
    got = model(normalize(raw[0], "percentile")[None].astype(np.float32)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    cover = cv2.imread(str(package / "cover.png"))
    assert cover.shape == (256, 512, 3)
    readme = (package / "README.md").read_text()
    assert "`nucleus`" in readme and "percentile" in readme and "val_accuracy: 0.8750" in readme


def test_a_changed_file_fails_validation(package, tmp_path, offline):
    import shutil

    copy = shutil.copytree(package, tmp_path / "pkg")
    np.save(copy / "test_output.npy", np.zeros((1, 2), np.float32))
    with pytest.raises(BioimageioError, match="not a valid bioimage.io model"):
        validate_package(copy)


def test_a_bare_keras_file_needs_classes(tmp_path, capsys):
    tiny_model().save(tmp_path / "m.keras")
    assert run(["export-bioimageio", str(tmp_path / "m.keras"), "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert "cellkeras export-bioimageio: error:" in err and "--classes" in err
    assert not (tmp_path / "p").exists()


def test_range_normalization_takes_the_normalized_image():
    image = np.full((8, 8), 51, np.uint8)
    raw = _test_input(image, (4, 4), "range")
    assert raw.shape == (1, 4, 4, 1) and np.allclose(raw, 0.2)
    assert [step["id"] for step in _preprocessing("range")] == ["clip"]
    assert [step["id"] for step in _preprocessing("percentile")] == ["scale_range", "clip"]
