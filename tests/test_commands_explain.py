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


def test_explain_writes_overlays(exported, images, tmp_path, capsys):
    from cellkeras.explain.plots import overlay_row_size
    from cellkeras.io.images import read_image

    out = tmp_path / "maps"
    assert run("explain", images / "a.png", images / "sub", "--model", exported, "--out", out) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a_gradcam.png", "b_gradcam.png", "c_gradcam.png"]
    # The files are 24x20 px and the model runs at 16x16: the panels keep the files' aspect,
    # enlarged to 256 px on the short side (307x256), the image, its overlay and a colour bar.
    png = read_image(out / "a_gradcam.png")
    assert png.shape[:2] == overlay_row_size((24, 20), panels=2)
    assert png.shape[0] >= 256 + 40 and png.shape[1] > 2 * 256 + 60
    assert "model: " in capsys.readouterr().out
    assert run("explain", images / "a.png", "--model", exported, "--out", out,
               "--method", "occlusion") == 0  # fmt: skip
    assert (out / "a_occlusion.png").is_file()


def test_explain_panels_titled_with_class_probability_and_colour_bar(tmp_path, monkeypatch):
    """--branches on a parallel model: one panel per branch and the merged model, each named,
    with its class and probability, and a colour bar; the figure is checked before it is
    saved. The maps are stand-ins (each target its own class and probability): the real
    computation is `test_explain_writes_overlays`' and test_explain.py's."""
    from cellkeras.cli import explain as command
    from cellkeras.evaluate import plots
    from cellkeras.explain import cam
    from cellkeras.explain.overlay import COLORMAPS
    from cellkeras.models import ParallelCNN

    keras.utils.set_random_seed(0)
    path = tmp_path / "parallel.keras"
    branches = [
        {"preset": "wide_shallow", "filters": [4], "pool_sizes": [0], "dense_units": []},
        {"preset": "deep_narrow", "filters": [4, 4], "pool_sizes": [2, 0], "dense_units": []},
    ]
    ParallelCNN(3, channels=3, branches=branches, head_units=4).save(path)
    answers = {"wide_shallow": (0, 0.25), "deep_narrow": (1, 0.5), "merged": (2, 0.875)}

    def stand_in(model, images, method, class_index, layer, branch, **options):
        k, probability = answers[branch]
        maps = np.broadcast_to(np.linspace(0, 1, images.shape[2], dtype="float32"),
                               images.shape[:3])  # fmt: skip
        return cam.Explanation(maps, np.array([k]), np.array([probability]),
                               np.eye(3)[[k]], method, [])  # fmt: skip

    monkeypatch.setattr(cam, "compute_explanation", stand_in)
    figures = []
    save = plots.save_figure
    monkeypatch.setattr(plots, "save_figure",
                        lambda fig, *a, **k: figures.append(fig) or save(fig, *a, **k))  # fmt: skip
    pixels = np.random.default_rng(1).integers(0, 255, (16, 32, 3), dtype=np.uint8)
    write_png(tmp_path / "wide.png", pixels)
    out = tmp_path / "maps"
    assert run("explain", tmp_path / "wide.png", "--model", path, "--classes", "x,y,z",
               "--out", out, "--branches", "--image_size", "16") == 0  # fmt: skip
    [figure] = figures
    *panels, bar = figure.axes
    assert [ax.get_title() for ax in panels] == [
        "wide.png\n32x16 px",
        "wide_shallow branch\nx  p = 0.25",
        "deep_narrow branch\ny  p = 0.50",
        "merged model\nz  p = 0.88",
    ]
    assert "Grad-CAM heat" in bar.get_ylabel() and bar.get_ylim() == (0.0, 1.0)
    for ax in panels:  # 2:1 like the file, though the model saw a 16x16 square
        assert ax.get_images()[0].get_array().shape[:2] == (256, 512)
    assert tuple(COLORMAPS) == command.COLORMAP_CHOICES


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
