"""The outputs other tools read: instance labels, COCO masks, label TIFF, QuPath GeoJSON, cells.csv,
and the pixel size read from OME-TIFF / ImageJ metadata."""

import csv
import json

import cv2
import numpy as np
import pytest
import tifffile
from pycocotools import mask as mask_utils

from cellkeras.detect import BoxParams, heatmap_to_boxes, heatmap_to_instances, to_coco
from cellkeras.detect.instances import resize_labels
from cellkeras.evaluate.detection import coco_ap, masks_to_boxes
from cellkeras.io.metadata import MetadataError, pixel_size
from tests.test_commands_detect import run_detect, tiny_model

# Five nuclei, two of them touching, on a 64x48 field.
DISCS = [(12, 12, 5), (40, 14, 6), (20, 34, 5), (29, 34, 5), (52, 36, 4)]


def scene() -> np.ndarray:
    image = np.full((48, 64), 500, np.uint16)
    for x, y, r in DISCS:
        cv2.circle(image, (x, y), r, 3000, -1)
    return image


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A trainer-style run folder (model.keras + metrics.json) of the untrained nuclei model:
    the nuclei workflow takes its extent from the image, so an all-hot map (--threshold 0)
    gives one cell per disc without training."""
    root = tmp_path_factory.mktemp("run")
    tiny_model().save(root / "model.keras")
    metrics = {
        "classes": ["background", "nucleus"],
        "final_size": 16,
        "normalization": "percentile",
    }
    (root / "metrics.json").write_text(json.dumps(metrics))
    return root


def detect_into(run_folder, out, *images, extra=()):
    argv = [*map(str, images), "--model", str(run_folder), "--out", str(out), "--gate", "0",
            "--threshold", "0", "--cell_diameter", "9", *extra]  # fmt: skip
    assert run_detect(argv) == 0
    return json.loads((out / "detections.json").read_text())


def read_rows(out):
    with open(out / "cells.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_output_counts_the_same_cells(run_folder, tmp_path):
    path = tmp_path / "scene.ome.tif"
    tifffile.imwrite(path, scene(), ome=True, metadata={"PhysicalSizeX": 0.5, "axes": "YX"})
    out = tmp_path / "out"
    # --cell_diameter 9 rescales by 12/9: the labels come back to the input's size.
    document = detect_into(run_folder, out, path)
    annotations = document["annotations"]
    (image,) = document["images"]
    assert image["pixel_size_um"] == 0.5 and image["pixel_size_source"].startswith("OME")
    assert len(annotations) == len(DISCS)

    labels = tifffile.imread(out / "scene.ome_labels.tif")
    assert labels.shape == (48, 64) and labels.dtype == np.uint16
    assert set(np.unique(labels)) == set(range(len(DISCS) + 1))
    with tifffile.TiffFile(out / "scene.ome_labels.tif") as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "um"
    assert pixel_size(out / "scene.ome_labels.tif").um == pytest.approx(0.5)
    for i, annotation in enumerate(annotations, start=1):
        rle = {
            **annotation["segmentation"],
            "counts": annotation["segmentation"]["counts"].encode(),
        }
        mask = mask_utils.decode(rle)
        np.testing.assert_array_equal(mask, labels == i)
        assert annotation["area"] == int(mask.sum())
        x, y, w, h = annotation["bbox"]  # the box holds its mask (to a pixel of rescaling)
        rows, cols = np.nonzero(mask)
        assert x - 1 <= cols.min() and cols.max() < x + w + 1 and y - 1 <= rows.min()

    # COCOeval reads the masks: every drawn disc is found at mask IoU 0.75.
    truth = np.zeros((48, 64), np.int32)
    for i, (x, y, r) in enumerate(DISCS, start=1):
        cv2.circle(truth, (x, y), r, i, -1)
    meta = {"file_name": str(path), "width": 64, "height": 48}
    gt = to_coco([meta], [masks_to_boxes(truth)], [np.ones(len(DISCS))], labels=[truth])
    assert coco_ap(gt, document, iou_type="segm")["AP75"] == 1.0

    features = json.loads((out / "scene.ome.geojson").read_text())["features"]
    assert len(features) == len(DISCS)
    for feature in features:
        assert feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert ring[0] == ring[-1] and len(ring) >= 4
        xy = np.array(ring)
        assert xy.min() >= 0 and (xy[:, 0] <= 64).all() and (xy[:, 1] <= 48).all()
        props = feature["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] == "nucleus"
        assert {"area", "area_um2", "eccentricity", "score"} <= set(props["measurements"])

    rows = read_rows(out)
    assert [int(r["id"]) for r in rows] == list(range(1, len(DISCS) + 1))
    for row, annotation in zip(rows, annotations, strict=True):
        assert int(row["area"]) == annotation["area"]
        assert float(row["area_um2"]) == pytest.approx(int(row["area"]) * 0.5**2)
        assert float(row["score"]) == pytest.approx(annotation["score"], abs=1e-4)
        assert float(row["max_intensity"]) == 3000.0


def test_pixel_size_flag_overrides_and_unknown_leaves_um_empty(run_folder, tmp_path):
    png = tmp_path / "plain.png"
    assert cv2.imwrite(str(png), scene())
    out = tmp_path / "out"
    detect_into(run_folder, out, png)
    rows = read_rows(out)
    assert len(rows) == len(DISCS) and all(r["area_um2"] == "" for r in rows)
    with tifffile.TiffFile(out / "plain_labels.tif") as tif:
        assert not tif.is_imagej and pixel_size(out / "plain_labels.tif") is None
    detect_into(run_folder, out, png, extra=["--pixel_size", "0.8"])
    for row in read_rows(out):
        assert float(row["area_um2"]) == pytest.approx(int(row["area"]) * 0.8**2)


def test_pixel_size_from_ome_imagej_and_tiff_tags(tmp_path):
    image = np.zeros((8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "a.ome.tif", image, ome=True,
                     metadata={"PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm"})  # fmt: skip
    tifffile.imwrite(tmp_path / "b.tif", image, imagej=True, resolution=(1 / 0.3, 1 / 0.3),
                     metadata={"unit": "micron"})  # fmt: skip
    tifffile.imwrite(tmp_path / "c.tif", image, resolution=(1e4 / 0.7, 1e4 / 0.7),
                     resolutionunit="CENTIMETER")  # fmt: skip
    tifffile.imwrite(tmp_path / "d.tif", image, resolution=(72, 72), resolutionunit="INCH")
    tifffile.imwrite(tmp_path / "e.tif", image, imagej=True)
    assert cv2.imwrite(str(tmp_path / "f.png"), image)
    assert pixel_size(tmp_path / "a.ome.tif").um == pytest.approx(0.25)
    assert pixel_size(tmp_path / "b.tif").um == pytest.approx(0.3)
    assert pixel_size(tmp_path / "c.tif").um == pytest.approx(0.7)
    assert [pixel_size(tmp_path / n) for n in ("d.tif", "e.tif", "f.png")] == [None] * 3
    tifffile.imwrite(tmp_path / "g.ome.tif", image, ome=True,
                     metadata={"PhysicalSizeX": 1.0, "PhysicalSizeXUnit": "furlong"})  # fmt: skip
    with pytest.raises(MetadataError, match="g.ome.tif.*PhysicalSizeXUnit 'furlong'"):
        pixel_size(tmp_path / "g.ome.tif")


@pytest.mark.samples
def test_the_ndev_sample_records_its_pixel_size():
    from cellkeras.data.samples import NUCLEI_PIXEL_SIZE_UM, NUCLEI_TIFF, sample_path

    found = pixel_size(sample_path(*NUCLEI_TIFF))
    assert found.um == pytest.approx(NUCLEI_PIXEL_SIZE_UM) and found.source.startswith("OME")


def test_labels_drop_what_filters_and_nms_drop():
    heat = np.zeros((40, 60), np.float32)
    heat[5:15, 5:15] = 1.0  # 100 px
    heat[20:23, 30:33] = 1.0  # 9 px: below min_area
    cv2.circle(heat, (45, 25), 7, 0.8, -1)
    params = BoxParams(min_area=20)
    boxes, scores, labels = heatmap_to_instances(heat, params)
    np.testing.assert_array_equal(boxes, heatmap_to_boxes(heat, params)[0])
    assert len(boxes) == 2 and labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2} and not labels[20:23, 30:33].any()
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int), start=1):
        rows, cols = np.nonzero(labels == i)
        assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x0, y0, x1, y1)


def test_resize_labels_keeps_every_label():
    labels = np.zeros((30, 30), np.int32)
    labels[3:13, 3:13] = 1
    labels[20, 20] = 2  # one pixel: nearest-neighbour shrinking alone would lose it
    small = resize_labels(labels, (10, 10))
    assert small.shape == (10, 10) and set(np.unique(small)) == {0, 1, 2}
    big = resize_labels(small, (30, 30))
    assert big.shape == (30, 30) and set(np.unique(big)) == {0, 1, 2}


def test_a_lost_cell_takes_a_free_pixel_under_its_footprint():
    # 6x6 -> 2x2 samples (1, 1), (1, 4), (4, 1), (4, 4). Cell 2 (rows 0 and 2, columns 0-3)
    # is not sampled, and its centroid's pixel belongs to cell 1, which has no other.
    labels = np.zeros((6, 6), np.int32)
    labels[1, 1] = 1
    labels[[0, 2], 0:4] = 2
    small = resize_labels(labels, (2, 2))
    np.testing.assert_array_equal(small, [[1, 2], [0, 0]])


def test_detect_drops_the_box_of_a_cell_no_pixel_is_left_for():
    from cellkeras.detect.pipeline import _drop_lost_cells

    boxes = np.arange(12, dtype=np.float32).reshape(3, 4)
    scores = np.array([0.1, 0.2, 0.3], np.float32)
    kept, kept_scores, labels = _drop_lost_cells(boxes, scores, np.array([[1, 0], [3, 3]]))
    np.testing.assert_array_equal(kept, boxes[[0, 2]])
    np.testing.assert_array_equal(kept_scores, scores[[0, 2]])
    np.testing.assert_array_equal(labels, [[1, 0], [2, 2]])


def test_a_broken_calibration_header_fails_naming_the_file_and_the_flag(
    run_folder, tmp_path, capsys
):
    path = tmp_path / "broken.ome.tif"
    tifffile.imwrite(path, scene(), ome=True,
                     metadata={"PhysicalSizeX": 1.0, "PhysicalSizeXUnit": "furlong"})  # fmt: skip
    rc = run_detect([str(path), "--model", str(run_folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "broken.ome.tif" in err and "--pixel_size" in err
    assert not (tmp_path / "out").exists()


def test_more_labels_than_uint16_holds_are_written_as_uint32(tmp_path):
    from cellkeras.detect.exports import write_label_tiff

    labels = np.arange(1, 300 * 300 + 1, dtype=np.int32).reshape(300, 300)
    write_label_tiff(tmp_path / "many.tif", labels, pixel_size_um=0.25)
    back = tifffile.imread(tmp_path / "many.tif")
    assert back.dtype == np.uint32 and np.array_equal(back, labels)
    assert pixel_size(tmp_path / "many.tif").um == pytest.approx(0.25)


def test_a_run_folder_tells_the_normalization_it_trained_with(tmp_path):
    # Trainer run folders keep the normalization in config.json, not metrics.json; detection
    # must see it, or a frame_percentile model gets raw pixels and finds nothing.
    from cellkeras.inference.loading import load_model_for_inference

    tiny_model().save(tmp_path / "model.keras")
    (tmp_path / "metrics.json").write_text(json.dumps({"classes": ["background", "nucleus"]}))
    assert load_model_for_inference(tmp_path)[1].normalization == "range"
    config = {"data": {"normalization": "frame_percentile"}, "train": {}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_model_for_inference(tmp_path)[1].normalization == "frame_percentile"
    assert load_model_for_inference(tmp_path / "model.keras")[1].normalization == (
        "frame_percentile"
    )
