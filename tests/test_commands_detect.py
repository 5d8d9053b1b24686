"""`cellkeras detect` end to end on a tiny exported model, and its error messages."""

import argparse
import json

import cv2
import keras
import numpy as np
import pytest
import tifffile

from cellkeras.cli import detect as commands

TWO_CHANNELS = np.zeros((32, 32, 2), np.uint16)
CONTIG = {"photometric": "minisblack", "planarconfig": "contig"}


def run_detect(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cellkeras")
    commands.add_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["detect", *argv])
    return args.func(args)


def tiny_model(channels: int = 1) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, channels))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from cellkeras.serving.export import export_model

    root = tmp_path_factory.mktemp("export")
    return export_model(
        tiny_model(),
        root / "nuclei",
        classes=["background", "nucleus"],
        image_size=16,
        channels=1,
        normalization="percentile",
    )


@pytest.fixture
def nuclei_png(tmp_path):
    image = np.full((48, 64), 500, np.uint16)
    cv2.circle(image, (16, 20), 5, 3000, -1)
    cv2.circle(image, (44, 28), 6, 2500, -1)
    path = tmp_path / "cells.png"
    assert cv2.imwrite(str(path), image)
    return path


def test_detect_writes_coco_json_and_pngs(exported, nuclei_png, tmp_path):
    out = tmp_path / "out"
    rc = run_detect(
        [str(nuclei_png), "--model", str(exported.parent), "--out", str(out), "--gate", "0",
         "--threshold", "0.0", "--save_heatmaps", "--cell_diameter", "12"]
    )  # fmt: skip
    assert rc == 0
    document = json.loads((out / "detections.json").read_text())
    assert set(document) >= {"images", "annotations", "categories"}
    assert document["categories"] == [{"id": 1, "name": "nucleus"}]
    (image,) = document["images"]
    assert (image["width"], image["height"]) == (64, 48) and image["id"] == 1
    assert document["annotations"], "a threshold of 0 keeps the whole image as one region"
    for ann in document["annotations"]:
        assert ann["image_id"] == 1 and ann["category_id"] == 1
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 64 and y + h <= 48 and w > 0 and h > 0
        assert isinstance(ann["score"], float)
    assert (out / "cells_detections.png").is_file() and (out / "cells_heatmap.png").is_file()
    assert document["info"]["workflow"] == "nuclei"


def test_version_folder_and_keras_file_work_too(exported, nuclei_png, tmp_path):
    for model in (exported, exported / "model.keras"):
        assert run_detect([str(nuclei_png), "--model", str(model), "--out", str(tmp_path)]) == 0


def test_a_model_without_a_background_class_gets_a_warning(nuclei_png, tmp_path, capsys):
    from cellkeras.serving.export import export_model

    version = export_model(tiny_model(), tmp_path / "cells", classes=["lymphocyte", "neutrophil"],
                           image_size=16, channels=1)  # fmt: skip
    assert run_detect([str(nuclei_png), "--model", str(version), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "no 'background' class" in err and "--preset=nuclei" in err


def test_a_capitalised_background_class_counts_as_one(nuclei_png, tmp_path, capsys):
    from cellkeras.serving.export import export_model

    version = export_model(tiny_model(), tmp_path / "cells", classes=["Background", "Cell"],
                           image_size=16, channels=1)  # fmt: skip
    assert run_detect([str(nuclei_png), "--model", str(version), "--out", str(tmp_path / "o")]) == 0
    assert "warning" not in capsys.readouterr().err
    info = json.loads((tmp_path / "o" / "detections.json").read_text())["info"]
    assert info["method"] == "sliding_window"


def test_area_limits_are_um2_where_the_image_pixel_size_is_known():
    import argparse

    from cellkeras.cli.detect import with_area_limits
    from cellkeras.detect.pipeline import DetectConfig

    config = DetectConfig.for_workflow("nuclei")
    args = argparse.Namespace(min_area=10.0, max_area=None)
    assert with_area_limits(config, args, 0.5).input_area_limits == (40.0, None)
    assert with_area_limits(config, args, None).input_area_limits == (10.0, None)
    none = argparse.Namespace(min_area=None, max_area=None)
    assert with_area_limits(config, none, 0.5) is config


def test_a_detection_model_gets_no_warning(exported, nuclei_png, tmp_path, capsys):
    assert run_detect([str(nuclei_png), "--model", str(exported), "--out", str(tmp_path)]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "name,make,message",
    [
        ("bad.png", lambda p: p.write_text("not an image"), "not a recognised image"),
        ("bad.tif", lambda p: tifffile.imwrite(p, TWO_CHANNELS, **CONTIG), "2 channel(s)"),
        ("bad.png", lambda p: cv2.imwrite(str(p), np.zeros((10, 10), np.uint8)), "smaller than"),
    ],
    ids=["text-file", "two-channels", "too-small"],
)
def test_bad_images_fail_with_a_clear_message(exported, tmp_path, capsys, name, make, message):
    path = tmp_path / name
    make(path)
    rc = run_detect([str(path), "--model", str(exported), "--out", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "cellkeras detect: error:" in err and message in err and "bad" in err


def test_model_without_conv_layers_is_refused(nuclei_png, tmp_path, capsys):
    dense = keras.Sequential(
        [keras.Input((16, 16, 1)), keras.layers.Flatten(), keras.layers.Dense(2, "softmax")]
    )
    path = tmp_path / "dense.keras"
    dense.save(path)
    rc = run_detect([str(nuclei_png), "--model", str(path), "--out", str(tmp_path / "o")])
    assert rc == 1 and "no convolution layers" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.samples
def test_nuclei_preset_trains_a_model_that_detect_uses(tmp_path):
    """`--preset=nuclei` (one short epoch) → export → `cellkeras detect` on a real frame."""
    from cellkeras.data.samples import nuclei_sample
    from trainer.config import build_config
    from trainer.task import run

    config = build_config(
        "nuclei",
        {
            "train.schedule": "32:1",
            "output_dir": str(tmp_path / "run"),
            "export_dir": str(tmp_path / "export"),
        },
    )
    assert config.data.source == "nuclei" and config.data.normalization == "frame_percentile"
    run(config, verbose=0)
    frame = tmp_path / "frame.png"
    assert cv2.imwrite(str(frame), nuclei_sample().images[7][:, :160])
    out = tmp_path / "out"
    assert run_detect([str(frame), "--model", str(tmp_path / "export"), "--out", str(out)]) == 0
    document = json.loads((out / "detections.json").read_text())
    assert document["info"]["workflow"] == "nuclei"
    assert document["categories"] == [{"id": 1, "name": "nucleus"}]
