"""cellkeras.detect: heatmap → boxes on maps with known blobs, splitting, tiling, the pipeline."""

import dataclasses

import cv2
import keras
import numpy as np
import pytest

from cellkeras.detect import (
    BoxParams,
    DetectConfig,
    DetectError,
    area_limits_px,
    detect,
    heatmap_to_boxes,
    non_max_suppression,
    normalize_windows,
    rescale_for_diameter,
    sliding_window_heatmap,
    split_touching,
    threshold_heatmap,
    tiled_heatmap,
)
from cellkeras.detect.baseline import otsu_watershed
from cellkeras.detect.boxes import image_foreground
from cellkeras.detect.size import estimate_diameter
from cellkeras.evaluate import calibrate_threshold  # noqa: E402
from cellkeras.io.images import normalize


def blobs_map() -> np.ndarray:
    heat = np.zeros((60, 80), np.float32)
    heat[10:20, 5:15] = 1.0  # a 10x10 square
    cv2.circle(heat, (50, 30), 8, 0.8, -1)  # a disc: columns/rows 42..58 and 22..38
    return heat


def test_contours_give_exact_boxes_and_scores():
    boxes, scores = heatmap_to_boxes(blobs_map(), BoxParams(threshold="fraction", value=0.5))
    np.testing.assert_array_equal(boxes, [[5, 10, 15, 20], [42, 22, 59, 39]])
    np.testing.assert_allclose(scores, [1.0, 0.8])


@pytest.mark.parametrize("mode,value", [("fraction", 0.5), ("otsu", 0.0), ("fixed", 0.3)])
def test_threshold_modes_find_both_blobs(mode, value):
    boxes, _ = heatmap_to_boxes(blobs_map(), BoxParams(threshold=mode, value=value))
    assert len(boxes) == 2


def test_threshold_levels():
    heat = blobs_map()
    assert threshold_heatmap(heat, "fraction", 0.25) == pytest.approx(0.25)
    assert threshold_heatmap(heat, "fixed", 0.7) == pytest.approx(0.7)
    assert 0.0 < threshold_heatmap(heat, "otsu") < 0.8
    assert threshold_heatmap(np.zeros((4, 4)), "otsu") == np.inf


def test_watershed_splits_two_touching_disks():
    mask = np.zeros((40, 60), np.uint8)
    cv2.circle(mask, (20, 20), 10, 1, -1)
    cv2.circle(mask, (37, 20), 10, 1, -1)
    assert len(heatmap_to_boxes(mask.astype(np.float32))[0]) == 1  # one contour unsplit
    labels = split_touching(mask, min_distance=5)
    assert labels.max() == 2
    boxes, _ = heatmap_to_boxes(mask.astype(np.float32), BoxParams(split="distance"))
    boxes = boxes[np.argsort(boxes[:, 0])]
    # Each half spans its own disc's rows; the cut is near the neck at x ~ 28.5.
    np.testing.assert_array_equal(boxes[:, 1], [10, 10])
    np.testing.assert_array_equal(boxes[:, 3], [31, 31])
    assert boxes[0, 0] == 10 and boxes[1, 2] == 48
    assert abs(boxes[0, 2] - 29) <= 1 and abs(boxes[1, 0] - 29) <= 1


def test_the_classical_baseline_splits_touching_nuclei_and_its_offset_moves_the_level():
    image = np.full((40, 60), 20, np.uint8)
    cv2.circle(image, (20, 20), 10, 200, -1)
    cv2.circle(image, (37, 20), 10, 200, -1)
    cv2.circle(image, (50, 33), 4, 110, -1)  # a dim nucleus, at 0.5 of the bright ones
    boxes, scores = otsu_watershed(image, sigma=0, min_distance=5)
    assert len(boxes) == 3  # Otsu's level lies between the background and every nucleus
    np.testing.assert_array_equal(scores, [1.0, 1.0, 1.0])
    # Raised above 0.5 of the 0.5-99.8 percentile range, the level leaves the dim one out.
    assert len(otsu_watershed(image, sigma=0, min_distance=5, offset=0.6)[0]) == 2
    bright = image_foreground(image, sigma=0, offset=0.6)
    assert bright.sum() < image_foreground(image, sigma=0).sum()
    assert not bright[33, 50] and bright[20, 20]


def test_blank_and_noise_images_give_no_boxes():
    for heat in (np.zeros((32, 32), np.float32), np.full((32, 32), 0.05, np.float32)):
        for mode in ("fraction", "otsu"):
            boxes, scores = heatmap_to_boxes(heat, BoxParams(threshold=mode, min_peak=0.2))
            assert boxes.shape == (0, 4) and scores.shape == (0,)
    noise = np.random.default_rng(0).uniform(0, 0.1, (32, 32)).astype(np.float32)
    assert len(heatmap_to_boxes(noise, BoxParams(threshold="otsu"))[0]) == 0


