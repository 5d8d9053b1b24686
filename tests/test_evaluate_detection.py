"""cellkeras.evaluate.detection on hand-made box sets."""

import numpy as np
import pytest

from cellkeras.detect.coco import to_coco
from cellkeras.evaluate.detection import (
    average_precision,
    box_iou,
    coco_ap,
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


# --- COCO AP (pycocotools) -------------------------------------------------------------------------

TWO_CELLS = [np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)]


def test_coco_ap_perfect_detections_score_one():
    result = coco_ap(TWO_CELLS, [(TWO_CELLS[0], np.array([0.9, 0.8]))])
    assert result == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})


def test_coco_ap_one_of_two_missed():
    # Recall stops at 0.5 with precision 1: 51 of COCO's 101 recall points (0, 0.01 ... 0.5).
    result = coco_ap(TWO_CELLS, [(TWO_CELLS[0][:1], np.array([0.9]))])
    assert result == pytest.approx({"AP": 51 / 101, "AP50": 51 / 101, "AP75": 51 / 101})


def test_coco_ap_averages_over_iou_levels():
    # IoU 0.62 passes the thresholds 0.50, 0.55 and 0.60 of ten: AP 0.3, AP50 1, AP75 0.
    true = [np.array([[0, 0, 10, 10]], np.float32)]
    result = coco_ap(true, [(np.array([[0, 0, 10, 6.2]]), np.array([0.9]))])
    assert result == pytest.approx({"AP": 0.3, "AP50": 1.0, "AP75": 0.0})


def test_coco_ap_ranks_by_score():
    # A false positive above the hit: precision 1/2 at every recall, as VOC's AP says too.
    true = [np.array([[0, 0, 10, 10]], np.float32)]
    pred = np.array([[50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    result = coco_ap(true, [(pred, np.array([0.9, 0.8]))])
    assert result["AP50"] == pytest.approx(0.5)
    voc = detection_scores([pred], [np.array([0.9, 0.8])], true, iou_thresholds=(0.5,))
    assert voc["iou0.5"]["ap"] == pytest.approx(0.5)
    swapped = coco_ap(true, [(pred, np.array([0.8, 0.9]))])
    assert swapped["AP50"] == pytest.approx(1.0)


def test_coco_ap_reads_coco_documents_matched_by_file_name():
    truth = {
        "images": [{"id": 7, "file_name": "a.png"}, {"id": 9, "file_name": "b.png"}],
        "annotations": [
            {"image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"image_id": 9, "category_id": 1, "bbox": [5, 5, 10, 10]},
        ],
    }
    # `cellkeras detect` numbers its images 1, 2 in its own order.
    detected = to_coco(
        [{"file_name": "b.png"}, {"file_name": "a.png"}],
        [np.array([[5, 5, 15, 15]]), np.array([[0, 0, 10, 10]])],
        [np.array([0.9]), np.array([0.8])],
    )
    assert coco_ap(truth, detected)["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not have"):  # a bare result list keeps its ids
        coco_ap(truth, detected["annotations"])


def test_coco_ap_keeps_every_detection_of_a_crowded_image():
    # 150 cells: COCO's default of 100 detections per image would cap recall at 2/3.
    true = [np.array([[x, y, x + 8, y + 8] for x in range(0, 150, 10) for y in range(0, 100, 10)])]
    result = coco_ap(true, [(true[0], np.linspace(1, 0.5, len(true[0])))])
    assert result["AP"] == pytest.approx(1.0)


def test_coco_ap_empty_sides_and_unknown_images():
    assert coco_ap(TWO_CELLS, [(np.zeros((0, 4)), np.zeros(0))]) == {
        "AP": 0.0, "AP50": 0.0, "AP75": 0.0,
    }  # fmt: skip
    assert coco_ap([np.zeros((0, 4))], [(TWO_CELLS[0], np.ones(2))])["AP"] == 0.0
    with pytest.raises(ValueError, match="one"):
        coco_ap(TWO_CELLS, [])
    with pytest.raises(ValueError, match="does not have"):
        coco_ap(TWO_CELLS, [{"image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}])


def test_coco_ap_on_masks():
    from pycocotools import mask as mask_utils

    disk = np.zeros((20, 20), np.uint8)
    disk[5:15, 4:12] = 1
    rle = mask_utils.encode(np.asfortranarray(disk))
    rle["counts"] = rle["counts"].decode()
    truth = {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "segmentation": rle, "bbox": [4, 5, 8, 10]}
        ],
    }
    result = [{"image_id": 1, "category_id": 1, "segmentation": rle, "score": 0.9}]
    assert coco_ap(truth, result, iou_type="segm")["AP"] == pytest.approx(1.0)
