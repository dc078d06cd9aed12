"""Tests for mnc_teach.evaluation.sds: mask IoU, AP, and SDS matching on hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from fakes import CLASSES, SIDE, pred, rect, target

from mnc_teach.evaluation.coco import encode_mask
from mnc_teach.evaluation.sds import (
    average_precision,
    class_mask_ious,
    evaluate_sds,
    mask_iou,
    match_detections,
    rle_mask_iou,
)


def sds_ap(result, label: int, threshold: float) -> tuple[float, float]:
    """(area AP, voc07 AP) of class ``label`` (1..K)."""
    return result.ap["area"][threshold][label - 1], result.ap["voc07"][threshold][label - 1]


# ----------------------------------------------------------------------------- AP and IoU
@pytest.mark.parametrize(
    "recall, precision, area, voc07",
    [
        # envelope 1 up to recall 0.5, 2/3 up to 1: 0.5 * 1 + 0.5 * 2/3; 6 points at 1, 5 at 2/3
        ([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3], 5 / 6, (6 + 5 * 2 / 3) / 11),
        # 0.25 * 1 + 0.25 * 0.5; points 0..0.2 -> 1, 0.3..0.5 -> 0.5, rest 0
        ([0.25, 0.5], [1.0, 0.5], 0.375, (3 + 3 * 0.5) / 11),
        # recall exactly 0.3 reaches the 0.3 point (np.arange(0, 1.1, 0.1) would miss it)
        ([0.3], [1.0], 0.3, 4 / 11),
        ([], [], 0.0, 0.0),
    ],
)
def test_average_precision_hand_values(recall, precision, area, voc07):
    assert average_precision(np.array(recall), np.array(precision), "area") == pytest.approx(
        area, abs=1e-12
    )
    assert average_precision(np.array(recall), np.array(precision), "voc07") == pytest.approx(
        voc07, abs=1e-12
    )


def test_average_precision_rejects_unknown_method():
    with pytest.raises(ValueError, match="voc07"):
        average_precision(np.array([1.0]), np.array([1.0]), "coco")


def test_mask_iou_matches_numpy_and_pycocotools():
    rng = np.random.default_rng(0)
    pred_masks = (rng.random((5, SIDE, SIDE)) > 0.6).astype(np.uint8)
    gt_masks = (rng.random((4, SIDE, SIDE)) > 0.5).astype(np.uint8)
    ignore = (rng.random((SIDE, SIDE)) > 0.8).astype(np.uint8)
    ious = mask_iou(torch.from_numpy(pred_masks), torch.from_numpy(gt_masks)).numpy()

    reference = mask_utils.iou(
        [encode_mask(m) for m in pred_masks], [encode_mask(m) for m in gt_masks], [0] * 4
    )
    np.testing.assert_allclose(ious, reference, rtol=0, atol=1e-12)

    kept = pred_masks.astype(bool) & ~ignore.astype(bool)
    inter = (kept[:, None] & gt_masks.astype(bool)[None]).sum((2, 3))
    union = (kept[:, None] | gt_masks.astype(bool)[None]).sum((2, 3))
    with_void = mask_iou(
        torch.from_numpy(pred_masks), torch.from_numpy(gt_masks), torch.from_numpy(ignore)
    )
    np.testing.assert_allclose(with_void.numpy(), inter / union, rtol=0, atol=1e-12)
    assert not np.allclose(with_void.numpy(), ious)

    empty = torch.zeros((1, SIDE, SIDE), dtype=torch.uint8)
    assert mask_iou(empty, empty).item() == 0.0

    # the RLE version evaluate_sds uses gives the same numbers, with and without void
    pred_rles, gt_rles = [encode_mask(m) for m in pred_masks], [encode_mask(m) for m in gt_masks]
    np.testing.assert_array_equal(rle_mask_iou(pred_rles, gt_rles), ious)
    np.testing.assert_array_equal(
        rle_mask_iou(pred_rles, gt_rles, torch.from_numpy(ignore)), with_void.numpy()
    )
    assert rle_mask_iou(pred_rles, [], torch.from_numpy(ignore)).shape == (5, 0)


def test_void_pixels_are_ignored_in_iou():
    instance = rect(10, 20, 10, 20)  # 100 pixels
    void_band = rect(9, 21, 9, 21) - instance  # 44 pixels around it
    extra_on_background = rect(0, 4, 0, 11)  # 44 pixels of plain background
    gt = [target("a", [instance], [1], ignore=void_band)]
    covers_void = mask_iou((instance + void_band)[None], instance[None], void_band)
    covers_background = mask_iou((instance + extra_on_background)[None], instance[None], void_band)
    assert covers_void.item() == 1.0
    assert covers_background.item() == pytest.approx(100 / 144)

    result = evaluate_sds([pred("a", 1, instance + void_band, 0.9)], gt, CLASSES[:2])
    assert sds_ap(result, 1, 0.7) == (1.0, 1.0)
    result = evaluate_sds([pred("a", 1, instance + extra_on_background, 0.9)], gt, CLASSES[:2])
    assert sds_ap(result, 1, 0.5) == (1.0, 1.0)
    assert sds_ap(result, 1, 0.7) == (0.0, 0.0)  # 100/144 = 0.69 < 0.7


# ----------------------------------------------------------------------------- SDS matching
def test_perfect_predictions_give_ap_one():
    masks_a, masks_b = [rect(0, 8, 0, 8), rect(10, 20, 12, 30)], [rect(5, 25, 5, 15)]
    gt = [target("a", masks_a, [1, 2]), target("b", masks_b, [1])]
    preds = [
        pred("a", 1, masks_a[0], 0.9),
        pred("a", 2, masks_a[1], 0.8),
        pred("b", 1, masks_b[0], 0.7),
    ]
    result = evaluate_sds(preds, gt, CLASSES[:3])
    for method in ("area", "voc07"):
        for threshold in (0.5, 0.7):
            assert result.mean_ap[method][threshold] == 1.0
            np.testing.assert_array_equal(result.ap[method][threshold], [1.0, 1.0])
    np.testing.assert_array_equal(result.num_gt, [2, 1])


def test_duplicate_of_matched_gt_is_false_positive():
    first, second = rect(0, 10, 0, 10), rect(15, 25, 15, 25)
    gt = [target("a", [first, second], [1, 1])]
    preds = [pred("a", 1, first, 0.9), pred("a", 1, first, 0.8), pred("a", 1, second, 0.7)]
    result = evaluate_sds(preds, gt, CLASSES[:2])
    # TP, FP, TP of 2 GT: recall [.5, .5, 1], precision [1, .5, 2/3]
    area, voc07 = sds_ap(result, 1, 0.5)
    assert area == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert voc07 == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    recall, precision = result.curves[0.5][0]
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3])


def test_correct_detection_after_wrong_one_and_image_without_that_class():
    first, second = rect(0, 10, 0, 10), rect(15, 25, 15, 25)
    gt = [target("a", [first, second], [1, 1]), target("b", [first], [2])]
    # the top detection sits in image "b", which has no GT of class 1; "second" is never found
    preds = [pred("b", 1, first, 0.9), pred("a", 1, first, 0.8)]
    result = evaluate_sds(preds, gt, CLASSES[:3])
    # FP, TP of 2 GT: recall [0, .5], precision [0, .5]
    area, voc07 = sds_ap(result, 1, 0.5)
    assert area == pytest.approx(0.5 * 0.5)
    assert voc07 == pytest.approx(6 * 0.5 / 11)
    assert sds_ap(result, 2, 0.5) == (0.0, 0.0)  # GT but no detections -> AP 0


def test_already_matched_gt_gives_fp_even_if_another_gt_qualifies():
    # unit level: the second detection's best GT (0) is taken; GT 1 would pass 0.5 but is not tried
    matches = match_detections(
        np.array([0.9, 0.8]),
        np.array([0, 0]),
        [np.array([1.0, 0.0]), np.array([0.8, 0.6])],
        num_gt_per_image=[2],
        iou_threshold=0.5,
    )
    np.testing.assert_array_equal(matches.tp, [True, False])
    np.testing.assert_array_equal(matches.fp, [False, True])
    assert matches.num_gt == 2
    # end to end: big (120 px) and small (80 px) GT; a detection of both has IoU 0.6 and 0.4
    big, small = rect(0, 10, 0, 12), rect(20, 28, 0, 10)
    gt = [target("a", [big, small], [1, 1])]
    preds = [pred("a", 1, big, 0.9), pred("a", 1, big + small, 0.8)]
    result = evaluate_sds(preds, gt, CLASSES[:2], iou_thresholds=(0.3,))
    area, voc07 = sds_ap(result, 1, 0.3)  # TP, FP: recall [.5, .5], precision [1, .5]
    assert (area, voc07) == (pytest.approx(0.5), pytest.approx(6 / 11))


def test_match_detections_sorts_by_score_with_ties_in_input_order():
    ious = [np.array([0.6, 0.0]), np.array([0.0, 0.9]), np.array([0.9, 0.0])]
    scores, images = np.array([0.5, 0.9, 0.5]), np.array([0, 0, 0])
    matches = match_detections(scores, images, ious, num_gt_per_image=[2], iou_threshold=0.5)
    np.testing.assert_array_equal(matches.tp, [True, True, False])  # order 1, 0, 2
    # many ties (numpy's default argsort reorders these): detections 2j and 2j+1 both hit GT j
    scores = np.random.default_rng(0).integers(0, 3, size=60) / 4
    ious = [np.eye(30)[n // 2] for n in range(60)]
    images = np.zeros(60, dtype=int)
    matches = match_detections(scores, images, ious, num_gt_per_image=[30], iou_threshold=0.5)
    order = sorted(range(60), key=lambda n: -scores[n])  # Python's sort is stable
    first_of_pair = [order.index(n) < order.index(n ^ 1) for n in order]
    np.testing.assert_array_equal(matches.tp, first_of_pair)


def test_iou_exactly_at_threshold_is_a_match():
    gt = [target("a", [rect(0, 10, 0, 10)], [1])]
    result = evaluate_sds([pred("a", 1, rect(0, 7, 0, 10), 0.9)], gt, CLASSES[:2])  # IoU 70/100
    assert sds_ap(result, 1, 0.7) == (1.0, 1.0)


def test_class_without_gt_left_out_of_mean_and_images_without_detections():
    square = rect(4, 14, 4, 14)
    gt = [
        target("a", [square], [1]),
        target("b", [square], [1]),  # never detected
        target("c", [square], [2]),  # never detected: class 2 has AP 0
        target("d", [], []),  # no instances, no detections
    ]
    preds = [pred("a", 1, square, 0.9), pred("a", 3, square, 0.8)]  # class 3 has no GT
    result = evaluate_sds(preds, gt, CLASSES)
    # class 1: TP of 2 GT -> recall [.5], precision [1]
    assert sds_ap(result, 1, 0.5) == (pytest.approx(0.5), pytest.approx(6 / 11))
    assert sds_ap(result, 2, 0.5) == (0.0, 0.0)
    assert all(math.isnan(v) for v in sds_ap(result, 3, 0.5))
    assert result.mean_ap["area"][0.5] == pytest.approx((0.5 + 0.0) / 2)
    assert result.mean_ap["voc07"][0.7] == pytest.approx((6 / 11 + 0.0) / 2)
    np.testing.assert_array_equal(result.num_gt, [2, 1, 0])
    np.testing.assert_array_equal(result.num_det, [1, 0, 1])
    table = result.table()
    assert all(name in table for name in CLASSES[1:]) and "mean" in table and "25.0" in table
    summary = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert summary["per_class"]["triangle"]["AP_r@0.5"] == {"area": None, "voc07": None}
    assert summary["mAP_r@0.5"]["area"] == pytest.approx(0.25)


def test_class_mask_ious_keep_the_gt_of_the_class_in_target_order():
    circle_1, square, circle_2 = rect(0, 10, 0, 10), rect(0, 10, 20, 30), rect(20, 30, 0, 10)
    gt = [target("a", [circle_1, square, circle_2], [1, 2, 1]), target("b", [square], [2])]
    preds = [pred("b", 2, rect(0, 10, 20, 25), 0.5), pred("a", 1, rect(0, 30, 0, 10), 0.9),
             pred("a", 3, circle_1, 0.8)]
    ious = class_mask_ious(preds, gt, {"a": 0, "b": 1})
    np.testing.assert_array_equal(ious[0], [0.5])  # the square of b: 50 of 100 pixels
    expected = mask_iou(rect(0, 30, 0, 10)[None], torch.stack([circle_1, circle_2]))[0].numpy()
    np.testing.assert_array_equal(ious[1], expected)  # circles only, in the target's order
    np.testing.assert_allclose(ious[1], [1 / 3, 1 / 3])
    assert ious[2].shape == (0,)  # no triangle in a


def test_evaluate_sds_rejects_unknown_image_and_wrong_size():
    gt = [target("a", [rect(0, 5, 0, 5)], [1])]
    with pytest.raises(ValueError, match="'zzz' is not in the ground truth"):
        evaluate_sds([pred("zzz", 1, rect(0, 5, 0, 5), 0.9)], gt, CLASSES[:2])
    small = torch.ones((8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match="original image size"):
        evaluate_sds([pred("a", 1, small, 0.9)], gt, CLASSES[:2])