def test_area_limits_and_border_policy():
    heat = blobs_map()
    heat[0:4, 70:80] = 1.0  # a small blob on the border
    assert len(heatmap_to_boxes(heat)[0]) == 3
    assert len(heatmap_to_boxes(heat, BoxParams(min_area=50))[0]) == 2
    assert len(heatmap_to_boxes(heat, BoxParams(max_area=150))[0]) == 2  # the disc is ~200 px
    assert len(heatmap_to_boxes(heat, BoxParams(border="drop"))[0]) == 2
    low, high = area_limits_px(10.0, 100.0, pixel_size_um=0.5)
    assert (low, high) == (40.0, 400.0)
    assert area_limits_px(10.0) == (10.0, None)


def test_erosion_shrinks_boxes_by_the_kernel():
    heat = np.zeros((40, 40), np.float32)
    heat[10:30, 5:21] = 1.0
    boxes, _ = heatmap_to_boxes(heat, BoxParams(erode=5))
    np.testing.assert_array_equal(boxes, [[7, 12, 19, 28]])


def test_extent_from_image():
    image = np.zeros((40, 40), np.float32)
    cv2.circle(image, (20, 20), 6, 1.0, -1)
    heat = np.zeros_like(image)
    heat[17:24, 17:24] = 1.0  # a rough hot spot inside the cell
    boxes, _ = heatmap_to_boxes(heat, BoxParams(extent="image"), image)
    np.testing.assert_array_equal(boxes, [[14, 14, 27, 27]])
    with pytest.raises(ValueError, match="needs the image"):
        heatmap_to_boxes(heat, BoxParams(extent="image"))


def test_image_extent_splits_touching_nuclei_in_one_hot_region():
    # Two touching nuclei, the upper one cut by the image border; a centred-patch map's hot
    # regions merge over both. One marker per hot region gives one box for the pair; the
    # foreground's distance peaks inside the hot region give one box each.
    image = np.zeros((40, 60), np.float32)
    cv2.circle(image, (20, 2), 6, 1.0, -1)
    cv2.circle(image, (20, 13), 6, 1.0, -1)
    cv2.circle(image, (45, 25), 5, 1.0, -1)  # a lone nucleus
    heat = np.zeros_like(image)
    heat[0:22, 12:29] = 1.0
    heat[20:31, 40:51] = 1.0
    merged, _ = heatmap_to_boxes(heat, BoxParams(extent="image"), image)
    assert len(merged) == 2
    split = BoxParams(extent="image", split="distance", min_distance=4)
    boxes, _ = heatmap_to_boxes(heat, split, image)
    boxes = boxes[np.argsort(boxes[:, 1])]
    np.testing.assert_array_equal(boxes[:, 1], [0, 8, 20])  # border nucleus, its neighbour, lone
    assert boxes[0, 3] <= 9 and boxes[1, 3] == 20
    # Foreground without heat still gives no box; a hot region without a distance peak of its
    # own (here: a hot strip on the lone nucleus's rim) still gives one.
    heat[20:31, 40:51] = 0.0
    heat[25:27, 40:42] = 1.0
    boxes, _ = heatmap_to_boxes(heat, split, image)
    assert len(boxes) == 3


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    kept = non_max_suppression(boxes, np.array([0.5, 0.9, 0.7]), iou_threshold=0.5)
    np.testing.assert_array_equal(kept, [1, 2])


def test_unknown_modes_raise():
    with pytest.raises(ValueError, match="known"):
        BoxParams(threshold="magic")
    with pytest.raises(ValueError, match="known"):
        DetectConfig(method="magic")


def test_calibration_reports_frozen_and_per_image_optimum():
    heats = [blobs_map(), blobs_map() * 0.5]
    truth = [np.array([[5, 10, 15, 20], [42, 22, 59, 39]], np.float32)] * 2
    result = calibrate_threshold(heats, truth, thresholds=[0.1, 0.3, 0.45, 0.9])
    assert result["threshold"] in (0.1, 0.3) and result["f1"] == pytest.approx(1.0)
    assert result["per_image_optimum_f1"] >= result["f1"]
    assert len(result["sweep"]) == 4


# --- heatmaps from a model -------------------------------------------------------------------


def tiny_cnn(channels: int = 1, classes: int = 2) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, channels))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


def test_percentile_windows_match_the_training_normalization():
    windows = np.random.default_rng(1).integers(0, 4000, (3, 8, 8, 1)).astype(np.uint16)
    expected = np.stack([normalize(w, "percentile") for w in windows])
    np.testing.assert_allclose(normalize_windows(windows, "percentile"), expected, atol=1e-6)


