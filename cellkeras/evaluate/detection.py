"""Scoring detections against true boxes: matching, precision/recall/F1, AP, counts, MaxBoxAccV2.

Boxes are `[x_min, y_min, x_max, y_max]` float pixels (inclusive-exclusive, as
`cellkeras.data.samples.instance_boxes` writes them), so a box's area is
`(x_max - x_min) * (y_max - y_min)` with no +1.

Two matching rules, each where it is the standard:

* F1, precision, recall and counts use a one-to-one **Hungarian** matching
  (`scipy.optimize.linear_sum_assignment`) that maximizes the summed IoU among pairs with
  IoU >= the threshold: the largest set of true positives, independent of scores.
* AP uses the **greedy by score** matching of PASCAL VOC / COCO (each prediction, best score
  first, takes the unmatched true box it overlaps most, if IoU >= threshold), because AP ranks
  predictions by score. AP here is VOC2010+'s all-point interpolated AP: the area under the
  precision-recall curve after making precision monotone (every recall level gets the best
  precision at that recall or higher), pooled over all images of a set.

MaxBoxAccV2 follows Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right"
(CVPR 2020): for each CAM threshold, an image counts as localized at IoU delta when any box
around a contour of the thresholded map overlaps any true box by IoU >= delta; BoxAcc is the
fraction of localized images, maximized over thresholds, then averaged over delta in
{0.3, 0.5, 0.7}. With many cells per image it only asks for one hit per image, so it is reported
beside, not instead of, F1.

`coco_ap` is COCO's AP@[.5:.95] (pycocotools' `COCOeval`), comparable with published detectors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

IOU_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)

BoxList = Sequence[np.ndarray]


def _as_boxes(boxes: np.ndarray | Sequence) -> np.ndarray:
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two box sets.

    Args:
        a: (N, 4) boxes.
        b: (M, 4) boxes.

    Returns:
        float64 (N, M); 0 where a box has no area.
    """
    a, b = _as_boxes(a), _as_boxes(b)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_boxes(
    pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one Hungarian matching of predicted to true boxes at an IoU threshold.

    Among all one-to-one assignments it keeps the pairs with IoU >= `iou_threshold` and
    maximizes first their number, then their summed IoU.

    Returns:
        `(pairs, ious)`: int64 (T, 2) `(pred index, true index)` rows sorted by pred index, and
        float64 (T,) their IoUs. T is the number of true positives.
    """
    iou = box_iou(pred, true)
    if iou.size == 0:
        return np.zeros((0, 2), np.int64), np.zeros((0,), np.float64)
    valid = iou >= iou_threshold
    # Each valid pair is worth 1 plus its IoU (< 1), so more pairs always beat more overlap.
    gain = np.where(valid, 1.0 + iou, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    keep = valid[rows, cols]
    pairs = np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)
    return pairs, iou[rows[keep], cols[keep]]


def greedy_match(
    pred: np.ndarray, scores: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5
) -> np.ndarray:
    """VOC/COCO matching: predictions by decreasing score each take their best free true box.

    Returns:
        bool (N,) in the order of `pred`: True where the prediction is a true positive.
    """
    pred = _as_boxes(pred)
    iou = box_iou(pred, true)
    hit = np.zeros(len(pred), bool)
    taken = np.zeros(iou.shape[1], bool)
    for i in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        if not iou.shape[1]:
            break
        candidates = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_threshold:
            hit[i] = True
            taken[j] = True
    return hit


def average_precision(hits: np.ndarray, scores: np.ndarray, num_true: int) -> float:
    """VOC all-point interpolated AP of ranked predictions.

    Args:
        hits: bool (N,) true positive flags (from `greedy_match`, pooled over images).
        scores: (N,) their scores.
        num_true: number of true boxes (recall's denominator; misses count).

    Returns:
        AP in [0, 1]; 0 when there are no true boxes.
    """
    if num_true == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = np.asarray(hits, bool)[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / num_true
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def precision_recall_f1(tp: int, n_pred: int, n_true: int) -> dict[str, float]:
    """Precision, recall and F1 of `tp` matches among `n_pred` predictions and `n_true` truths.

    Nothing predicted where nothing is true scores 1 on all three; predictions where nothing
    is true, or nothing predicted where something is, score an F1 of 0."""
    precision = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else 1.0
    # 2tp / (n_pred + n_true) is 2PR / (P + R) without its rounding, so equal F1s compare
    # equal (threshold calibration looks for plateaus of ties).
    f1 = 2.0 * tp / (n_pred + n_true) if n_pred + n_true else 1.0
    return {"precision": precision, "recall": recall, "f1": f1}


def detection_scores(
    pred_boxes: BoxList,
    pred_scores: BoxList,
    true_boxes: BoxList,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict:
    """Detection quality of a set of images.

    Args:
        pred_boxes: per image (K_i, 4) predicted boxes.
        pred_scores: per image (K_i,) scores.
        true_boxes: per image (T_i, 4) true boxes.
        iou_thresholds: IoU levels to report.

    Returns:
        A dict: for each threshold `t` a key `f"iou{t}"` (e.g. "iou0.5") holding `tp`, `fp`,
        `fn`, `precision`, `recall`, `f1` (Hungarian, pooled over images) and `ap` (greedy,
        VOC all-point); plus `num_images`, `num_pred`, `num_true`, `count_mae` (mean absolute
        count error per image), `count_mre` (mean of |error| / true count over images with
        cells) and `count_bias` (mean signed error: > 0 is over-counting).
    """
    if not len(pred_boxes) == len(pred_scores) == len(true_boxes):
        raise ValueError("pred_boxes, pred_scores and true_boxes need one entry per image")
    preds = [_as_boxes(b) for b in pred_boxes]
    trues = [_as_boxes(b) for b in true_boxes]
    scores = [np.asarray(s, np.float64).reshape(-1) for s in pred_scores]
    n_pred = np.array([len(b) for b in preds])
    n_true = np.array([len(b) for b in trues])
    out: dict = {
        "num_images": len(preds),
        "num_pred": int(n_pred.sum()),
        "num_true": int(n_true.sum()),
    }
    errors = n_pred - n_true
    out["count_mae"] = float(np.mean(np.abs(errors))) if len(errors) else 0.0
    out["count_bias"] = float(np.mean(errors)) if len(errors) else 0.0
    cells = n_true > 0
    out["count_mre"] = float(np.mean(np.abs(errors[cells]) / n_true[cells])) if cells.any() else 0.0
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    for t in iou_thresholds:
        tp = sum(len(match_boxes(p, g, t)[0]) for p, g in zip(preds, trues, strict=True))
        hits = [greedy_match(p, s, g, t) for p, s, g in zip(preds, scores, trues, strict=True)]
        entry = {"tp": int(tp), "fp": int(n_pred.sum() - tp), "fn": int(n_true.sum() - tp)}
        entry.update(precision_recall_f1(tp, int(n_pred.sum()), int(n_true.sum())))
        entry["ap"] = average_precision(
            np.concatenate(hits) if hits else np.zeros(0, bool), all_scores, int(n_true.sum())
        )
        out[f"iou{t:g}"] = entry
    return out


def image_f1(pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5) -> float:
    """F1 of one image at an IoU threshold (Hungarian matching); 1.0 when both are empty."""
    tp = len(match_boxes(pred, true, iou_threshold)[0])
    return precision_recall_f1(tp, len(_as_boxes(pred)), len(_as_boxes(true)))["f1"]


def max_box_acc_v2(
    heatmaps: Sequence[np.ndarray],
    true_boxes: BoxList,
    boxes_at: Callable[[np.ndarray, float], np.ndarray] | None = None,
    cam_thresholds: Sequence[float] | None = None,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict:
    """MaxBoxAccV2 (Choe et al., CVPR 2020) of CAMs against true boxes.

    Args:
        heatmaps: per image (H, W) maps; the paper min-max normalizes each to [0, 1] first,
            and so does this function.
        true_boxes: per image (T_i, 4) true boxes.
        boxes_at: `(normalized map, threshold) -> (K, 4)` boxes; default: one box per external
            contour of `map >= threshold` (the paper's "all contours" rule of v2).
        cam_thresholds: thresholds to sweep (default 0.00, 0.01, ..., 0.99 as in the paper).
        iou_thresholds: the deltas averaged over.

    Returns:
        `{"max_box_acc_v2": mean over deltas, "per_iou": {delta: best BoxAcc},
        "best_threshold": {delta: threshold}}`.
    """
    if boxes_at is None:
        from cellkeras.detect.boxes import contour_labels, label_boxes

        def boxes_at(cam: np.ndarray, threshold: float) -> np.ndarray:
            return label_boxes(contour_labels(cam >= threshold), cam)[0]

    thresholds = np.arange(0.0, 1.0, 0.01) if cam_thresholds is None else cam_thresholds
    thresholds = np.asarray(thresholds, np.float64)
    hits = np.zeros((len(thresholds), len(iou_thresholds)), np.int64)
    for cam, true in zip(heatmaps, true_boxes, strict=True):
        cam = np.asarray(cam, np.float32)
        low, high = float(cam.min()), float(cam.max())
        cam = (cam - low) / (high - low) if high > low else np.zeros_like(cam)
        for i, t in enumerate(thresholds):
            best = box_iou(boxes_at(cam, float(t)), true)
            best_iou = float(best.max()) if best.size else 0.0
            hits[i] += [best_iou >= d for d in iou_thresholds]
    n = max(len(heatmaps), 1)
    acc = hits / n
    per_iou = {float(d): float(acc[:, k].max()) for k, d in enumerate(iou_thresholds)}
    best_t = {float(d): float(thresholds[acc[:, k].argmax()]) for k, d in enumerate(iou_thresholds)}
    return {
        "max_box_acc_v2": float(np.mean(list(per_iou.values()))),
        "per_iou": per_iou,
        "best_threshold": best_t,
    }


def masks_to_boxes(label_image: np.ndarray) -> np.ndarray:
    """(K, 4) float32 boxes of the instances of a label image (0 = background), by id.

    The same convention as `cellkeras.data.samples.instance_boxes`, which it calls.
    """
    from cellkeras.data.samples import instance_boxes

    return instance_boxes(label_image)[1]


# --- COCO AP ---------------------------------------------------------------------------------------

CocoDoc = dict[str, Any]


def _coco_ground_truth(true: CocoDoc | BoxList) -> CocoDoc:
    """A COCO ground-truth document pycocotools accepts, from a document or per-image boxes."""
    # Here, not at the top: `cellkeras.detect` loads TensorFlow, the rest of this module does not.
    from cellkeras.detect.coco import to_coco

    if not isinstance(true, dict):
        images = [{"file_name": f"image{i}"} for i in range(1, len(true) + 1)]
        return to_coco(images, true, [np.ones(len(_as_boxes(b))) for b in true])
    annotations = []
    for index, annotation in enumerate(true.get("annotations", []), start=1):
        # COCOeval reads `area` (its area ranges), `iscrowd` and `id`; label files often lack them.
        x, y, w, h = annotation.get("bbox", (0, 0, 0, 0))
        annotations.append({"id": index, "iscrowd": 0, "area": w * h, **annotation})
    categories = true.get("categories") or [{"id": 1, "name": "cell"}]
    return {**true, "annotations": annotations, "categories": categories}


def _coco_results(detections: CocoDoc | Sequence, truth: CocoDoc) -> list[dict[str, Any]]:
    """COCO result dicts with the image ids of `truth`, copied (pycocotools edits them)."""
    if isinstance(detections, dict):
        # A `cellkeras detect` document numbers its own images: match them by file name.
        by_name = {image.get("file_name"): image["id"] for image in truth["images"]}
        own = {image["id"]: by_name.get(image.get("file_name"), image["id"])
               for image in detections.get("images", [])}  # fmt: skip
        results = [{**a, "image_id": own.get(a["image_id"], a["image_id"])}
                   for a in detections.get("annotations", [])]  # fmt: skip
    elif len(detections) and isinstance(detections[0], dict):
        results = [dict(a) for a in detections]
    else:
        from cellkeras.detect.coco import to_coco

        if len(detections) != len(truth["images"]):
            raise ValueError("detections need one (boxes, scores) pair per true image")
        ids = [image["id"] for image in truth["images"]]
        metas = [{"file_name": str(i)} for i in ids]
        document = to_coco(metas, [b for b, _ in detections], [s for _, s in detections])
        results = [{**a, "image_id": ids[a["image_id"] - 1]} for a in document["annotations"]]
    known = {image["id"] for image in truth["images"]}
    unknown = {a["image_id"] for a in results} - known
    if unknown:
        raise ValueError(f"detections name images the ground truth does not have: {unknown}")
    return results


def coco_ap(
    true: CocoDoc | BoxList,
    detections: CocoDoc | Sequence,
    iou_type: str = "bbox",
    max_detections: int | None = None,
) -> dict[str, float]:
    """COCO AP@[.5:.95], AP@.5 and AP@.75 through pycocotools' `COCOeval`.

    Unlike `detection_scores`' AP (VOC all-point, one IoU level), this is COCO's: greedy matching
    by score per image, 101-point interpolated precision, averaged over IoU 0.50:0.05:0.95 (and
    over categories).

    Args:
        true: a COCO ground-truth document (`images`, `annotations` with `bbox` `[x, y, w, h]`,
            or `segmentation` for `iou_type="segm"`; `categories`, default one "cell"), or per
            image (T_i, 4) `[x_min, y_min, x_max, y_max]` boxes.
        detections: a COCO document (`cellkeras detect`'s output; its images are matched to
            `true`'s by `file_name`), a list of COCO result dicts (`image_id`, `category_id`,
            `bbox` or `segmentation`, `score`), or per image of `true` a `(boxes, scores)` pair.
        iou_type: "bbox", or "segm" where both sides carry masks.
        max_detections: detections kept per image, best first; default all of them (COCO's 100
            would drop detections in crowded fields).

    Returns:
        `{"AP": ..., "AP50": ..., "AP75": ...}` in [0, 1]; all 0.0 without true objects or
        without detections (as `average_precision`).
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = _coco_ground_truth(true)
    results = _coco_results(detections, truth)
    if not truth["annotations"] or not results:
        # pycocotools cannot load an empty result list, and says -1 where there is no object.
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    # pycocotools prints its progress; the caller gets numbers.
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = truth
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), iou_type)
        most = Counter(a["image_id"] for a in results).most_common(1)[0][1]
        evaluation.params.maxDets = [max_detections or max(most, 100)]
        evaluation.evaluate()
        evaluation.accumulate()
    # precision is [IoU, recall, category, area range, maxDets], -1 where a category has no true
    # object. It is read here, not from `summarize()`, whose AP@[.5:.95] looks up maxDets=100.
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    levels = {"AP": slice(None), "AP50": [0], "AP75": [5]}  # of iouThrs 0.50, 0.55, ... 0.95

    def mean(values: np.ndarray) -> float:
        defined = values[values > -1]
        return float(defined.mean()) if defined.size else 0.0

    return {key: mean(precision[level]) for key, level in levels.items()}
