"""cellkeras.evaluate.detection on hand-made box sets."""

import numpy as np
import pytest

from cellkeras.evaluate.detection import (
    average_precision,
    box_iou,
    detection_scores,
    greedy_match,
    image_f1,
    masks_to_boxes,
    match_boxes,
    max_box_acc_v2,
)


def test_box_iou_by_hand():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 5]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0, 0.0]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)


def test_hungarian_finds_more_pairs_than_greedy():
    # Prediction 0 overlaps both truths, best with truth 0; prediction 1 only truth 0.
    # Greedy by score gives pred 0 -> truth 0 and leaves pred 1 unmatched; Hungarian pairs both.
    true = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], np.float32)
    pred = np.array([[1.5, 0, 11.5, 10], [0, 0, 9, 10]], np.float32)
    pairs, ious = match_boxes(pred, true, iou_threshold=0.5)
    np.testing.assert_array_equal(pairs, [[0, 1], [1, 0]])
    assert np.all(ious >= 0.5)
    np.testing.assert_array_equal(greedy_match(pred, [0.9, 0.8], true, 0.5), [True, False])


def test_match_boxes_empty_sides():
    assert match_boxes(np.zeros((0, 4)), np.array([[0, 0, 1, 1]]))[0].shape == (0, 2)
    assert match_boxes(np.array([[0, 0, 1, 1]]), np.zeros((0, 4)))[0].shape == (0, 2)


def test_precision_recall_f1_and_counts():
    true = [np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]), np.zeros((0, 4))]
    pred = [
        np.array([[0, 0, 10, 10], [21, 0, 31, 10], [60, 60, 70, 70]]),  # 2 hits, 1 false
        np.array([[0, 0, 5, 5]]),  # a false positive on an empty image
    ]
    scores = [np.array([0.9, 0.8, 0.7]), np.array([0.6])]
    result = detection_scores(pred, scores, true, iou_thresholds=(0.5, 0.9))
    at50 = result["iou0.5"]
    assert (at50["tp"], at50["fp"], at50["fn"]) == (2, 2, 1)
    assert at50["precision"] == pytest.approx(0.5)
    assert at50["recall"] == pytest.approx(2 / 3)
    assert at50["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # IoU of [21,0,31,10] with [20,0,30,10] is 9/11 < 0.9: only the exact box counts.
    assert result["iou0.9"]["tp"] == 1
    # AP at 0.5: ranks 0.9 hit, 0.8 hit, 0.7 miss, 0.6 miss -> precision 1 up to recall 2/3.
    assert at50["ap"] == pytest.approx(2 / 3)
    assert result["count_mae"] == pytest.approx(0.5)  # |3-3| and |1-0|
    assert result["count_bias"] == pytest.approx(0.5)
    assert result["num_pred"] == 4 and result["num_true"] == 3


def test_average_precision_by_hand():
    assert average_precision([True, True], [0.9, 0.8], num_true=2) == pytest.approx(1.0)
    # Ranked: hit, miss, hit with 2 truths: recall 0.5 at precision 1, 1.0 at precision 2/3.
    assert average_precision([True, False, True], [0.9, 0.8, 0.7], 2) == pytest.approx(
        0.5 * 1.0 + 0.5 * 2 / 3
    )
    assert average_precision([], [], 0) == 0.0


def test_image_f1_empty_is_perfect():
    assert image_f1(np.zeros((0, 4)), np.zeros((0, 4))) == 1.0
    assert image_f1(np.array([[0, 0, 2, 2]]), np.zeros((0, 4))) == 0.0


def test_max_box_acc_v2_perfect_and_missing():
    cam = np.zeros((32, 32), np.float32)
    cam[4:12, 8:20] = 1.0
    hit = max_box_acc_v2([cam], [np.array([[8, 4, 20, 12]])])
    assert hit["max_box_acc_v2"] == pytest.approx(1.0)
    miss = max_box_acc_v2([cam], [np.array([[24, 24, 30, 30]])])
    assert miss["max_box_acc_v2"] == 0.0


def test_masks_to_boxes():
    labels = np.zeros((10, 12), np.int32)
    labels[1:4, 2:5] = 1
    labels[6:9, 7:12] = 3
    np.testing.assert_array_equal(masks_to_boxes(labels), [[2, 1, 5, 4], [7, 6, 12, 9]])