def test_sliding_window_heatmap_shape_and_range(model):
    image = np.random.default_rng(2).integers(0, 255, (21, 30, 1)).astype(np.uint8)
    heat = sliding_window_heatmap(model, image, window=8, stride=4, class_indices=[1])
    assert heat.shape == (21, 30) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0


def test_tiling_reproduces_the_whole_image_map(model):
    image = np.random.default_rng(3).integers(0, 4000, (40, 52, 1)).astype(np.uint16)
    kwargs = dict(window=8, stride=2, class_indices=[1], normalization="percentile")
    whole = sliding_window_heatmap(model, image, **kwargs)

    def per_tile(tiles):
        return np.stack([sliding_window_heatmap(model, t, **kwargs) for t in tiles])

    tiled = tiled_heatmap(image, per_tile, tile=24, overlap=16, align=2)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_rescale_for_diameter_round_trip():
    image = np.zeros((40, 60, 1), np.uint16)
    resized, scale = rescale_for_diameter(image, cell_diameter=20, train_diameter=10)
    assert resized.shape == (20, 30, 1) and resized.dtype == np.uint16 and scale == 0.5
    same, one = rescale_for_diameter(image, None, 10)
    assert same is image and one == 1.0


def test_detect_pipeline_and_errors(model):
    image = np.zeros((40, 40), np.uint8)
    config = DetectConfig(window=8, stride=4, gate=0.0, boxes=BoxParams(min_peak=0.0))
    found = detect(model, image, config, class_names=["background", "cell"])
    assert found.heatmap.shape == (40, 40) and found.boxes.shape[1] == 4
    gated = detect(model, image, DetectConfig(window=8, stride=4, gate=1.01))
    assert len(gated.boxes) == 0
    with pytest.raises(DetectError, match="smaller than the model's window"):
        detect(model, np.zeros((6, 6), np.uint8), config)
    with pytest.raises(DetectError, match="channel"):
        detect(model, np.zeros((20, 20, 2), np.uint8), config)
    dense = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    with pytest.raises(DetectError, match="no convolution"):
        detect(dense, image, config)


def test_gradcam_detection_on_tiles(model):
    image = np.random.default_rng(4).integers(0, 255, (40, 40, 1)).astype(np.uint8)
    config = DetectConfig(method="gradcam", tile=16, overlap=8, gate=0.0)
    found = detect(model, image, config, class_names=["background", "cell"])
    assert found.heatmap.shape == (40, 40)
    assert found.heatmap.min() >= 0.0 and found.heatmap.max() <= 1.0


# 1024x1002 at 0.25 is 256x250: its y is scaled by 250/1002, not by 0.25.
@pytest.mark.parametrize("height,width,diameter", [(64, 64, 16), (1002, 1024, 32)])
def test_detect_rescales_boxes_back_by_each_axis_own_factor(model, height, width, diameter):
    image = np.zeros((height, width), np.uint8)
    config = DetectConfig(
        window=8, stride=4, gate=0.0, train_diameter=8, cell_diameter=diameter,
        boxes=BoxParams(threshold="fixed", value=-1.0, min_peak=0.0),
    )  # fmt: skip
    found = detect(model, image, config)
    assert found.scale == 8 / diameter and found.heatmap.shape == (height, width)
    # Everything is above a threshold of -1: one box over the whole (rescaled-back) image.
    np.testing.assert_allclose(found.boxes, [[0, 0, width, height]])


def test_a_resize_that_rounds_one_side_back_is_still_mapped_back(model):
    # 8 / 7.9 turns 32 columns into 32.4 (32) and 40 rows into 40.5 (41): the realised width
    # ratio is 1, the image was resized all the same.
    image = np.zeros((40, 32), np.uint8)
    boxes = BoxParams(threshold="fixed", value=-1.0, min_peak=0.0)
    config = DetectConfig(window=8, stride=4, gate=0.0, train_diameter=8, cell_diameter=7.9)
    found = detect(model, image, dataclasses.replace(config, boxes=boxes))
    assert found.heatmap.shape == (40, 32) and found.labels.shape == (40, 32)
    np.testing.assert_allclose(found.boxes, [[0, 0, 32, 40]])


def test_detect_refuses_a_batch_with_a_clear_error(model):
    with pytest.raises(DetectError, match="one at a time"):
        detect(model, np.zeros((2, 40, 40, 1), np.uint8), DetectConfig(window=8, stride=4))


