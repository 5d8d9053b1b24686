"""`cellkeras classify` and `cellkeras explain` end to end on a tiny exported model."""

import csv

import keras
import numpy as np
import pytest
import tifffile

from cellkeras import cli
from tests.conftest import TINY_CLASSES, write_png

CLASSES = TINY_CLASSES


@pytest.fixture(autouse=True)
def explain_commands(monkeypatch):
    modules = list(cli.COMMAND_MODULES)
    if "cellkeras.cli.explain" not in modules:
        modules.append("cellkeras.cli.explain")
    monkeypatch.setattr(cli, "COMMAND_MODULES", modules)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    for name in ("a.png", "sub/b.png", "sub/c.jpg"):
        write_png(folder / name, rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
    return folder


def run(*argv):
    return cli.main([str(a) for a in argv])


def test_classify_folder_to_csv(exported, images, tmp_path, capsys):
    out = tmp_path / "out.csv"
    assert run("classify", images, "--model", exported, "--csv", out) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [
        str(images / n) for n in ("a.png", "sub/b.png", "sub/c.jpg")
    ]
    assert list(rows[0]) == ["path", "predicted_class", "probability", *CLASSES]
    for r in rows:
        probs = [float(r[c]) for c in CLASSES]
        assert abs(sum(probs) - 1) < 1e-4 and r["predicted_class"] == CLASSES[int(np.argmax(probs))]
    assert "3 classified, 0 failed" in capsys.readouterr().out


def test_classify_reports_bad_images_and_goes_on(exported, images, tmp_path, capsys):
    (images / "notes.png").write_text("not an image")
    tifffile.imwrite(images / "four.tif", np.zeros((20, 20, 4), np.uint8), photometric="rgb",
                     extrasamples=[0])  # fmt: skip
    write_png(images / "tiny.png", np.zeros((5, 5, 3), np.uint8))
    out = tmp_path / "out.csv"
    assert run("classify", images, "--model", exported, "--csv", out) == 1
    assert len(list(csv.DictReader(out.open()))) == 3
    err = capsys.readouterr().err
    assert "notes.png: not a recognised image" in err
    assert "four.tif: has 4 channel(s) but the model takes 3" in err
    assert "tiny.png: 5x5 is smaller than the minimum side" in err


def test_classify_keras_file_with_and_without_classes(exported, images, capsys):
    keras_file = exported / "1" / "model.keras"
    assert run("classify", images / "a.png", "--model", keras_file) == 0
    assert capsys.readouterr().out.split("\n")[2].split()[1] in ("0", "1", "2")
    assert run("classify", images / "a.png", "--model", keras_file, "--classes", "x,y,z") == 0
    assert capsys.readouterr().out.split("\n")[2].split()[1] in ("x", "y", "z")
    assert run("classify", images, "--model", keras_file, "--classes", "x,y") == 1
    assert "3 outputs but 2 classes" in capsys.readouterr().err


def test_explain_writes_overlays(exported, images, tmp_path):
    from cellkeras.io.images import read_image

    out = tmp_path / "maps"
    assert run("explain", images / "a.png", images / "sub", "--model", exported, "--out", out) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a_gradcam.png", "b_gradcam.png", "c_gradcam.png"]
    assert read_image(out / "a_gradcam.png").shape == (16, 16 * 2 + 4, 3)  # image | overlay
    assert run("explain", images / "a.png", "--model", exported, "--out", out,
               "--method", "occlusion") == 0  # fmt: skip
    assert (out / "a_occlusion.png").is_file()


def test_explain_refuses_a_model_without_conv_layers(tmp_path, images, capsys):
    inputs = keras.Input((16, 16, 3))
    dense = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    path = tmp_path / "dense.keras"
    keras.Model(inputs, dense).save(path)
    assert run("explain", images / "a.png", "--model", path, "--out", tmp_path / "o") == 1
    assert "no convolutional layer" in capsys.readouterr().err


def test_bad_model_path(tmp_path, images, capsys):
    assert run("classify", images, "--model", tmp_path / "missing") == 1
    assert "does not exist" in capsys.readouterr().err
