"""`cellkeras calibrate` on a tiny exported model, then `cellkeras detect` using its threshold.

The model is hand-wired so its heat means something: the window's mean brightness through a
sigmoid, so on black images with white disks the heat peaks on each cell and falls off around
it. Low thresholds merge cells with their surround, the highest shrink boxes below IoU 0.5: the
best threshold is inside the grid.
"""

import argparse
import json

import cv2
import keras
import numpy as np
import pytest
import tifffile

from cellkeras.cli import calibrate as calibrate_cli
from cellkeras.cli import detect as detect_cli

CENTRES = {"a": [(16, 16), (46, 40)], "b": [(20, 44), (48, 18)]}


def run(module, name: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cellkeras")
    module.add_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args([name, *argv])
    return args.func(args)


def bright_model() -> keras.Model:
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([np.array([[-10.0, 10.0]], np.float32), np.array([1.5, -1.5])])
    return model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """An export, two images and their instance masks (one PNG `_masks`, one TIFF), COCO."""
    from cellkeras.data.samples import instance_boxes
    from cellkeras.serving.export import export_model

    root = tmp_path_factory.mktemp("calibrate")
    version = export_model(bright_model(), root / "export", classes=["background", "cell"],
                           image_size=16, channels=1)  # fmt: skip
    (root / "images").mkdir()
    (root / "masks").mkdir()
    coco = {"images": [], "annotations": []}
    for k, (stem, centres) in enumerate(CENTRES.items(), 1):
        image, label = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint16)
        for i, (x, y) in enumerate(centres, 1):
            cv2.circle(image, (x, y), 6, 255, -1)
            cv2.circle(label, (x, y), 6, i, -1)
        assert cv2.imwrite(str(root / "images" / f"{stem}.png"), image)
        if stem == "a":
            assert cv2.imwrite(str(root / "masks" / "a_masks.png"), label)
        else:
            tifffile.imwrite(root / "masks" / "b.tif", label)
        coco["images"].append({"id": k, "file_name": f"{stem}.png", "width": 64, "height": 64})
        for box in instance_boxes(label)[1]:
            x0, y0, x1, y1 = (float(v) for v in box)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": k,
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": 1})  # fmt: skip
    (root / "coco.json").write_text(json.dumps(coco))
    return root, version


@pytest.fixture(scope="module")
def calibrated(data):
    """A calibrated copy of the version folder (the module's export stays uncalibrated)."""
    root, version = data
    out = root / "calibrated"
    rc = run(calibrate_cli, "calibrate", [str(root / "images"), "--labels", str(root / "masks"),
                                          "--model", str(version), "--out_model", str(out)])  # fmt: skip
    assert rc == 0
    return out


def test_calibrate_writes_an_interior_threshold_into_the_card(data, calibrated):
    _, version = data
    card = json.loads((calibrated / "model_card.json").read_text())
    section = card["detection"]
    assert set(section) >= {"workflow", "threshold", "calibrated_on"}
    assert section["workflow"] == "generic"
    on = section["calibrated_on"]
    assert (on["images"], on["cells"], on["iou"]) == (2, 4, 0.5)
    assert on["f1"] == pytest.approx(1.0) and not on["at_edge"]
    assert on["grid"] == {"start": 0.02, "stop": 0.98, "step": 0.02}
    assert 0.02 < section["threshold"] < 0.98
    assert "detection" not in json.loads((version / "model_card.json").read_text())


def test_detect_uses_the_card_threshold_and_the_flag_wins(data, calibrated, tmp_path, capsys):
    root, _ = data
    image = str(root / "images" / "a.png")
    assert (
        run(detect_cli, "detect", [image, "--model", str(calibrated), "--out", str(tmp_path)]) == 0
    )
    info = json.loads((tmp_path / "detections.json").read_text())
    threshold = json.loads((calibrated / "model_card.json").read_text())["detection"]["threshold"]
    assert (info["info"]["threshold"], info["info"]["threshold_source"]) == (
        threshold,
        "model card",
    )
    assert len(info["annotations"]) == 2, "the calibrated threshold finds both cells"
    assert f"threshold {threshold} (model card)" in capsys.readouterr().out
    flagged = tmp_path / "flag"
    argv = [image, "--model", str(calibrated), "--out", str(flagged), "--threshold", "0.3"]
    assert run(detect_cli, "detect", argv) == 0
    info = json.loads((flagged / "detections.json").read_text())["info"]
    assert (info["threshold"], info["threshold_source"]) == (0.3, "--threshold")


def test_coco_labels_and_a_keras_file_get_a_sidecar(data, tmp_path, capsys):
    from cellkeras.inference.loading import load_model_for_inference

    root, version = data
    out = tmp_path / "cells.keras"
    rc = run(calibrate_cli, "calibrate", [str(root / "images"), "--labels", str(root / "coco.json"),
                                          "--model", str(version / "model.keras"),
                                          "--out_model", str(out)])  # fmt: skip
    assert rc == 0
    assert "threshold" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "cells.detection.json").read_text())["detection"]
    assert sidecar["calibrated_on"]["cells"] == 4 and 0.02 < sidecar["threshold"] < 0.98
    _, info = load_model_for_inference(out)
    assert info.detection == sidecar


@pytest.mark.parametrize(
    "case,message",
    [("missing-label", "a.png: no label image"), ("wrong-size", "32x32 labels for the 64x64"),
     ("coco-without-image", "a.png: no entry for it"), ("no-labels-file", "nope.json: COCO labels"),
     ("coco-entry-without-id", "coco.json: images[0] needs a `file_name` and an `id`"),
     ("coco-ragged-bbox", "coco.json: annotations[0] (id 7) needs an `image_id` and a `bbox`")],
)  # fmt: skip
def test_bad_labels_are_refused_naming_the_file(data, tmp_path, capsys, case, message):
    root, version = data
    labels = tmp_path / "labels"
    labels.mkdir()
    tifffile.imwrite(labels / "b.tif", np.zeros((64, 64), np.uint16))
    if case == "wrong-size":
        tifffile.imwrite(labels / "a.tif", np.zeros((32, 32), np.uint16))
    if case == "coco-without-image":
        labels = labels / "coco.json"
        labels.write_text(json.dumps({"images": [{"id": 1, "file_name": "b.png"}]}))
    if case == "coco-entry-without-id":
        labels = labels / "coco.json"
        labels.write_text(json.dumps({"images": [{"file_name": "a.png"}]}))
    if case == "coco-ragged-bbox":
        labels = labels / "coco.json"
        images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
        annotations = [{"id": 7, "image_id": 1, "bbox": [1, 2, 3]}]
        labels.write_text(json.dumps({"images": images, "annotations": annotations}))
    if case == "no-labels-file":
        labels = tmp_path / "nope.json"
    argv = [str(root / "images"), "--labels", str(labels), "--model", str(version)]
    assert run(calibrate_cli, "calibrate", argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("cellkeras calibrate: error:") and message in err
    assert len(err.strip().splitlines()) == 1