def test_workflow_overrides_keep_a_given_box_params_and_flat_fields_win():
    config = DetectConfig.for_workflow("nuclei", boxes=BoxParams(min_area=999.0, erode=3))
    assert config.boxes.min_area == 999.0 and config.boxes.erode == 3
    flat = DetectConfig.for_workflow("nuclei", boxes=BoxParams(min_area=999.0), min_area=5.0)
    assert flat.boxes.min_area == 5.0
    plain = DetectConfig.from_flat(window=8, stride=4, erode=2)
    assert plain.window == 8 and plain.boxes.erode == 2


def test_a_zero_pixel_size_names_the_field():
    with pytest.raises(ValueError, match="pixel_size_um must be > 0"):
        area_limits_px(10.0, 20.0, 0.0)


def test_area_limits_count_the_input_images_pixels_when_it_is_rescaled(model):
    image = np.zeros((64, 64), np.uint8)
    image[8:16, 8:16] = 200  # 64 px of the input; 16 once halved
    image[36:52, 36:52] = 200  # 256 px; 64 once halved
    boxes = BoxParams(threshold="fixed", value=-1.0, min_peak=0.0, extent="image", min_area=0)
    config = DetectConfig(
        window=8, stride=4, gate=0.0, train_diameter=8, cell_diameter=16, boxes=boxes
    )
    assert len(detect(model, image, config).boxes) == 2
    limited = dataclasses.replace(config, input_area_limits=(100.0, None))
    found = detect(model, image, limited)
    np.testing.assert_allclose(found.boxes, [[36, 36, 52, 52]], atol=1)
    assert set(np.unique(found.labels)) == {0, 1}
    at_most = dataclasses.replace(config, input_area_limits=(None, 100.0))
    np.testing.assert_allclose(detect(model, image, at_most).boxes, [[8, 8, 16, 16]], atol=1)


def test_bad_sliding_window_settings_name_the_field():
    with pytest.raises(ValueError, match="stride"):
        DetectConfig(window=8, stride=0)
    with pytest.raises(ValueError, match="stride"):
        DetectConfig(window=8, stride=9)
    with pytest.raises(ValueError, match="cell_diameter"):
        DetectConfig(cell_diameter=0)


def test_the_diameter_is_measured_on_the_image_as_the_model_takes_it(model):
    # Red discs of 24 px and green ones of 10 px: a grey model sees the green ones brighter
    # (luma), so its estimate differs from one on the RGB pixels.
    image = np.zeros((128, 128, 3), np.uint8)
    for centre in [(20, 20), (60, 20), (100, 20), (20, 60)]:
        cv2.circle(image, centre, 12, (255, 0, 0), -1)
    for centre in [(60, 70), (100, 70), (20, 105), (60, 105), (100, 105)]:
        cv2.circle(image, centre, 5, (0, 255, 0), -1)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    # The foreground reads RGB through the data layer's grey, not a channel mean.
    assert estimate_diameter(image) == pytest.approx(estimate_diameter(grey), abs=0.05)
    channel_mean = image.mean(axis=-1).astype(np.uint8)
    assert abs(estimate_diameter(channel_mean) - estimate_diameter(grey)) > 1
    config = DetectConfig(window=8, stride=4, gate=0.0, train_diameter=8, estimate_diameter=True)
    found = detect(model, image, config)
    assert found.diameter_estimated
    assert found.cell_diameter == pytest.approx(estimate_diameter(grey), abs=0.01)


def test_a_frame_of_noise_has_no_cell_size_and_is_not_rescaled(model):
    rng = np.random.default_rng(0)
    noise = rng.normal(100, 10, (96, 96)).clip(0, 255).astype(np.uint8)
    assert estimate_diameter(noise) is None  # it would read as 4 px "nuclei"
    discs = np.zeros((96, 96), np.uint8)
    for centre in [(20, 20), (60, 20), (20, 60), (70, 70)]:
        cv2.circle(discs, centre, 3, 255, -1)  # 7 px nuclei: small, and measured
    assert 5 <= estimate_diameter(discs) <= 9
    config = DetectConfig(window=8, stride=4, gate=0.0, train_diameter=16, estimate_diameter=True)
    found = detect(model, np.stack([noise] * 3, axis=-1), config)
    assert found.cell_diameter is None and not found.diameter_estimated
    assert found.scale == 1.0  # at its own size, not upscaled 4x for the 16 px model


def test_target_classes_leave_out_the_background():
    from cellkeras.detect.heatmaps import target_classes

    assert target_classes(["cell", "Background", "debris"], 3) == [0, 2]
    assert target_classes(["a", "b"], 2) == [0, 1]  # no background: every class
    # No names: the first output is taken as the background.
    assert target_classes(None, 3) == [1, 2]
    assert target_classes(None, 1) == [0]
